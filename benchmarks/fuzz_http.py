"""HTTP fuzzer: thousands of mutated and hostile requests against a live server; no 5xx, no resets.

    python benchmarks/fuzz_http.py PACKAGE_DIR [--requests 2000] [--seed 0] [--images DIR]

``imgclf serve`` runs PACKAGE_DIR (a model package, or a zoo name) on a local port. The fuzzer
sends ``--requests`` requests built from the real sample photos (re-encoded as JPEG, PNG, GIF,
WebP, TIFF and BMP, then bit-flipped, truncated, spliced or given junk inserted) in every form the
server reads: multipart uploads, raw bodies, JSON base64, V2 JSON and V2 binary tensors; plus
hostile JSON (deep nesting, huge numbers, millions of values), bad V2 shapes and wrong content
types. Each answer must be a JSON error or a result: a 5xx, a reset connection or a hang fails the
run. Reports the statuses, the failures and the server's peak RSS; exits 1 on any failure.
Seeded: the same seed sends the same requests.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import random
import re
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve import Server, read_images  # noqa: E402 - the serving benchmark's server and photos

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def encodings(photos: list[bytes], rng: random.Random) -> list[tuple[bytes, str]]:
    """Each photo, shrunk to at most 400 px, as JPEG, PNG, GIF, WebP, TIFF and BMP."""
    from PIL import Image

    out = []
    for data in photos:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        img.thumbnail((400, 400))
        for fmt, ctype in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"),
                           ("WEBP", "image/webp"), ("TIFF", "image/tiff"), ("BMP", "image/bmp")):
            buf = io.BytesIO()
            img.save(buf, fmt)
            out.append((buf.getvalue(), ctype))
    rng.shuffle(out)
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to a few of: bit flips, truncation, a spliced copy, junk inserted, a header byte set."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        if op == 0 and b:
            for _ in range(rng.randint(1, 16)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):]
        elif op == 2 and b:
            i, j = sorted(rng.randrange(len(b)) for _ in range(2))
            b[i:i] = b[j:j + rng.randint(1, 4096)]
        elif op == 3:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 512))
        elif op == 4 and len(b) > 32:
            i = rng.randrange(min(len(b), 64))  # the header: sizes, magic numbers, chunk lengths
            b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif op == 5 and len(b) > 16:
            i = rng.randrange(8, min(len(b), 40))
            b[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
    return bytes(b)


def hostile_json(rng: random.Random) -> bytes:
    return rng.choice([
        b"[" * 100_000 + b"]" * 100_000,
        b'{"instances": [' + b"9" * rng.randint(4000, 6000) + b"]}",
        b'{"instances": [' + b"0," * rng.randint(20_000, 300_000) + b"0]}",
        b'{"instances": [{"b64": "' + b"A" * rng.randint(1, 9) + b'"}]}',
        b'{"instances": {"b64": 1}}',
        b'{"inputs": [{"name": "image", "shape": [1, 18446744073709551616], "datatype": "BYTES", "data": ["AAAA"]}]}',
        b"\xef\xbb\xbf{}",
        b'{"a": ' * 5000 + b"1" + b"}" * 5000,
        b"nul\x00l",
        rng.randbytes(rng.randint(0, 2000)),
    ])


def v2_json(image: bytes, rng: random.Random) -> bytes:
    b64 = base64.b64encode(image).decode()
    shape = rng.choice([[1], [1, 1], [2], [0], [-1], [2**32, 2**32], [1, 2**64], [1, 2], [], [1.5], ["1"], None])
    inp: dict = {"name": rng.choice(["image", "image", "pixels"]), "shape": shape,
                 "datatype": rng.choice(["BYTES", "BYTES", "FP32", 7])}
    inp["data"] = rng.choice([[b64], [b64, b64], [[b64]], [b64[:-3]], [1.5], "x", None, []])
    doc: dict = {"inputs": [inp]}
    if rng.random() < 0.3:
        doc["parameters"] = {"classification": rng.choice([1, 3, -1, "x", 2**70, True])}
    if rng.random() < 0.2:
        doc["outputs"] = [{"name": rng.choice(["logits", "probs", ""]),
                           "parameters": {"binary_data": rng.choice([True, False, "yes"])}}]
    return json.dumps(doc).encode()


def v2_binary(image: bytes, rng: random.Random) -> tuple[bytes, dict[str, str]]:
    n = rng.choice([1, 1, 2, 0, 100_000])
    elements = [image] * min(n, 2)
    blob = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    if rng.random() < 0.3:
        blob = mutate(blob, rng)
    if n == 100_000:
        blob = struct.pack("<I", 0) * n
    shape = [rng.choice([1, 2, len(elements)])]
    head = json.dumps({"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES",
                                   "parameters": {"binary_data_size": rng.choice([len(blob), len(blob) + 9, 0])}}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": rng.random() < 0.5}}]}).encode()
    length = rng.choice([len(head), len(head), len(head) + 5, 0, -1, "x"])
    return head + blob, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(length)}


def multipart(files: list[tuple[str, bytes, str]], rng: random.Random) -> tuple[bytes, dict[str, str]]:
    boundary = "fz" + rng.randbytes(8).hex()
    parts = []
    for name, data, ctype in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    if rng.random() < 0.15:
        body = mutate(body, rng)  # broken multipart framing
    ctype = rng.choice([f"multipart/form-data; boundary={boundary}"] * 6 + ["multipart/form-data",
                       "multipart/form-data; boundary=other"])
    return body, {"Content-Type": ctype}


def build(rng: random.Random, images: list[tuple[bytes, str]], model: str) -> tuple[str, bytes, dict[str, str]]:
    """One fuzzed request: (path, body, headers)."""
    data, ctype = rng.choice(images)
    image = mutate(data, rng) if rng.random() < 0.85 else data
    query = rng.choice(["?top_k=0", "?top_k=x", "?top_k=5000"]) if rng.random() < 0.1 else rng.choice(["", "?top_k=3"])
    predict = f"/v1/models/{model}/predict" + query
    infer = f"/v2/models/{model}/infer"
    kind = rng.randrange(7)
    if kind == 0:
        files = [("file", image, ctype)] * rng.choice([1, 1, 2, 3]) + ([("other", b"x", "text/plain")]
                                                                        if rng.random() < 0.2 else [])
        body, headers = multipart(files, rng)
        return predict, body, headers
    if kind == 1:
        return predict, image, {"Content-Type": rng.choice([ctype, "image/jpeg", "application/octet-stream"])}
    if kind == 2:
        b64 = base64.b64encode(image).decode()
        doc = {"instances": [{"b64": rng.choice([b64, b64, b64 + "=", b64[:-1], "@@" + b64])}] * rng.choice([1, 2])}
        return predict, json.dumps(doc).encode(), {"Content-Type": "application/json"}
    if kind == 3:
        return infer, v2_json(image, rng), {"Content-Type": "application/json"}
    if kind == 4:
        body, headers = v2_binary(image, rng)
        return infer, body, headers
    if kind == 5:
        return rng.choice([predict, infer]), hostile_json(rng), {"Content-Type": "application/json"}
    wrong = rng.choice(["text/plain", "", "application/xml", "multipart/mixed", "image/", "application/json; charset=x"])
    return rng.choice([predict, infer]), image, ({"Content-Type": wrong} if wrong else {})


def peak_rss_mb(pid: int) -> float:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def fuzz(port: int, model: str, images: list[tuple[bytes, str]], requests: int, seed: int,
         timeout: float = 60.0) -> dict:
    rng = random.Random(seed)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    conn: http.client.HTTPConnection | None = None
    started = time.perf_counter()
    for i in range(requests):
        path, body, headers = build(rng, images, model)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("POST", path, body=body, headers=headers)
            r = conn.getresponse()
            payload = r.read()
            statuses[r.status] += 1
            if r.status >= 500:
                failures.append(f"request {i}: {r.status} {payload[:200]!r}")
            elif r.getheader("content-type", "").split(";")[0] not in ("application/json", "application/octet-stream"):
                failures.append(f"request {i}: {r.status} answered {r.getheader('content-type')}")
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except TimeoutError:
            failures.append(f"request {i}: no answer within {timeout:g} s ({path})")
            conn.close()
            conn = None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            failures.append(f"request {i}: {type(exc).__name__}: {exc} ({path}, {len(body)} bytes)")
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return {"statuses": statuses, "failures": failures, "seconds": time.perf_counter() - started}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", help="model package directory (or zoo name) to serve")
    ap.add_argument("--requests", type=int, default=2000, help="fuzzed requests (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", help="folder of photos to mutate (default: the sample photos)")
    ap.add_argument("--server-args", default="", help="extra `imgclf serve` arguments")
    args = ap.parse_args()

    from imgclf.package import load_package
    from imgclf.resolve import package_dirs

    (package,) = package_dirs([args.package], None)
    model = load_package(package).name
    with tempfile.TemporaryDirectory() as tmp:
        photos = read_images(args.images, Path(tmp))
    images = encodings(photos, random.Random(args.seed))
    server = Server(package, *args.server_args.split())
    try:
        result = fuzz(server.port, model, images, args.requests, args.seed)
        rss = peak_rss_mb(server.proc.pid)
        alive = server.proc.poll() is None
        log = Path(server.log.name).read_text(errors="replace")
    finally:
        server.stop()
    traces = log.count("Traceback")
    print(f"# imgclf HTTP fuzz: {args.requests} requests, seed {args.seed}, {model}, "
          f"{result['seconds']:.1f} s\n")
    print("statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(result["statuses"].items())))
    print(f"failures (5xx, resets, hangs, non-JSON answers): {len(result['failures'])}")
    for f in result["failures"][:20]:
        print("  " + f)
    print(f"tracebacks in the server log: {traces}")
    print(f"server peak RSS: {rss:.0f} MB; server still running: {alive}")
    return 0 if not result["failures"] and not traces and alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
