"""The recipe's schema: pydantic models (strict: unknown keys are errors) and its JSON Schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

RECIPE_VERSION = 1


Precision = Literal["fp32", "fp16", "int8"]


Dtype = Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]


_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(_Strict):
    """Where the model comes from: exactly one of ``path``, ``resource`` or ``factory``."""

    path: str | None = Field(
        None,
        description="ONNX, PyTorch, Paddle, TensorFlow/Keras (file or SavedModel folder) or Caffe model, "
        "relative to the recipe file.",
    )
    weights: str | None = Field(
        None, description="The weights of a two-file source (Caffe's .caffemodel), relative to the recipe file."
    )
    resource: str | None = Field(
        None,
        description="A file shipped inside an installed package, 'package:relative/path', "
        "e.g. 'onnx:backend/test/data/light/light_resnet50.onnx'.",
    )
    factory: str | None = Field(
        None,
        description="A callable returning a torch.nn.Module: 'module.path:callable' or 'file.py:Callable' "
        "(file relative to the recipe).",
    )
    checkpoint: str | None = Field(None, description="state_dict for the factory, relative to the recipe file.")
    make_checkpoint: str | None = Field(
        None,
        description="'file.py:function' called with one path argument; it writes the factory's state_dict "
        "there (seeded weights, so no binary checkpoint is committed).",
    )
    trust_pickle: bool = Field(False, description="Allow a full pickle as source (runs code from the file).")

    @model_validator(mode="after")
    def _one_source(self) -> SourceSpec:
        given = [k for k in ("path", "resource", "factory") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of path, resource or factory" + (f" (got {', '.join(given)})"))
        if (self.checkpoint or self.make_checkpoint) and not self.factory:
            raise ValueError("checkpoint and make_checkpoint go with factory")
        if self.weights and not self.path:
            raise ValueError("weights goes with path")
        if self.checkpoint and self.make_checkpoint:
            raise ValueError("give checkpoint or make_checkpoint, not both")
        return self


class InputSpecModel(_Strict):
    name: str
    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=0)
    dtype: Dtype = "float32"
    dynamic: dict[int, str] = Field(default_factory=dict, description="axis -> label, kept dynamic on export.")


class ExportSpec(_Strict):
    opset: int | None = Field(None, ge=7, le=25)
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"
    layout: Literal["nhwc", "nchw"] | None = Field(
        None, description="ONNX input layout of an NHWC source (TensorFlow/Keras); default: the framework's own."
    )


class PassSpec(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the pass.")


class SyntheticSpec(_Strict):
    """Seeded samples generated into the output folder (for recipes without a data set)."""

    kind: Literal["images", "normal"] = Field("images", description="smooth pseudo-images, or standard normal")
    seed: int = 0


class ImageSpec(_Strict):
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    size: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=2, max_length=2)


class DataSpec(_Strict):
    """Samples: a folder/glob/file of .npy/.npz/images (``path``) or ``synthetic`` ones."""

    path: str | None = None
    synthetic: SyntheticSpec | None = None
    count: int | None = Field(None, ge=1, description="Samples to use (calibration default 300).")
    image: ImageSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> DataSpec:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("give exactly one of path or synthetic")
        return self


class ToleranceSpec(_Strict):
    rtol: float | None = Field(None, ge=0)
    atol: float | None = Field(None, ge=0)
    min_cos: float | None = Field(None, ge=-1, le=1)


class TargetSpec(_Strict):
    target: str = Field(description="A registered target name (see `mconv targets`).")
    precision: Precision = "fp32"
    name: str | None = Field(None, pattern=_NAME, description="Output folder name (default <target>_<precision>).")
    required: bool = Field(False, description="Fail the run (instead of skipping) when the runtime is missing.")
    calib: DataSpec | None = Field(None, description="Calibration data for int8 (default: the recipe's calib).")
    batch: int | None = Field(None, ge=1)
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The target's own options, as it declares them (`mconv targets NAME` lists them); "
        "file paths are relative to the recipe file.",
    )
    verify: ToleranceSpec | None = Field(None, description="Tolerance for this target (overrides verify.*).")

    @property
    def label(self) -> str:
        return self.name or f"{self.target}_{self.precision}"


class VerifySpec(_Strict):
    enabled: bool = True
    inputs: DataSpec | None = Field(None, description="Verification samples (default: calib for int8, else random).")
    samples: int = Field(1, ge=1)
    rtol: float | None = Field(None, ge=0, description="For every target unless overridden.")
    atol: float | None = Field(None, ge=0)
    min_cos: float | None = Field(None, ge=-1, le=1)
    tolerances: dict[Precision, ToleranceSpec] = Field(default_factory=dict, description="Per precision.")
    timeout: float = Field(600.0, gt=0, description="Seconds for a runner in a child process.")


class BenchSpec(_Strict):
    enabled: bool = False
    warmup: int = Field(2, ge=0)
    iterations: int = Field(10, ge=1)
    threads: int | None = Field(None, ge=1)


_PASSES_SCHEMA = {
    "anyOf": [
        {"const": "default"},
        {
            "type": "array",
            "items": {"anyOf": [{"type": "string"}, PassSpec.model_json_schema()]},
        },
    ],
    "default": "default",
    "description": "'default' (the default pipeline) or a list of pass names / {name, options}.",
}


class Recipe(_Strict):
    """A model recipe (``version: 1``)."""

    version: Literal[1]
    name: str | None = Field(None, pattern=_NAME, description="Output folder name (default: the file's stem).")
    description: str = ""
    source: SourceSpec
    inputs: list[InputSpecModel] = Field(default_factory=list)
    export: ExportSpec = Field(default_factory=ExportSpec)
    passes: Annotated[list[PassSpec] | None, WithJsonSchema(_PASSES_SCHEMA)] = None
    calib: DataSpec | None = Field(None, description="Calibration data shared by int8 targets.")
    targets: list[TargetSpec] = Field(min_length=1)
    verify: VerifySpec = Field(default_factory=VerifySpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)

    @field_validator("passes", mode="before")
    @classmethod
    def _passes_forms(cls, v: Any) -> Any:
        if v is None or v == "default":
            return None
        if isinstance(v, list):
            return [{"name": p} if isinstance(p, str) else p for p in v]
        return v


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe, for editors."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mconv recipe"
    schema["$defs"]["TargetSpec"]["allOf"] = _target_option_schemas()
    return schema


def _target_option_schemas() -> list[dict[str, Any]]:
    """Per target: its declared options are what ``options`` may hold."""
    from mconv.targets import all_targets

    out = []
    for entry in all_targets():
        if entry.error:
            continue
        try:
            cls = entry.load()
            props = {s.name: s.json_schema() for s in cls.Options.specs()}
        except Exception:  # a broken plugin shows in `mconv targets`
            continue
        names = [entry.name, *cls.aliases]
        out.append(
            {
                "if": {"properties": {"target": {"enum": names}}, "required": ["target"]},
                "then": {
                    "properties": {"options": {"type": "object", "properties": props, "additionalProperties": False}}
                },
            }
        )
    return out


# Every key the schema knows, for suggestions and for naming a missing key.
ALL_KEYS = sorted(
    {
        k
        for m in (
            Recipe,
            SourceSpec,
            InputSpecModel,
            ExportSpec,
            PassSpec,
            SyntheticSpec,
            ImageSpec,
            DataSpec,
            ToleranceSpec,
            TargetSpec,
            VerifySpec,
            BenchSpec,
        )
        for k in m.model_fields
    }
)
