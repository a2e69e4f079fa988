"""The Dockerfile builds a torch-free serving image that starts and answers its health check.

No container runtime is needed: tests/dockerfile_support.py interprets the Dockerfile's
instructions on a temporary directory that stands for the image (see its docstring for what maps to
what), runs the install steps (a real ``pip install`` of this checkout with the serving extra), then
runs the image's CMD with a model store "mounted" at /models, as ``docker run -p`` would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from dockerfile_support import (
    Builder,
    dockerignore,
    host_path,
    ignored,
    instructions,
    map_literals,
    run_argv,
    runtime_env,
)
from serve_support import free_port, jpeg_bytes

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def _usable_python(uid: int | None) -> str:
    """A Python >= 3.11 with venv and ensurepip (the base image's interpreter), runnable as ``uid``."""
    check = "import ensurepip, sys, venv; assert sys.version_info >= (3, 11)"
    candidates = [shutil.which("python3.12"), shutil.which("python3.11"), "/usr/bin/python3",
                  getattr(sys, "_base_executable", sys.executable)]
    for python in filter(None, candidates):
        try:
            ok = subprocess.run([python, "-c", check], capture_output=True, cwd="/",
                                **({"user": uid, "group": uid} if uid is not None else {})).returncode == 0
        except OSError:  # not reachable for that user
            ok = False
        if ok:
            return os.path.realpath(python)
    pytest.skip("no Python >= 3.11 with venv and ensurepip that the image's user can run")


def test_dockerfile_declares_a_slim_non_root_serving_image():
    steps = instructions(DOCKERFILE.read_text())
    words = [w for w, _ in steps]
    last_from = len(words) - 1 - words[::-1].index("FROM")
    final = dict(steps[last_from:])
    assert "python:3.12-slim" in DOCKERFILE.read_text() and words.count("FROM") == 2  # multi-stage
    assert final["USER"].startswith("${UID}") and "ARG UID=10001" in DOCKERFILE.read_text()
    assert final["EXPOSE"] == "8000" and "/v2/health/ready" in final["HEALTHCHECK"]
    install = next(rest for w, rest in steps if w == "RUN" and "pip\" install" in rest)
    assert '".[$EXTRAS]"' in install and "ARG EXTRAS=serve" in DOCKERFILE.read_text()


def test_the_interpreter_reads_dockerignore_and_paths_as_docker_does():
    patterns = dockerignore(REPO)
    sent = ["pyproject.toml", "README.md", "LICENSE", "src/imgclf/cli.py", "src/imgclf/server/static/index.html"]
    left_out = ["tests/test_api.py", "models/x/model.onnx", ".venv/bin/python", "src/imgclf/__pycache__/cli.cpython-311.pyc",
                "src/imgclf.egg-info/PKG-INFO", "docs/deploy.md", ".git/HEAD"]
    assert [p for p in sent if ignored(p, patterns)] == []
    assert [p for p in left_out if not ignored(p, patterns)] == []
    root = Path("/tmp/image")
    assert host_path(root, "/opt/imgclf/bin") == "/tmp/image/opt/imgclf/bin"
    assert host_path(root, "/usr/local/bin/python") == "/usr/local/bin/python"  # the base image's
    assert (map_literals(root, 'mkdir -p /models "$IMGCLF_HOME/x" && cat /etc/os-release http://127.0.0.1:8000/v2')
            == 'mkdir -p /tmp/image/models "$IMGCLF_HOME/x" && cat /etc/os-release http://127.0.0.1:8000/v2')
    steps = instructions("# syntax=docker/dockerfile:1\nFROM python:3.12-slim\nRUN a \\\n  # note\n  b\n")
    assert [(w, rest.split()) for w, rest in steps] == [("FROM", ["python:3.12-slim"]), ("RUN", ["a", "b"])]


@pytest.mark.slow
def test_dockerfile_builds_and_runs_without_torch(serve_model_dir):
    as_root = os.geteuid() == 0
    # As root the image's own non-root UID runs the server; otherwise the caller's, given as a build arg.
    uid = 10001 if as_root else os.getuid()
    python = _usable_python(uid if as_root else None)
    workspace = Path(tempfile.mkdtemp(prefix="imgclf-image-"))
    workspace.chmod(0o755)  # the image's user must reach its files
    try:
        builder = Builder(DOCKERFILE, REPO, workspace, build_args={} if as_root else {"UID": str(uid)},
                          python=python, cache_dir=Path(tempfile.gettempdir()) / "imgclf-image-pip-cache")
        image = builder.build()
        venv = Path(image.host_path(image.env["VIRTUAL_ENV"]))

        # Serving extra only: no torch (nor its stack) in the image; the web service is.
        listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                                capture_output=True, text=True, check=True).stdout.lower()
        names = {line.split("==")[0] for line in listed.splitlines()}
        assert {"imgclf", "fastapi", "uvicorn", "onnxruntime"} <= names, names
        assert not names & {"torch", "torchvision", "onnx", "keras"}, names
        # The package itself was installed (not the build context): nothing of the source tree is in the final stage.
        assert not Path(image.host_path("/src")).exists()

        # `docker run -p PORT:8000 -v models:/models:ro`: a model package in the store.
        shutil.copytree(serve_model_dir / "tiny", Path(image.host_path("/models")) / "tiny")
        port = free_port()
        ports = {image.exposed[0]: port}
        assert image.user is not None
        user = int(image.user.split(":")[0])
        assert user == uid and user != 0
        env = runtime_env(image, {"OMP_NUM_THREADS": "1", "IMGCLF_THREADS": "1"})
        as_user = {"user": user, "group": user} if as_root else {}
        log = workspace / "server.log"
        with open(log, "wb") as out:
            server = subprocess.Popen(run_argv(image, image.cmd, ports), env=env, cwd=image.host_path(image.workdir),
                                      stdout=out, stderr=subprocess.STDOUT, **as_user)
        try:
            healthy = False
            for _ in range(240):  # the HEALTHCHECK command, as Docker runs it, until it passes
                assert server.poll() is None, log.read_text()
                check = subprocess.run(run_argv(image, image.healthcheck, ports), env=env, capture_output=True,
                                       cwd=image.host_path(image.workdir), timeout=30, **as_user)
                if check.returncode == 0:
                    healthy = True
                    break
                time.sleep(0.5)
            assert healthy, log.read_text()
            r = httpx.post(f"http://127.0.0.1:{port}/v1/models/tiny/predict", timeout=30,
                           content=jpeg_bytes(np.full((40, 40, 3), 90, np.uint8)), headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200 and len(r.json()["predictions"][0]) == 3, r.text
            maps = Path(f"/proc/{server.pid}/maps").read_text()
            assert "libtorch" not in maps and str(venv) in maps  # the image's environment, not the test's
            if as_root:
                assert Path(f"/proc/{server.pid}/status").read_text().count(f"\t{user}\t") >= 1
            # `docker stop`: SIGTERM, then the server drains and exits 0.
            server.terminate()
            assert server.wait(timeout=60) == 0, log.read_text()
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
