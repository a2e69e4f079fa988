"""Hostile and malformed requests: each is a 400 (or 413) with a message, never a 500 or a 200,
and admission is decided before the body is read."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from fastapi.testclient import TestClient
from serve_support import assert_error, jpeg_bytes, wait_ready

from imgclf.server import ServerConfig, create_app
from imgclf.server.parsing import MAX_JSON_VALUES, decode_base64
from imgclf.server.schemas import BASE64_PATTERN, MODEL_NAME_PATTERN

MAX_IMAGES = 8


@pytest.fixture(scope="module")
def jpg() -> bytes:
    from skimage import data

    return jpeg_bytes(data.chelsea()[:64, :64])


@pytest.fixture(scope="module")
def client(serve_model_dir):
    config = ServerConfig(models=(str(serve_model_dir / "tiny"),), max_images_per_request=MAX_IMAGES)
    with TestClient(create_app(config), raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


def v2(shape, data=None, **inp):
    return {"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES",
                        **({"data": data} if data is not None else {}), **inp}]}


HOSTILE_JSON = {
    "nested 100k deep": b"[" * 100_000 + b"]" * 100_000,
    "nested 900 deep": b'{"instances": ' + b"[" * 900 + b"]" * 900 + b"}",
    "5000-digit integer": b'{"instances": [' + b"7" * 5000 + b"]}",
    "a million zeros": b'{"instances": [' + b"0," * 1_000_000 + b"0]}",
    "truncated": b'{"instances": [{"b64": "abc',
    "not UTF-8": b'{"instances": "\xff\xfe"}',
    "NaN": b'{"instances": NaN}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_JSON))
def test_hostile_json_is_400_with_a_message(client, name):
    body = HOSTILE_JSON[name]
    for path in ("/v1/models/tiny/predict", "/v2/models/tiny/infer"):
        err = assert_error(client.post(path, content=body, headers={"Content-Type": "application/json"}), 400)
        assert len(err["message"]) < 300, err


def test_a_million_values_are_refused_before_parsing(client):
    body = json.dumps(v2([1], ["AAAA"] * (MAX_JSON_VALUES + 5))).encode()
    err = assert_error(client.post("/v2/models/tiny/infer", content=body,
                                   headers={"Content-Type": "application/json"}), 400)
    assert "JSON values" in err["message"]


@pytest.mark.parametrize("shape", [[1, 2**64], [2**64], [2**32, 2**32], [-1], [1, -1], [1, 2], [0], [1, 1, 1],
                                   [], [1.0], ["1"], [True], None, "1"])
def test_bad_v2_shapes_are_400(client, jpg, shape):
    body = v2(shape, [base64.b64encode(jpg).decode()])
    assert_error(client.post("/v2/models/tiny/infer", json=body), 400)


def test_v2_data_and_shape_must_agree(client, jpg):
    b64 = base64.b64encode(jpg).decode()
    for shape, data in (([2], [b64]), ([1], [b64, b64]), ([2, 1], [[b64]]), ([1], [])):
        err = assert_error(client.post("/v2/models/tiny/infer", json=v2(shape, data)), 400)
        assert "says" in err["message"], err
    assert client.post("/v2/models/tiny/infer", json=v2([2, 1], [[b64], [b64]])).status_code == 200


def test_v2_binary_of_millions_of_empty_elements_is_refused(client):
    # 19 MB of zero-length elements: the server reads at most the shape's count of them.
    blob = struct.pack("<I", 0) * (19 * 1024 * 1024 // 4)
    head = json.dumps(v2([1], parameters={"binary_data_size": len(blob)})).encode()
    r = client.post("/v2/models/tiny/infer", content=head + blob,
                    headers={"Inference-Header-Content-Length": str(len(head)),
                             "Content-Type": "application/octet-stream"})
    err = assert_error(r, 400)
    assert "more than the 1 elements" in err["message"]


def test_more_images_than_the_limit_are_413_too_many_images(client, jpg):
    n = MAX_IMAGES + 1
    files = [("file", (f"{i}.jpg", jpg, "image/jpeg")) for i in range(n)]
    assert_error(client.post("/v1/models/tiny/predict", files=files), 413, "too_many_images")
    b64 = base64.b64encode(jpg).decode()
    assert_error(client.post("/v1/models/tiny/predict", json={"instances": [{"b64": b64}] * n}),
                 413, "too_many_images")
    assert_error(client.post("/v2/models/tiny/infer", json=v2([n], [b64] * n)), 413, "too_many_images")
    files = [("file", (f"{i}.jpg", jpg, "image/jpeg")) for i in range(MAX_IMAGES)]
    r = client.post("/v1/models/tiny/predict", files=files)
    assert r.status_code == 200 and len(r.json()["predictions"]) == MAX_IMAGES


def test_multipart_edge_cases(client, jpg):
    text_fields = {f"f{i}": "x" for i in range(40)}
    err = assert_error(client.post("/v1/models/tiny/predict", data=text_fields,
                                   files={"file": ("a.jpg", jpg, "image/jpeg")}), 400)
    assert "text fields" in err["message"]
    # Other file fields are skipped; "file" is what counts.
    r = client.post("/v1/models/tiny/predict", files=[("other", ("o.jpg", b"junk", "image/jpeg")),
                                                      ("file", ("a.jpg", jpg, "image/jpeg"))])
    assert r.status_code == 200, r.text
    boundary = "b0undary"
    broken = f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n".encode()
    assert_error(client.post("/v1/models/tiny/predict", content=broken + b"X-Junk" * 50_000,
                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}), 400)


def test_base64_decoding_is_exactly_strict_base64():
    import re

    pattern = re.compile(BASE64_PATTERN)
    samples = ["", "AAAA", "AAA=", "AA==", "A===", "AAAA=", "AA=A", "A", "AB", "ABC", "AAAA AAAA", "AA\nAA",
               "AAAA====", "=AAA", "AAAAAA==", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "é=AA", "-_AA", "AB+/"]
    for text in samples:
        # The document's pattern is the rule (RFC 4648's canonical form; Python's own decoders let
        # excess padding such as "AAAA=" through); what it admits decodes as the standard library does.
        expected = base64.b64decode(text) if pattern.match(text) else None
        try:
            got = decode_base64(text, "x")
        except Exception:  # noqa: BLE001 - the ApiError of a bad string
            got = None
        assert got == expected, text
    big = bytes(range(256)) * 20_000  # several slices
    assert decode_base64(base64.b64encode(big).decode(), "x") == big


def test_model_name_pattern_is_check_name():
    import re

    from imgclf.package import PackageError, check_name

    pattern = re.compile(MODEL_NAME_PATTERN)
    for name in ("tiny", "a", "a.b", "a-b_c.d", "a.", "a..b", ".a", "-a", "a" * 64, "a" * 65, "a/b", "a b",
                 "x;rm", "é", "A1.2.3", "a.-", "a-.-.b", "..", "."):
        try:
            check_name(name)
            ok = True
        except PackageError:
            ok = False
        assert ok == (bool(pattern.match(name)) and len(name) <= 64), name


# -- admission -----------------------------------------------------------------------------------


def test_a_full_queue_is_answered_before_the_body_is_read(serve_model_dir, jpg):
    app = create_app(ServerConfig(models=(str(serve_model_dir / "tiny"),), queue_size=1))
    with TestClient(app) as c:
        wait_ready(c)
        batcher = app.state.imgclf.registry.get("tiny").batcher
        held = batcher.admit(1)  # the queue's one slot, as a request being decoded holds it

        async def call(path: str) -> tuple[list[dict], int]:
            """The app called as the HTTP server calls it; counts the reads of the body."""
            reads = 0
            sent: list[dict] = []

            async def receive() -> dict:
                nonlocal reads
                reads += 1
                return {"type": "http.request", "body": jpg, "more_body": False}

            async def send(message: dict) -> None:
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                     "root_path": "", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1234),
                     "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"image/jpeg"),
                                 (b"content-length", str(len(jpg)).encode())]}
            await app(scope, receive, send)
            return sent, reads

        try:
            for path in ("/v1/models/tiny/predict", "/v2/models/tiny/infer"):
                sent, reads = c.portal.call(call, path)
                start = sent[0]
                assert start["status"] == 429, sent
                assert int(dict(start["headers"])[b"retry-after"]) >= 1
                assert json.loads(sent[1]["body"])["code" if path.startswith("/v2") else "error"]
                assert reads == 0  # not a byte of the body was asked for
        finally:
            held.release()
        r = c.post("/v1/models/tiny/predict", content=jpg, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200
        assert batcher.depth == 0  # every slot was given back
        metrics = c.get("/metrics").text  # refusals before routing are counted under their route
        for endpoint in ("/v1/models/{name}/predict", "/v2/models/{name}/infer"):
            assert (f'imgclf_errors_total{{code="queue_full",endpoint="{endpoint}",model="tiny",status="429"}} 1.0'
                    in metrics), metrics


def test_65_files_at_the_default_limit_are_413_too_many_images(serve_model_dir, jpg):
    # The documented case: the default --max-images is 64.
    with TestClient(create_app(ServerConfig(models=(str(serve_model_dir / "tiny"),)))) as c:
        wait_ready(c)
        files = [("file", (f"{i}.jpg", jpg, "image/jpeg")) for i in range(65)]
        err = assert_error(c.post("/predict", files=files), 413, "too_many_images")
        assert "limit is 64" in err["message"]
        assert c.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"][
            "multipart/form-data"]["schema"]["properties"]["file"]["maxItems"] == 64
