"""A third-party target, installed the way a plugin is (a distribution with an entry point
in the ``mconv.targets`` group, here a ``.dist-info`` folder on PYTHONPATH), with no edit to
mconv's tree: its option reaches it from ``--option``, from its own flag and from a recipe;
``mconv targets toy`` lists it; ``verify`` and ``bench`` run its artifact.

The toy target writes the model as ``<stem>.toy`` (ONNX bytes) with a ``.toy.json`` sidecar
recording the options it was given, and runs it with onnxruntime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

TOY = """
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mconv.targets.base import Artifact, BuildOptions, Runner, Target, TargetOptions, option


@dataclass
class ToyOptions(TargetOptions):
    note: str = option("none", help="A note stored in the sidecar.", flag="--toy-note")
    level: int = option(1, help="A level from 1 to 3.", choices=(), precisions=("fp32",))
    tags: list[str] = option([], help="Tags (repeat).")


class ToyRunner(Runner):
    def load(self):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(self.artifact.main), providers=["CPUExecutionProvider"])

    def input_names(self):
        return [i.name for i in self.session.get_inputs()]

    def output_names(self):
        return [o.name for o in self.session.get_outputs()]

    def infer_impl(self, feeds):
        return dict(zip(self.output_names(), self.session.run(None, feeds)))


class ToyTarget(Target):
    name = "toy"
    description = "a toy plugin target"
    precisions = ("fp32",)
    artifact_kind = "toy .toy"
    Options = ToyOptions

    def write(self, model, out_dir: Path, stem: str, options: BuildOptions) -> Artifact:
        opts = self.options_of(options)
        if not 1 <= opts.level <= 3:
            from mconv.errors import UsageError

            raise UsageError(f"--option level={opts.level}: choose 1, 2 or 3")
        main = Path(out_dir) / f"{stem}.toy"
        main.write_bytes(model.SerializeToString())
        side = Path(out_dir) / f"{stem}.toy.json"
        side.write_text(json.dumps({"note": opts.note, "level": opts.level, "tags": opts.tags}))
        return Artifact(self.name, main, [main, side], options.precision)

    def runner(self, artifact, *, threads=None):
        r = ToyRunner(artifact, threads=threads)
        r.load()
        return r

    def artifact_inputs(self, artifact):
        import onnx

        from mconv.graphinfo import graph_inputs

        return graph_inputs(onnx.load(str(artifact.main)))

    @classmethod
    def recognise(cls, path: Path):
        if path.suffix != ".toy":
            return None
        return Artifact("toy", path, [path, path.with_name(path.name + ".json")], "fp32")
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """An environment whose Python finds the toy distribution (package + dist-info)."""
    site = tmp_path_factory.mktemp("site")
    (site / "mconv_toy").mkdir()
    (site / "mconv_toy" / "__init__.py").write_text(TOY)
    info = site / "mconv_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mconv-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mconv.targets]\ntoy = mconv_toy:ToyTarget\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 8])],
        [w],
    )
    path = tmp_path_factory.mktemp("model") / "net.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def mconv(env, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mconv", *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_build_with_option_and_flag(plugin_env, model_path, tmp_path):
    out = tmp_path / "out"
    r = mconv(
        plugin_env, "build", model_path, "--target", "toy", "-o", out,
        "--toy-note", "hello", "--option", "level=2", "--option", "tags=a", "--option", "tags=b", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["verification"]["passed"] is True
    side = json.loads((out / "net.toy.json").read_text())
    assert side == {"note": "hello", "level": 2, "tags": ["a", "b"]}


def test_bad_option_values_are_usage_errors(plugin_env, model_path, tmp_path):
    out = tmp_path / "bad"
    r = mconv(plugin_env, "build", model_path, "--target", "toy", "-o", out, "--option", "level=high")
    assert r.returncode == 2 and "level" in r.stderr and "'high' is not an int" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
    r = mconv(plugin_env, "build", model_path, "--target", "toy", "-o", out, "--option", "colour=red")
    assert r.returncode == 2 and "target 'toy' has no option 'colour'" in r.stderr and "note, level, tags" in r.stderr
    # The writer's own check (level 1..3) fails the build the same way.
    r = mconv(plugin_env, "build", model_path, "--target", "toy", "-o", out, "--option", "level=7")
    assert r.returncode == 2 and "choose 1, 2 or 3" in r.stderr and not out.exists()
    # Another target's flag is refused for this one, naming the option.
    r = mconv(plugin_env, "build", model_path, "--target", "toy", "-o", out, "--workspace", "1G")
    assert r.returncode == 2 and "has no option 'workspace'" in r.stderr


def test_targets_lists_the_plugin_and_its_options(plugin_env):
    r = mconv(plugin_env, "targets", "toy", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["source"].startswith("plugin") and info["precisions"] == ["fp32"]
    opts = {o["name"]: o for o in info["options"]}
    assert opts["note"]["flag"] == "--toy-note" and opts["note"]["default"] == "none"
    assert opts["level"]["type"] == "int" and opts["level"]["precisions"] == ["fp32"]
    assert opts["tags"]["type"] == "list"
    r = mconv(plugin_env, "targets", "toy")
    assert r.returncode == 0 and "--toy-note" in r.stdout and "A note stored in the sidecar." in r.stdout
    r = mconv(plugin_env, "build", "--help")
    assert r.returncode == 0 and "--toy-note" in r.stdout and "[toy]" in r.stdout


def test_recipe_and_schema(plugin_env, model_path, tmp_path):
    (tmp_path / "net.onnx").write_bytes(model_path.read_bytes())
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(
        textwrap.dedent(
            """\
            version: 1
            source: {path: net.onnx}
            targets:
              - target: toy
                options: {note: from-recipe, tags: [x]}
            """
        )
    )
    out = tmp_path / "runs"
    r = mconv(plugin_env, "run", recipe, "-o", out, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    sides = list(out.rglob("*.toy.json"))
    assert len(sides) == 1 and json.loads(sides[0].read_text())["note"] == "from-recipe"
    recipe.write_text(recipe.read_text().replace("note: from-recipe", "nope: 1"))
    r = mconv(plugin_env, "run", recipe, "-o", tmp_path / "runs2")
    assert r.returncode == 2 and "toy.yaml:5: targets.0.options.nope" in r.stderr
    r = mconv(plugin_env, "recipe", "schema")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert "toy" in json.dumps(schema) and "A note stored in the sidecar." in json.dumps(schema)


def test_verify_and_bench_run_the_artifact(plugin_env, model_path, tmp_path):
    out = tmp_path / "out"
    assert mconv(plugin_env, "build", model_path, "--target", "toy", "-o", out).returncode == 0
    r = mconv(plugin_env, "verify", model_path, out / "net.toy", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["passed"] is True
    r = mconv(plugin_env, "bench", out / "net.toy", "--iters", "3", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["results"]
    assert rows and rows[0]["target"] == "toy" and rows[0]["status"] == "ok" and rows[0]["latency_ms"]["median"] > 0
