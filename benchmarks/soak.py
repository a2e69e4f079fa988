"""Soak benchmark: many requests against one server; does its memory grow after warm-up?

    python benchmarks/soak.py PACKAGE_DIR [--requests 10000] [--concurrency 8] [--images DIR]

``imgclf serve`` runs PACKAGE_DIR (a model package, or a zoo name) on a local port; a load
generator keeps ``--concurrency`` multipart uploads of the photos in flight, with one bad request
(junk bytes, a truncated photo, bad JSON) in every ten, for ``--requests`` requests in all. The
server's RSS is sampled after the warm-up (the first 10%) and at the end; the report gives the
growth between them, the statuses, the throughput and the peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from overload import multipart_request, read_response  # noqa: E402
from serve import Server, read_images  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    m = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def bad_requests(port: int, path: str, image: bytes) -> list[bytes]:
    def raw(body: bytes, ctype: bytes) -> bytes:
        return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + ctype +
                b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    return [multipart_request(port, path, b"junk" * 100), multipart_request(port, path, image[: len(image) // 2]),
            raw(b'{"instances": [{"b64": "@@"}]}', b"application/json"), raw(b"{", b"application/json")]


async def soak(port: int, pid: int, path: str, images: list[bytes], total: int, concurrency: int) -> dict:
    good = [multipart_request(port, path, img) for img in images]
    bad = bad_requests(port, path, images[0])
    statuses: dict[int, int] = {}
    sent = 0
    warm = max(concurrency, total // 10)
    after_warmup: float | None = None
    t_warm = 0.0

    async def worker() -> None:
        nonlocal sent, after_warmup, t_warm
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while sent < total:
            i = sent
            sent += 1
            if i == warm:
                after_warmup, t_warm = rss_mb(pid), time.perf_counter()
            writer.write(bad[(i // 10) % len(bad)] if i % 10 == 9 else good[i % len(good)])
            status, headers, _ = await read_response(reader)
            statuses[status] = statuses.get(status, 0) + 1
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"statuses": statuses, "warm_rss": after_warmup, "end_rss": rss_mb(pid), "peak_rss": rss_mb(pid, "VmHWM"),
            "seconds": time.perf_counter() - t_warm, "measured": total - warm}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", help="model package directory (or zoo name) to serve")
    ap.add_argument("--requests", type=int, default=10_000, help="requests in all (default 10000)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--images", help="folder of photos to send (default: the sample photos, as JPEG)")
    args = ap.parse_args()

    from imgclf.package import load_package
    from imgclf.resolve import package_dirs

    (package,) = package_dirs([args.package], None)
    name = load_package(package).name
    with tempfile.TemporaryDirectory() as tmp:
        images = read_images(args.images, Path(tmp))
    server = Server(package)
    try:
        r = asyncio.run(soak(server.port, server.proc.pid, f"/v1/models/{name}/predict", images, args.requests,
                             args.concurrency))
    finally:
        server.stop()
    growth = 100 * (r["end_rss"] - r["warm_rss"]) / r["warm_rss"]
    print(f"# imgclf soak: {args.requests} requests at concurrency {args.concurrency}, {name}\n")
    print("statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(r["statuses"].items())))
    print(f"after warm-up ({args.requests - r['measured']} requests): RSS {r['warm_rss']:.0f} MB; at the end: "
          f"{r['end_rss']:.0f} MB ({growth:+.1f}%); peak {r['peak_rss']:.0f} MB; "
          f"{r['measured'] / r['seconds']:.1f} requests/s after warm-up")
    return 0 if not any(s >= 500 for s in r["statuses"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
