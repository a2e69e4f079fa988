"""Graceful shutdown of ``imgclf serve``: SIGTERM turns the replica not ready, closes the port, lets
requests in flight finish within --graceful-timeout and exits with status 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx2 as httpx
import numpy as np
import pytest
from serve_support import free_port, jpeg_bytes


def _start(model_dir, *flags: str) -> tuple[subprocess.Popen[str], str, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imgclf", "serve", "--model", str(model_dir / "tiny"),
                             "--port", str(port), "--log-level", "info", "--no-access-log", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return proc, url, port
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("server never became ready")


def _half_sent_request(port: int, body: bytes) -> tuple[socket.socket, bytes]:
    """A predict request whose headers and first half of the body are sent: in flight on the server."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock.sendall(head + body[: len(body) // 2])
    return sock, body[len(body) // 2:]


def _response(sock: socket.socket) -> tuple[int, dict]:
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), json.loads(rest[:length])


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _wait_for(predicate, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"never {what}")


@pytest.mark.slow
def test_sigterm_drains_requests_in_flight_then_exits_0(serve_model_dir):
    proc, url, port = _start(serve_model_dir, "--shutdown-delay", "1.5", "--graceful-timeout", "30")
    body = jpeg_bytes(np.full((48, 64, 3), 120, np.uint8))
    try:
        sock, rest = _half_sent_request(port, body)
        proc.send_signal(signal.SIGTERM)
        # During the delay: not ready (the balancer's cue), yet still serving.
        _wait_for(lambda: httpx.get(url + "/v2/health/ready", timeout=2).status_code == 503, "turned not ready")
        assert httpx.get(url + "/v2/health/live", timeout=2).status_code == 200
        r = httpx.post(url + "/predict", content=body, headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200, r.text
        # Then the port closes: new connections are refused while the request in flight is pending.
        _wait_for(lambda: _refused(port), "closed its port")
        assert proc.poll() is None  # still waiting for the half-sent request
        sock.sendall(rest)
        status, answer = _response(sock)
        sock.close()
        assert status == 200 and len(answer["predictions"][0]) == 3, answer
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_graceful_wait_is_bounded(serve_model_dir):
    # --timeout is far longer than the graceful timeout, so only the shutdown bound can end the stall.
    proc, _, port = _start(serve_model_dir, "--graceful-timeout", "1", "--timeout", "600")
    try:
        sock, _ = _half_sent_request(port, jpeg_bytes(np.zeros((32, 32, 3), np.uint8)))
        time.sleep(0.3)  # let the server read the headers: the request is in flight
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # the stalled request did not hold the process
        output = proc.stdout.read() if proc.stdout else ""
        assert "timeout graceful shutdown exceeded" in output, output
        # The stalled request was cancelled: uvicorn answers 500 (nothing was sent yet) and closes.
        sock.settimeout(10)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        sock.close()
        assert received == b"" or received.startswith(b"HTTP/1.1 500 "), received
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_second_sigterm_cuts_the_delay_short(serve_model_dir):
    proc, url, _ = _start(serve_model_dir, "--shutdown-delay", "600")
    try:
        proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: httpx.get(url + "/v2/health/ready", timeout=2).status_code == 503, "turned not ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # long before the 600 s delay
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
