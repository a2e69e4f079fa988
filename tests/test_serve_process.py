"""``imgclf serve`` as a process: it never imports torch (a zoo name is exported in a child
process first), its option errors are one clear line, and over a real socket the body limit is
enforced while the body streams in."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time

import httpx2 as httpx  # starlette.testclient uses httpx2 too
import pytest
from serve_support import CAT, free_port, jpeg_bytes, live_server


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imgclf", "serve", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_app_never_imports_torch(serve_model_dir):
    code = textwrap.dedent(f"""
        import sys, time
        from fastapi.testclient import TestClient
        from imgclf.server import ServerConfig, create_app
        from imgclf.commands import serve  # the command module too
        app = create_app(ServerConfig(models=({str(serve_model_dir / 'tiny')!r},)))
        with TestClient(app) as c:
            while c.get("/v2/health/ready").status_code != 200:
                time.sleep(0.02)
            png = open({str(serve_model_dir / 'tiny' / 'model.json')!r}, 'rb').read()
            r = c.post("/predict", content=png, headers={{"Content-Type": "image/png"}})
            assert r.status_code == 415, r.text
            from PIL import Image; import io
            buf = io.BytesIO(); Image.new("RGB", (40, 30), "red").save(buf, "PNG")
            r = c.post("/predict", content=buf.getvalue(), headers={{"Content-Type": "image/png"}})
            assert r.status_code == 200, r.text
        print("torch" in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))[:3])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False []"


@pytest.mark.slow
def test_serving_a_zoo_name_exports_in_a_child_and_stays_torch_free(tmp_path, sample_jpegs):
    home = tmp_path / "home"  # empty cache: the first start must export
    with live_server("--model", "efficientnet_lite0", env={"IMGCLF_HOME": str(home)}, ready_timeout_s=300) as s:
        maps = open(f"/proc/{s.proc.pid}/maps").read()
        assert "libtorch" not in maps  # the serving process never loaded torch
        assert (home / "packages" / "efficientnet_lite0" / "model.onnx").is_file()
        r = httpx.post(s.url + "/predict", files={"file": ("cat.jpg", sample_jpegs["chelsea"].read_bytes())},
                       timeout=30)
        assert r.status_code == 200 and r.json()["predictions"][0][0]["index"] in CAT
        assert "<title>imgclf" in httpx.get(s.url + "/").text
    assert "exporting efficientnet_lite0" in s.output()


def test_option_errors_are_one_clear_line(tmp_path, serve_model_dir):
    cases = [
        (["--model", str(tmp_path)], "is not a model package"),
        (["--model", str(serve_model_dir / "tiny"), "--max-batch-size", "0"], "max_batch_size must be at least 1"),
        (["--model", str(serve_model_dir / "tiny"), "--queue-size", "0"], "queue_size must be at least 1"),
        (["--model-dir", str(tmp_path / "missing")], "is not a directory"),
        (["--model", "no_such_model"], "unknown model 'no_such_model'"),
    ]
    for args, message in cases:
        out = run_cli(*args, "--port", "0", env={"IMGCLF_HOME": str(tmp_path / "home")})
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)


def test_busy_port_is_a_clear_error(serve_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_cli("--model", str(serve_model_dir / "tiny"), "--port", str(port))
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in out.stderr


@pytest.fixture(scope="module")
def small_limit_server(serve_model_dir):
    with live_server("--model", str(serve_model_dir / "tiny"), "--max-body-mb", "1") as s:
        yield s


def _read_response(sock: socket.socket, timeout_s: float = 10.0) -> tuple[int, dict]:
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return status, json.loads(rest[:length])


def test_declared_huge_body_is_refused_before_it_is_sent(small_limit_server):
    with socket.create_connection(("127.0.0.1", small_limit_server.port)) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 1073741824\r\n\r\n" + b"\xff" * 65536)  # says 1 GB, sends 64 KB
        status, body = _read_response(sock)
    assert status == 413 and body["error"]["code"] == "payload_too_large"


def test_streamed_body_is_cut_off_at_the_limit(small_limit_server):
    limit = 1024 * 1024
    sent = 0
    with socket.create_connection(("127.0.0.1", small_limit_server.port)) as sock:
        sock.sendall(b"POST /v1/models/tiny/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"\xff" * 65536
        answered = False
        while sent < 64 * limit:  # keep streaming (up to 64 MB) until the server answers
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                answered = True
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                answered = True
                break
            sent += len(chunk)
            time.sleep(0.001)
        assert answered
        status, body = _read_response(sock)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert sent < 8 * limit  # it answered soon after the limit, not after reading everything


def test_sigint_stops_the_server_cleanly(serve_model_dir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imgclf", "serve", "--model", str(serve_model_dir / "tiny"),
                             "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in banner and "tiny" in banner
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        r = httpx.post(f"http://127.0.0.1:{port}/predict", content=jpeg_bytes(__import__("numpy").zeros(
            (20, 20, 3), "uint8")), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200
    finally:
        proc.send_signal(2)
        code = proc.wait(timeout=30)
    assert code == 0
