"""Every common client reads the server's 413 for a body over the limit, over a real socket.

Clients such as ``http.client`` and ``requests`` send the whole body before they read the answer;
a server that answers early and closes a socket with unread bytes makes the kernel reset it, and
they see a broken pipe instead of the answer. The server drains a bounded amount first (lingering
close), so each client below, with a declared, chunked or lying length, gets the JSON error.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess

import httpx2 as httpx
import pytest
import requests
from serve_support import live_server

LIMIT = 1024 * 1024
BODY = b"\xff" * (4 * LIMIT)  # four times the limit: far more than the socket buffers hold


@pytest.fixture(scope="module")
def server(serve_model_dir):
    with live_server("--model", str(serve_model_dir / "tiny"), "--max-body-mb", "1") as s:
        yield s


def chunks(total: int = len(BODY), size: int = 64 * 1024):
    for start in range(0, total, size):
        yield BODY[start:start + size]


def check_413(status: int, body: bytes) -> None:
    assert status == 413, body[:200]
    err = json.loads(body)["error"]
    assert err["code"] == "payload_too_large" and "1 MB limit" in err["message"]


@pytest.mark.parametrize("form", ["declared", "chunked"])
def test_requests_reads_the_413(server, form):
    data = BODY if form == "declared" else chunks()
    r = requests.post(server.url + "/predict", data=data, headers={"Content-Type": "image/jpeg"}, timeout=30)
    check_413(r.status_code, r.content)


@pytest.mark.parametrize("form", ["declared", "chunked"])
def test_httpx_reads_the_413(server, form):
    content = BODY if form == "declared" else chunks()
    r = httpx.post(server.url + "/predict", content=content, headers={"Content-Type": "image/jpeg"}, timeout=30)
    check_413(r.status_code, r.content)


@pytest.mark.parametrize("form", ["declared", "chunked", "lying"])
def test_http_client_reads_the_413(server, form):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        if form == "declared":
            conn.request("POST", "/predict", body=BODY, headers={"Content-Type": "image/jpeg"})
        elif form == "chunked":
            conn.request("POST", "/predict", body=chunks(), headers={"Content-Type": "image/jpeg"},
                         encode_chunked=True)
        else:  # says 50 MB, sends 64 KB, then waits for the answer
            conn.putrequest("POST", "/predict")
            conn.putheader("Content-Type", "image/jpeg")
            conn.putheader("Content-Length", str(50 * LIMIT))
            conn.endheaders()
            conn.send(BODY[:65536])
        response = conn.getresponse()
        check_413(response.status, response.read())
    finally:
        conn.close()


def test_http_client_keeps_its_connection_after_an_early_answer_within_the_limit(server):
    # A declared body within the limit that the server does not need (unknown model): it answers
    # at once, the rest of the body is discarded and the same connection serves the next request.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/v1/models/nope/predict", body=BODY[: LIMIT // 2], headers={"Content-Type": "image/jpeg"})
        r = conn.getresponse()
        assert r.status == 404 and json.loads(r.read())["error"]["code"] == "model_not_found"
        conn.request("GET", "/v2/health/live")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read()) == {"live": True}
    finally:
        conn.close()


@pytest.mark.parametrize("form", ["declared", "chunked", "lying"])
def test_curl_reads_the_413(server, tmp_path, form):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed on this machine (apt-get install curl)")
    path = tmp_path / "big.bin"
    path.write_bytes(BODY if form != "lying" else BODY[:65536])
    extra = {"declared": [], "chunked": ["-H", "Transfer-Encoding: chunked"],
             "lying": ["-H", f"Content-Length: {50 * LIMIT}"]}[form]
    cmd = [curl, "-sS", "-o", "-", "-w", "\n%{http_code}", "-H", "Content-Type: image/jpeg", *extra,
           "--data-binary", f"@{path}", server.url + "/predict"]
    out = subprocess.run(cmd, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    body, _, status = out.stdout.rpartition(b"\n")
    check_413(int(status), body)
