"""Recipe validation: every kind of invalid recipe is exit 2 with file, line and key path in
one line, before anything runs; --set overrides; the JSON Schema; the repo's recipes."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import onnx
import pytest

from tests.conftest import ROOT, assert_clean_error
from tests.models import conv_bn_relu_model

GOOD = """\
version: 1
source:
  path: model.onnx
targets:
  - target: onnx
    precision: fp32
verify:
  samples: 1
"""


@pytest.fixture
def rdir(tmp_path):
    d = tmp_path / "recipes"
    d.mkdir()
    onnx.save(conv_bn_relu_model(), str(d / "model.onnx"))
    return d


def write(d: Path, text: str, name: str = "r.yaml") -> Path:
    p = d / name
    p.write_text(textwrap.dedent(text))
    return p


def check_invalid(cli, recipe: Path, line: int | None, key: str, *needles: str, extra: tuple[str, ...] = ()):
    """`mconv run` refuses it (exit 2, one line naming file:line and key) and writes nothing."""
    out = recipe.parent.parent / "out"
    r = cli("run", recipe, "-o", out, *extra)
    where = f"{recipe}:{line}:" if line is not None else f"{recipe}:"
    assert_clean_error(r, 2, where, key, *needles)
    assert not out.exists()
    return r


def test_good_recipe_checks(cli, rdir):
    r = cli("recipe", "check", write(rdir, GOOD), "--json")
    assert r.code == 0, r.err
    (rec,) = r.json["recipes"]
    assert rec["name"] == "r"
    assert rec["steps"] == ["export", "passes", "build onnx_fp32", "verify onnx_fp32"]


def test_unknown_key_names_line_and_path(cli, rdir):
    p = write(rdir, GOOD.replace("    precision: fp32", "    precison: fp32"))
    check_invalid(cli, p, 6, "targets.0.precison", "unknown key 'precison'", "did you mean 'precision'")


def test_unknown_top_level_key(cli, rdir):
    p = write(rdir, GOOD + "benchmark: {enabled: true}\n")
    check_invalid(cli, p, 9, "benchmark", "unknown key 'benchmark'")


def test_wrong_type(cli, rdir):
    p = write(rdir, GOOD.replace("samples: 1", "samples: many"))
    check_invalid(cli, p, 8, "verify.samples", "valid integer", "'many'")


def test_wrong_precision_value(cli, rdir):
    p = write(rdir, GOOD.replace("precision: fp32", "precision: fp8"))
    check_invalid(cli, p, 6, "targets.0.precision", "'fp32', 'fp16' or 'int8'")


def test_unknown_target(cli, rdir):
    p = write(rdir, GOOD.replace("target: onnx", "target: coreml"))
    check_invalid(cli, p, 5, "targets.0.target", "unknown target", "coreml")


def test_unknown_pass(cli, rdir):
    p = write(rdir, GOOD + "passes: [infer_shapes, fold_constnts]\n")
    check_invalid(cli, p, 9, "passes.1.name", "unknown pass 'fold_constnts'", "did you mean 'fold_constants'")


def test_unknown_pass_option(cli, rdir):
    p = write(rdir, GOOD + "passes:\n  - name: simplify\n    options:\n      max_nodez: 10\n")
    check_invalid(cli, p, 12, "passes.0.options.max_nodez", "no option 'max_nodez'", "max_nodes")


@pytest.mark.parametrize("version", ["2", "'1'", "0"])
def test_bad_version(cli, rdir, version):
    p = write(rdir, GOOD.replace("version: 1", f"version: {version}"))
    check_invalid(cli, p, 1, "version", "unsupported recipe version", "reads version 1")


def test_missing_version(cli, rdir):
    p = write(rdir, GOOD.replace("version: 1\n", ""))
    check_invalid(cli, p, 1, "version", "required key is missing")


def test_missing_required_section(cli, rdir):
    p = write(rdir, "version: 1\nsource: {path: model.onnx}\n")
    check_invalid(cli, p, 1, "targets", "required key is missing")


def test_missing_file(cli, rdir):
    p = write(rdir, GOOD.replace("path: model.onnx", "path: nothere.onnx"))
    check_invalid(cli, p, 3, "source.path", "no such file 'nothere.onnx'")


def test_missing_calib_folder(cli, rdir):
    text = GOOD.replace("precision: fp32", "precision: int8\n    calib: {path: calib/}")
    check_invalid(cli, write(rdir, text), 7, "targets.0.calib.path", "no such file 'calib/'")


def test_calib_glob_matching_nothing(cli, rdir):
    text = GOOD.replace("precision: fp32", "precision: int8\n    calib: {path: 'data/*.npy'}")
    check_invalid(cli, write(rdir, text), 7, "targets.0.calib.path", "matches no file")


def test_path_escaping_the_folder(cli, rdir):
    onnx.save(conv_bn_relu_model(), str(rdir.parent / "outside.onnx"))  # exists, but outside
    p = write(rdir, GOOD.replace("path: model.onnx", "path: ../outside.onnx"))
    check_invalid(cli, p, 3, "source.path", "escapes the recipe's folder")


def test_absolute_path_outside_is_refused(cli, rdir):
    outside = rdir.parent / "outside.onnx"
    onnx.save(conv_bn_relu_model(), str(outside))
    p = write(rdir, GOOD.replace("path: model.onnx", f"path: {outside}"))
    check_invalid(cli, p, 3, "source.path", "escapes the recipe's folder")


def test_symlink_escaping_the_folder(cli, rdir):
    outside = rdir.parent / "outside.onnx"
    onnx.save(conv_bn_relu_model(), str(outside))
    os.symlink(outside, rdir / "link.onnx")
    p = write(rdir, GOOD.replace("path: model.onnx", "path: link.onnx"))
    check_invalid(cli, p, 3, "source.path", "escapes the recipe's folder")


def test_glob_escaping_the_folder(cli, rdir):
    text = GOOD.replace("precision: fp32", "precision: int8\n    calib: {path: '../*/x.npy'}")
    check_invalid(cli, write(rdir, text), 7, "targets.0.calib.path", "escapes the recipe's folder")


def test_factory_file_escaping_the_folder(cli, rdir):
    (rdir.parent / "evil.py").write_text("def Net():\n    raise SystemExit('ran')\n")
    text = GOOD.replace("path: model.onnx", "factory: ../evil.py:Net")
    check_invalid(cli, write(rdir, text), 3, "source.factory", "escapes the recipe's folder")


def test_resource_escaping_its_package(cli, rdir):
    text = GOOD.replace("path: model.onnx", "resource: onnx:../numpy/__init__.py")
    check_invalid(cli, write(rdir, text), 3, "source.resource", "escapes the package folder")


def test_yaml_alias_bomb(cli, rdir):
    lines = ["version: 1", 'a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i, name in enumerate("bcdefg"):
        prev = "abcdefg"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    p = write(rdir, "\n".join(lines) + "\n")
    r = check_invalid(cli, p, None, "", "alias bomb")
    assert "refusing" in r.err


def test_too_many_aliases(cli, rdir):
    lines = ["version: 1", "a: &a x", "b: [" + ",".join(["*a"] * 150) + "]"]
    p = write(rdir, "\n".join(lines) + "\n")
    check_invalid(cli, p, 3, "", "more than 100 YAML aliases")


def test_recursive_alias(cli, rdir):
    p = write(rdir, "version: 1\nsource: &s {path: [*s]}\n")
    check_invalid(cli, p, 2, "source", "recursive YAML alias")


def test_unsafe_yaml_tag_is_refused(cli, rdir):
    p = write(rdir, "version: 1\nsource: !!python/object/apply:os.system ['echo pwned']\n")
    check_invalid(cli, p, 2, "", "invalid YAML", "could not determine a constructor")


def test_yaml_syntax_error(cli, rdir):
    p = write(rdir, "version: 1\nsource: {path: model.onnx\n")
    check_invalid(cli, p, 3, "", "invalid YAML")


def test_duplicate_key(cli, rdir):
    p = write(rdir, GOOD + "verify: {samples: 2}\n")
    check_invalid(cli, p, 9, "verify", "duplicate key 'verify' (first at line 7)")


def test_int8_without_calibration(cli, rdir):
    p = write(rdir, GOOD.replace("precision: fp32", "precision: int8"))
    check_invalid(cli, p, 6, "targets.0.precision", "int8 needs calibration data")


def test_two_sources(cli, rdir):
    p = write(rdir, GOOD.replace("path: model.onnx", "path: model.onnx\n  factory: x.py:Net"))
    check_invalid(cli, p, 2, "source", "exactly one of path, resource or factory")


def test_invalid_second_recipe_runs_nothing(cli, rdir):
    good = write(rdir, GOOD, "a.yaml")
    bad = write(rdir, GOOD.replace("target: onnx", "target: nope"), "b.yaml")
    out = rdir.parent / "out"
    r = cli("run", good, bad, "-o", out)
    assert_clean_error(r, 2, f"{bad}:5:", "targets.0.target")
    assert not out.exists()


def test_duplicate_recipe_names_in_a_batch(cli, rdir):
    a = write(rdir, GOOD, "a.yaml")
    b = write(rdir, GOOD + "name: a\n", "b.yaml")
    out = rdir.parent / "out"
    r = cli("run", a, b, "-o", out)
    assert_clean_error(r, 2, f"{b}:", "name: 'a' is also the name of", str(a))
    assert not out.exists()


def test_missing_recipe_file(cli, tmp_path):
    r = cli("run", tmp_path / "none.yaml", "-o", tmp_path / "out")
    assert_clean_error(r, 2, "none.yaml", "no such recipe file")


# ---- --set ------------------------------------------------------------------------------------
def test_set_overrides_values(cli, rdir):
    p = write(rdir, GOOD)
    r = cli("recipe", "check", p, "--set", "targets.0.precision=fp16", "--set", "verify.rtol=1e-3", "--json")
    assert r.code == 0, r.err
    assert "build onnx_fp16" in r.json["recipes"][0]["steps"]
    from mconv.recipe import load_recipe, parse_override

    rec = load_recipe(p, [parse_override("targets.0.precision=fp16"), parse_override("verify.rtol=1e-3")])
    assert rec.spec.targets[0].precision == "fp16"
    assert rec.spec.verify.rtol == pytest.approx(1e-3)
    assert rec.overrides == ["targets.0.precision=fp16", "verify.rtol=1e-3"]


def test_set_creates_missing_sections(rdir):
    from mconv.recipe import load_recipe, parse_override

    rec = load_recipe(write(rdir, GOOD), [parse_override("bench.enabled=true"), parse_override("bench.iterations=3")])
    assert rec.spec.bench.enabled is True and rec.spec.bench.iterations == 3


def test_set_invalid_value_names_the_override(cli, rdir):
    p = write(rdir, GOOD)
    r = cli("recipe", "check", p, "--set", "targets.0.precision=fp64")
    assert_clean_error(r, 2, str(p), "targets.0.precision", "set by --set targets.0.precision")


def test_set_unknown_key_is_refused(cli, rdir):
    p = write(rdir, GOOD)
    r = cli("run", p, "--set", "verify.rtoll=1e-3", "-o", rdir.parent / "out")
    assert_clean_error(r, 2, "verify.rtoll", "unknown key 'rtoll'", "set by --set verify.rtoll")
    assert not (rdir.parent / "out").exists()


def test_set_index_out_of_range(cli, rdir):
    r = cli("recipe", "check", write(rdir, GOOD), "--set", "targets.3.precision=fp16")
    assert_clean_error(r, 2, "--set targets.3.precision", "list of 1")


def test_set_int8_without_calib(cli, rdir):
    r = cli("recipe", "check", write(rdir, GOOD), "--set", "targets.0.precision=int8")
    assert_clean_error(r, 2, "targets.0.precision", "int8 needs calibration data", "set by --set")


def test_set_syntax(cli, rdir):
    r = cli("recipe", "check", write(rdir, GOOD), "--set", "verify.rtol")
    assert_clean_error(r, 2, "--set 'verify.rtol'", "key.path=value")


# ---- schema and the repo's recipes -------------------------------------------------------------
def test_schema_is_json_schema(cli):
    r = cli("recipe", "schema")
    assert r.code == 0
    s = json.loads(r.out)
    assert s["$schema"].startswith("https://json-schema.org/")
    assert s["additionalProperties"] is False
    assert set(s["required"]) == {"version", "source", "targets"}
    assert {"source", "inputs", "export", "passes", "targets", "verify", "bench"} <= set(s["properties"])
    assert s["$defs"]["TargetSpec"]["additionalProperties"] is False
    forms = s["properties"]["passes"]["anyOf"]
    assert {"const": "default"} in forms
    items = next(f for f in forms if f.get("type") == "array")["items"]["anyOf"]
    assert {"type": "string"} in items and any(i.get("additionalProperties") is False for i in items)


def test_repo_recipes_are_valid(cli):
    files = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(files) >= 4
    r = cli("recipe", "check", *files, "--json")
    assert r.code == 0, r.err
    by_name = {x["name"]: x for x in r.json["recipes"]}
    assert {"resnet50", "squeezenet", "shufflenet", "tinynet", "tinynet_trt"} <= set(by_name)
    steps = [s for x in r.json["recipes"] for s in x["steps"]]
    for want in ("openvino_fp32", "openvino_fp16", "openvino_int8", "ncnn_fp32", "ncnn_fp16", "ncnn_int8", "trt_fp16"):
        assert f"build {want}" in steps, want
    assert by_name["tinynet"]["steps"][0] == "checkpoint"
