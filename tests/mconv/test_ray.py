"""``mconv run --executor ray[:ADDRESS]``: the same reports as the local executor, quiet,
nothing in the user's home, and Ctrl-C cancels the tasks and leaves no partial folder.

One local Ray instance (2 CPUs, 127.0.0.1 only) serves the tests that pass its address;
one test lets mconv start its own private instance."""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import pytest

from tests.mconv.test_shard import TARGETS, _recipe_text, _tree
from tests.models import conv_bn_relu_model

# Not imported here: Ray reads its settings (RAY_AUTH_*) from the environment when imported.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason='the Ray executor needs pip install "mconv[ray]"'
)


@pytest.fixture(scope="session")
def ray_address():
    """A local Ray instance for the session; its address (and token, in os.environ)."""
    saved = {k: os.environ.get(k) for k in ("RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    import ray

    tmp = tempfile.mkdtemp(prefix="mray-", dir="/tmp")  # Unix socket paths must stay short
    ctx = ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        _temp_dir=tmp,
        _node_ip_address="127.0.0.1",
    )
    yield ctx.address_info["gcs_address"]
    ray.shutdown()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _run(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mconv", *map(str, args)], capture_output=True, text=True, timeout=600, env=env
    )


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("ray_recipes")
    onnx.save(conv_bn_relu_model(channels=8, seed=1), str(d / "a.onnx"))
    (d / "a.yaml").write_text(_recipe_text("a.onnx", TARGETS[:4]))
    strict = "  - target: onnx\n    precision: fp16\n    name: strict\n    verify: {rtol: 0.0}\n"
    (d / "c.yaml").write_text(_recipe_text("a.onnx", [("ncnn", "fp32")]).replace("targets:\n", "targets:\n" + strict))
    return [d / "a.yaml", d / "c.yaml"]


def test_ray_executor_gives_the_local_executors_reports(ray_address, recipes, tmp_path):
    local = _run("run", *recipes, "-j", "2", "-o", tmp_path / "local")
    remote = _run("run", *recipes, "--executor", f"ray:{ray_address}", "-o", tmp_path / "ray")
    assert local.returncode == remote.returncode == 3, remote.stderr
    assert remote.stderr == local.stderr.replace(str(tmp_path / "local"), str(tmp_path / "ray"))
    assert "a: verify ncnn_fp32 ok" in remote.stdout and "c: FAILED (exit 3)" in remote.stdout  # the same display
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "local")


def test_private_ray_instance_is_quiet_and_leaves_home_alone(recipes, tmp_path):
    home, tmp = tmp_path / "home", Path(tempfile.mkdtemp(prefix="mt-", dir="/tmp"))
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), TMPDIR=str(tmp))
    r = _run("run", recipes[0], "--executor", "ray", "-o", tmp_path / "out", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert not (home / ".ray").exists()
    assert [p.name for p in tmp.iterdir() if "ray" in p.name] == []  # Ray's session folder removed
    import shutil

    shutil.rmtree(tmp)


SLOW = """\
import os, time

def make(path):
    # the task runs on the cluster, in its environment: the file goes beside this one
    open(os.path.join(os.path.dirname(__file__), "pid"), "w").write(str(os.getpid()))
    time.sleep(120)
"""


def test_interrupt_cancels_the_tasks_and_removes_the_partial_folder(ray_address, tmp_path):
    d = tmp_path / "slow"
    d.mkdir()
    (d / "slow.py").write_text(SLOW)
    (d / "slow.yaml").write_text(
        "version: 1\nsource:\n  factory: slow.py:make\n  make_checkpoint: slow.py:make\n"
        "inputs:\n  - name: x\n    shape: [1, 3, 8, 8]\ntargets:\n  - target: onnx\n"
    )
    pid_file = d / "pid"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mconv", "run", d / "slow.yaml", "--executor", f"ray:{ray_address}", "-o", out]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not pid_file.is_file() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert pid_file.is_file() and (out / "slow").is_dir(), p.communicate(timeout=60)
    worker = int(pid_file.read_text())
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "mconv: interrupted by SIGINT; partial files removed"
    assert not (out / "slow").exists()
    for _ in range(50):  # the recipe's worker process is gone, not left running on the node
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the recipe's worker process {worker} outlived the cancelled task")
