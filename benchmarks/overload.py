"""Overload benchmark: what a server at capacity answers, and how fast, at concurrency 16 and 256.

    python benchmarks/overload.py PACKAGE_DIR [--images DIR] [--seconds 20] [--concurrency 16 256]

``imgclf serve`` runs PACKAGE_DIR (a model package, or a zoo name) on a local port; a load
generator in a second process keeps N requests in flight on keep-alive connections for
``--seconds`` at each concurrency, sending the photos as multipart uploads. A client that gets 429
waits the ``Retry-After`` seconds the server asked for, as well-behaved clients do
(``--ignore-retry-after`` retries at once instead). Reported per level: successful images/s, 429
p50/p99 latency, and every failure by kind: 5xx, timeouts (no answer within ``--timeout``),
connection resets. The issue's bar: at 256, no 5xx, no timeouts, no resets, 429 p99 under 50 ms
and successful throughput at least 90% of the throughput at 16.

Then the stall check: while hostile bodies are sent (19 MB of empty V2 binary elements, 20 MB of
JSON zeros, a 15 MB base64 image), a probe asks ``/v2/health/live`` every 10 ms; the report gives
the probe's worst latency against its worst with no hostile traffic.

``--trivial-429 N``: instead, the same load generator against a bare uvicorn app (uvloop, httptools,
as ``imgclf serve``) that answers every request 429 at once, with N threads burning both cores in
its process as decoding and ONNX Runtime do in a saturated server: the 429 latency this machine and
this client give with no imgclf code on the path (run it with 0 and 2).

Every level is bounded in time. Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve import Server, package_and_photos, run_in_process  # noqa: E402 - the serving benchmark's server and its photos

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BOUNDARY = b"imgclfoverloadboundary"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000 if values else float("nan")


def multipart_request(port: int, path: str, image: bytes) -> bytes:
    body = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + image + b"\r\n--" + BOUNDARY + b"--\r\n")
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:" + str(port).encode() +
            b"\r\nContent-Type: multipart/form-data; boundary=" + BOUNDARY +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower().decode()] = v.strip().decode()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _load(port: int, path: str, images: list[bytes], concurrency: int, seconds: float, timeout: float,
                honor_retry_after: bool) -> dict:
    payloads = [multipart_request(port, path, img) for img in images]
    ok: list[float] = []
    refused: list[float] = []
    failures = {"5xx": 0, "timeout": 0, "reset": 0, "other": 0}
    other_statuses: dict[int, int] = {}
    warm_until = time.perf_counter() + min(3.0, seconds / 4)
    stop_at = warm_until + seconds

    async def worker(wid: int) -> None:
        reader = writer = None
        i = wid
        while time.perf_counter() < stop_at:
            try:
                if writer is not None and reader.at_eof():
                    # The server closed the idle connection (keep-alive timeout, e.g. while this
                    # client waited out a Retry-After): reconnect, as a connection pool does.
                    writer.close()
                    reader = writer = None
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                t0 = time.perf_counter()
                writer.write(payloads[i % len(payloads)])
                status, headers, _ = await asyncio.wait_for(read_response(reader), timeout)
                dt = time.perf_counter() - t0
            except TimeoutError:
                failures["timeout"] += time.perf_counter() >= warm_until
                writer.close()
                reader = writer = None
                continue
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                failures["reset"] += time.perf_counter() >= warm_until
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
                continue
            # Counted by when the answer came: throughput is answers within the window, whatever
            # their start (counting by start would miss a window's worth of multi-second waits).
            measured = warm_until <= time.perf_counter() <= stop_at
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
            if status == 200:
                i += concurrency
                if measured:
                    ok.append(dt)
            elif status == 429:
                if measured:
                    refused.append(dt)
                if honor_retry_after:
                    wait = float(headers.get("retry-after", "1"))
                    await asyncio.sleep(min(wait, max(0.0, stop_at - time.perf_counter())))
            elif measured:
                failures["5xx" if status >= 500 else "other"] += 1
                other_statuses[status] = other_statuses.get(status, 0) + 1
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {"ok": ok, "refused": refused, "failures": failures, "other": other_statuses, "seconds": seconds}


TRIVIAL_429_APP = """
import sys, threading
import numpy as np, uvicorn

def burn():
    a = np.ones((192, 192), np.float32)
    while True:
        a @ a  # releases the GIL, as ONNX Runtime and the decoders do

for _ in range(int(sys.argv[2])):
    threading.Thread(target=burn, daemon=True).start()

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"retry-after", b"1"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="off")
"""


class TrivialServer:
    """A bare uvicorn app answering 429 to everything, with ``burners`` CPU-bound threads beside it."""

    def __init__(self, burners: int) -> None:
        import socket
        import subprocess
        import urllib.request

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", TRIVIAL_429_APP, str(self.port), str(burners)], env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1)
            except urllib.error.HTTPError:
                return  # the 429: it is up
            except OSError:
                time.sleep(0.2)
        self.stop()
        sys.exit("the trivial 429 server did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run_load(*args) -> dict:  # noqa: ANN002
    """The load generator in its own process, so its CPU time never counts as the server's."""
    return run_in_process(_load, *args)


# -- stall check -----------------------------------------------------------------------------------


def hostile_bodies(port: int, model: str) -> list[bytes]:
    def post(path: str, body: bytes, ctype: str, extra: bytes = b"") -> bytes:
        return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:" + str(port).encode() +
                b"\r\nContent-Type: " + ctype.encode() + b"\r\n" + extra +
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    infer = f"/v2/models/{model}/infer"
    blob = struct.pack("<I", 0) * (19 * 1024 * 1024 // 4)
    head = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(blob)}}]}).encode()
    zeros = b'{"instances": [' + b"0," * (9 * 1024 * 1024) + b"0]}"
    big_b64 = json.dumps({"instances": [{"b64": base64.b64encode(os.urandom(15 * 1024 * 1024)).decode()}]}).encode()
    return [
        post(infer, head + blob, "application/octet-stream",
             b"Inference-Header-Content-Length: " + str(len(head)).encode() + b"\r\n"),
        post(f"/v1/models/{model}/predict", zeros, "application/json"),
        post(f"/v1/models/{model}/predict", big_b64, "application/json"),
    ]


async def _probe(port: int, seconds: float, hostile: list[bytes]) -> dict:
    lat: list[float] = []
    statuses: list[int] = []
    done = asyncio.Event()

    async def probe() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        req = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        while not done.is_set():
            t0 = time.perf_counter()
            writer.write(req)
            await read_response(reader)
            lat.append(time.perf_counter() - t0)
            await asyncio.sleep(0.01)
        writer.close()

    async def attack() -> None:
        end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < end:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(hostile[i % len(hostile)])
            status, _, _ = await read_response(reader)
            statuses.append(status)
            writer.close()
            i += 1
        done.set()

    async def idle() -> None:
        await asyncio.sleep(seconds)
        done.set()

    await asyncio.gather(probe(), attack() if hostile else idle())
    return {"latencies": lat, "statuses": statuses}


def run_probe(port: int, seconds: float, hostile: list[bytes]) -> dict:
    return run_in_process(_probe, port, seconds, hostile)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", help="model package directory (or zoo name) to serve")
    ap.add_argument("--images", help="folder of photos to send (default: the sample photos, as JPEG)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level (default 20)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 256, 16, 256],
                    help="levels in order; repeats share the drifting background load (default 16 256 16 256)")
    ap.add_argument("--timeout", type=float, default=30.0, help="client timeout per request (default 30 s)")
    ap.add_argument("--ignore-retry-after", action="store_true", help="retry a 429 at once")
    ap.add_argument("--stall-seconds", type=float, default=8.0, help="length of the stall check (0: skip)")
    ap.add_argument("--server-args", default="", help="extra `imgclf serve` arguments, e.g. '--queue-size 64'")
    ap.add_argument("--trivial-429", type=int, metavar="BURNERS", default=None,
                    help="load a bare app that answers 429 at once instead, beside BURNERS busy threads")
    args = ap.parse_args()
    if args.trivial_429 is not None:
        return trivial_429(args)

    package, name, images = package_and_photos(args.package, args.images)
    path = f"/v1/models/{name}/predict?top_k=5"
    print(f"# imgclf overload benchmark: {name}, {len(images)} photos, {os.cpu_count()} CPUs, "
          f"{args.seconds:g} s per level, clients {'ignore' if args.ignore_retry_after else 'honour'} "
          f"Retry-After\n", flush=True)
    server = Server(package, *args.server_args.split())
    rows: list[tuple[int, dict]] = []
    try:
        for c in args.concurrency:
            r = run_load(server.port, path, images, c, args.seconds, args.timeout, not args.ignore_retry_after)
            rows.append((c, r))
        stall = None
        if args.stall_seconds > 0:
            quiet = run_probe(server.port, args.stall_seconds / 2, [])
            loud = run_probe(server.port, args.stall_seconds, hostile_bodies(server.port, name))
            stall = (quiet, loud)
        rss = _peak_rss_mb(server.proc.pid)
    finally:
        server.stop()

    print("| concurrency | images/s (200) | 200 p50 ms | 200 p99 ms | 429s | 429 p50 ms | 429 p99 ms "
          "| 5xx | timeouts | resets | other |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    by_level: dict[int, list[float]] = {}
    for c, r in rows:
        ips = len(r["ok"]) / r["seconds"]
        by_level.setdefault(c, []).append(ips)
        f = r["failures"]
        print(f"| {c} | {ips:.1f} | {pct(r['ok'], 50):.1f} | {pct(r['ok'], 99):.1f} | {len(r['refused'])} | "
              f"{pct(r['refused'], 50):.1f} | {pct(r['refused'], 99):.1f} | {f['5xx']} | {f['timeout']} | "
              f"{f['reset']} | {f['other']} {r['other'] or ''} |")
    levels = list(by_level)
    if len(levels) > 1:
        low, high = (float(np.median(by_level[c])) for c in (levels[0], levels[-1]))
        if low:
            print(f"\nsuccessful throughput at {levels[-1]} / at {levels[0]} (medians over repeats): "
                  f"{100 * high / low:.0f}%")
    if stall is not None:
        quiet, loud = stall
        statuses = {s: loud["statuses"].count(s) for s in sorted(set(loud["statuses"]))}
        print(f"\n## Event-loop stall: /v2/health/live every 10 ms\n\n"
              f"no hostile traffic: worst {max(quiet['latencies']) * 1000:.1f} ms, p99 {pct(quiet['latencies'], 99):.1f} ms; "
              f"with {len(loud['statuses'])} hostile bodies (answers {statuses}): worst "
              f"{max(loud['latencies']) * 1000:.1f} ms, p99 {pct(loud['latencies'], 99):.1f} ms")
    print(f"\nserver peak RSS: {rss:.0f} MB")
    return 0


def trivial_429(args: argparse.Namespace) -> int:
    """The client and this machine alone: 429 latency from a bare app, at each concurrency level."""
    _, name, images = package_and_photos(args.package, args.images)
    path = f"/v1/models/{name}/predict?top_k=5"
    print(f"# 429 baseline: bare uvicorn app, {args.trivial_429} busy threads beside it, {os.cpu_count()} CPUs, "
          f"{args.seconds:g} s per level\n\n| concurrency | 429s | 429 p50 ms | 429 p99 ms | failures |\n"
          "|---:|---:|---:|---:|---|", flush=True)
    server = TrivialServer(args.trivial_429)
    try:
        for c in args.concurrency:
            r = run_load(server.port, path, images, c, args.seconds, args.timeout, not args.ignore_retry_after)
            print(f"| {c} | {len(r['refused'])} | {pct(r['refused'], 50):.1f} | {pct(r['refused'], 99):.1f} | "
                  f"{r['failures']} |", flush=True)
    finally:
        server.stop()
    return 0


def _peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
