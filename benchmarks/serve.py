"""Serving benchmark: HTTP throughput and latency against the in-process limit, same run, same photos.

    python benchmarks/serve.py [--images DIR] [--model efficientnet_lite0]

1. ``imgclf serve`` in a child process; a load generator in a second process sends the JPEG photos
   over loopback (127.0.0.1) at concurrency 1, 4, 16, 64 on keep-alive connections and measures
   images/s and p50/p95/p99 latency.
2. Around each level, the in-process limit: decode + preprocess (thread pool) + ONNX Runtime at the
   same batch size, no HTTP; between the concurrency-1 blocks, the single-image time (one photo,
   decode to logits, nothing overlapped). Measured alongside so drifting background load hits both.
3. Overload: the server restarted with a small queue, hit at concurrency 64: how many requests are
   refused with 429 and how fast those answers come.

Every level is bounded by a request count and a time limit. Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

LEVELS = (1, 4, 16, 64)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def read_images(folder: str | None, tmp: Path) -> list[bytes]:
    from imgclf.images import image_files

    if folder is None:
        from imgclf.samples import write_sample_photos

        paths = write_sample_photos(tmp / "photos")
    else:
        paths = image_files(folder)
    if not paths:
        sys.exit(f"no images in {folder}")
    return [p.read_bytes() for p in paths]


def package_and_photos(model: str, folder: str | None) -> tuple[Path, str, list[bytes]]:
    """The package directory to serve for ``model`` (a zoo name is exported once, in a child process),
    the name the server routes it by, and the photos to send (``folder``, default the sample photos)."""
    from imgclf.package import load_package
    from imgclf.resolve import package_dirs

    (package,) = package_dirs([model], None)
    with tempfile.TemporaryDirectory() as tmp:
        images = read_images(folder, Path(tmp))
    return package, load_package(package).name, images


# -- in-process limit ------------------------------------------------------------------------


def load_engine(package: Path):
    from imgclf.engine import OnnxEngine
    from imgclf.package import load_package

    engine = OnnxEngine(load_package(package))
    spec = engine.spec
    for n in sorted({1, *LEVELS}):
        engine.logits(np.zeros((n, spec.channels, spec.input_size, spec.input_size), np.float32))
    return engine


def single_image_times(engine, images: list[bytes], n: int) -> list[float]:
    """Seconds from bytes to logits for one photo at a time, nothing overlapped."""
    from imgclf.pipeline import prepare

    out = []
    for i in range(n):
        t0 = time.perf_counter()
        engine.logits(prepare(images[i % len(images)], engine.spec)[None])
        out.append(time.perf_counter() - t0)
    return out


def in_process_throughput(engine, images: list[bytes], seconds: float, max_images: int,
                          batches: tuple[int, ...] = LEVELS) -> dict[int, float]:
    """Images/s at each batch size, decoding the next batch while the current one runs (as
    ``imgclf predict`` does)."""
    from imgclf.pipeline import prepare

    spec = engine.spec
    throughput = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for batch in batches:
            def submit(start: int, batch: int = batch) -> list:
                return [pool.submit(prepare, images[j % len(images)], spec) for j in range(start, start + batch)]

            done, t0 = 0, time.perf_counter()
            pending = submit(0)
            while time.perf_counter() - t0 < seconds and done < max_images:
                rows = [f.result() for f in pending]
                pending = submit(done + batch)  # decode the next batch while this one runs
                engine.logits(np.stack(rows))
                done += batch
            elapsed = time.perf_counter() - t0
            for f in pending:
                f.result()
            throughput[batch] = done / elapsed
    return throughput


# -- the server ------------------------------------------------------------------------------


class Server:
    """``imgclf serve PACKAGE`` in a child process on a free local port; ``stop()`` ends it."""

    def __init__(self, package: str | Path, *extra: str) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="imgclf-bench-serve-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "imgclf", "serve", "--model", str(package), "--host", "127.0.0.1",
               "--port", "0", "--log-level", "warning", "--no-access-log", *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.port = self._wait_ready()

    def _wait_ready(self) -> int:
        deadline = time.monotonic() + 180
        port = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit("server exited:\n" + Path(self.log.name).read_text())
            if port is None:
                m = re.search(r"http://127\.0\.0\.1:(\d+)/", Path(self.log.name).read_text())
                port = int(m.group(1)) if m else None
            if port is not None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                        if r.status == 200:
                            return port
                except OSError:
                    pass
            time.sleep(0.2)
        self.stop()
        sys.exit("server did not become ready")

    def default_model(self) -> str:
        """The name the server routes ``/v1/models/{name}`` requests to by default."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=10) as r:
            return str(json.load(r)["default"])

    def stop(self) -> None:
        self.proc.send_signal(2)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.log.name)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MB (``VmHWM``: its peak) from /proc, NaN where unreadable."""
    m = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


# -- load generator (runs in its own process) ------------------------------------------------


def _request(port: int, path: str, body: bytes, api: str) -> bytes:
    if api == "multipart":
        boundary = b"imgclfbenchboundary"
        body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
                b"Content-Type: image/jpeg\r\n\r\n" + body + b"\r\n--" + boundary + b"--\r\n")
        ctype = b"multipart/form-data; boundary=" + boundary
    else:
        ctype = b"image/jpeg"
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:" + str(port).encode() +
            b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def _load(port: int, path: str, images: list[bytes], concurrency: int, warmup: int, requests: int,
                seconds: float, api: str) -> dict:
    payloads = [_request(port, path, img, api) for img in images]
    latencies: list[float] = []
    statuses: dict[int, list[float]] = {}
    sent = 0
    measured_start: float | None = None
    stop_at = time.perf_counter() + seconds + 30  # hard stop, warm-up included

    async def worker(wid: int) -> None:
        nonlocal sent, measured_start
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = wid
        try:
            while time.perf_counter() < stop_at:
                if sent >= warmup + requests:
                    return
                sent += 1
                measure = sent > warmup
                if measure and measured_start is None:
                    measured_start = time.perf_counter()
                t0 = time.perf_counter()
                writer.write(payloads[i % len(payloads)])
                i += concurrency
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                dt = time.perf_counter() - t0
                if measure:
                    statuses.setdefault(status, []).append(dt)
                    if status == 200:
                        latencies.append(dt)
                if b"connection: close" in head.lower():
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                if measured_start is not None and time.perf_counter() - measured_start > seconds:
                    return
        finally:
            writer.close()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - (measured_start or time.perf_counter())
    return {"latencies": latencies, "statuses": statuses, "elapsed": elapsed}


def _run_and_send(conn: Connection, coroutine_fn: Callable[..., Coroutine[Any, Any, Any]],
                  args: tuple[Any, ...]) -> None:
    conn.send(asyncio.run(coroutine_fn(*args)))
    conn.close()


def run_in_process(coroutine_fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    """``asyncio.run(coroutine_fn(*args))`` in a spawned process of its own, so a load generator's CPU
    time never counts as the server's; returns its result (``coroutine_fn`` must be module-level)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_run_and_send, args=(child, coroutine_fn, args))
    p.start()
    result = parent.recv()
    p.join()
    return result


def run_load(port: int, path: str, images: list[bytes], concurrency: int, *, requests: int, seconds: float,
             api: str) -> dict:
    warmup = max(8, 2 * concurrency)
    return run_in_process(_load, port, path, images, concurrency, warmup, requests, seconds, api)


# -- report ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", help="folder of photos to send (default: the sample photos, as JPEG)")
    ap.add_argument("--model", default="efficientnet_lite0", help="zoo name or package directory")
    ap.add_argument("--api", choices=["raw", "multipart"], default="multipart",
                    help="request form: multipart field 'file' (default) or a raw image/jpeg body")
    ap.add_argument("--requests", type=int, default=400, help="measured requests per level (default 400)")
    ap.add_argument("--seconds", type=float, default=20.0, help="time limit per level (default 20)")
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--overload-queue", type=int, default=8, help="queue size for the overload run (default 8)")
    args = ap.parse_args()

    package, name, images = package_and_photos(args.model, args.images)
    path = f"/v1/models/{name}/predict?top_k=5"
    sizes = [len(b) for b in images]
    print(f"# imgclf serving benchmark: {name}, {len(images)} photos ({min(sizes) // 1024}-{max(sizes) // 1024} KB), "
          f"{os.cpu_count()} CPUs, {args.api} requests\n", flush=True)

    engine = load_engine(package)
    server = Server(package, "--max-batch-size", str(args.max_batch_size), "--max-delay-ms", str(args.max_delay_ms))
    rows = {}
    single: list[float] = []
    # On a shared machine the background load drifts, so each HTTP level is compared with
    # in-process figures measured right around it, not minutes earlier.
    try:
        blocks = 6  # concurrency 1 alternates with the single-image time in blocks
        lat1: list[float] = []
        statuses1: dict[int, list[float]] = {}
        elapsed1 = 0.0
        for _ in range(blocks):
            single += single_image_times(engine, images, max(10, args.requests // (2 * blocks)))
            r = run_load(server.port, path, images, 1, requests=args.requests // blocks,
                         seconds=args.seconds / blocks, api=args.api)
            lat1 += r["latencies"]
            elapsed1 += r["elapsed"]
            for st, v in r["statuses"].items():
                statuses1.setdefault(st, []).extend(v)
        for c in LEVELS:
            before = in_process_throughput(engine, images, args.seconds / 4, args.requests, (c,))[c]
            if c == 1:
                lat, statuses, ips = lat1, statuses1, len(lat1) / elapsed1
            else:
                r = run_load(server.port, path, images, c, requests=args.requests, seconds=args.seconds,
                             api=args.api)
                lat, statuses = r["latencies"], r["statuses"]
                ips = len(lat) / r["elapsed"] if r["elapsed"] else 0.0
            after = in_process_throughput(engine, images, args.seconds / 4, args.requests, (c,))[c]
            rows[c] = (ips, (before + after) / 2, lat, statuses)
    finally:
        server.stop()
    single_ms = 1000 * percentile(single, 50)
    print(f"## Over HTTP vs in-process (max batch {args.max_batch_size}, max delay {args.max_delay_ms:g} ms)\n")
    print("In-process: decode + preprocess (thread pool) + ONNX Runtime at batch size = concurrency, no HTTP.\n")
    print("| concurrency | HTTP images/s | in-process images/s | HTTP / in-process | p50 ms | p95 ms | p99 ms | non-200 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, (ips, ref, lat, statuses) in rows.items():
        bad = sum(len(v) for s, v in statuses.items() if s != 200)
        print(f"| {c} | {ips:.1f} | {ref:.1f} | {100 * ips / ref:.0f}% | {1000 * percentile(lat, 50):.1f} | "
              f"{1000 * percentile(lat, 95):.1f} | {1000 * percentile(lat, 99):.1f} | {bad} |")
    p50_1 = 1000 * percentile(rows[1][2], 50)
    print(f"\nconcurrency 1: p50 {p50_1:.1f} ms; in-process single image (decode to logits, measured in "
          f"between): p50 {single_ms:.1f} ms; difference {p50_1 - single_ms:+.1f} ms\n", flush=True)

    server = Server(package, "--max-batch-size", str(args.max_batch_size), "--max-delay-ms", str(args.max_delay_ms),
                    "--queue-size", str(args.overload_queue))
    try:
        r = run_load(server.port, path, images, 64, requests=args.requests * 2, seconds=args.seconds, api=args.api)
    finally:
        server.stop()
    st = r["statuses"]
    total = sum(len(v) for v in st.values())
    print(f"## Overload: concurrency 64, queue of {args.overload_queue} images\n")
    print("| status | requests | share | p50 ms | p99 ms |\n|---:|---:|---:|---:|---:|")
    for s in sorted(st):
        v = st[s]
        print(f"| {s} | {len(v)} | {100 * len(v) / total:.0f}% | {1000 * percentile(v, 50):.1f} | "
              f"{1000 * percentile(v, 99):.1f} |")
    print(f"\nserved {len(st.get(200, [])) / r['elapsed']:.1f} images/s while refusing the rest; "
          f"504 timeouts: {len(st.get(504, []))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
