"""Phone-size photos against a small one: HTTP latency and throughput, and decode+preprocess in-process.

    python benchmarks/large_photos.py PACKAGE_DIR [--source PHOTO] [--files SMALL 12MP 24MP]
                                      [--grain SIGMA] [--requests 100] [--seconds 10] [--stages]

``imgclf serve PACKAGE_DIR`` starts on a free local port; three JPEGs (made from ``--source``, default
the sample photo of a cat: 500x375, 12 MP 4000x3000 and 24 MP 6000x4000, quality 90; or your own
``--files``) are posted as raw ``image/jpeg`` bodies on keep-alive connections. An enlarged photo is
smoother than a camera's, so it compresses better and entropy-decodes faster; ``--grain 4`` adds
sensor-like noise to the enlarged ones (a 12 MP file then weighs ~2.7 MB, as a phone's does):
1. concurrency 1: p50 and mean latency of each size, and the ratio to the small photo
   (targets: 12 MP <= 2x, 24 MP <= 2.5x);
2. concurrency 8: images/s of each size, and the ratio to the small photo (target: 12 MP >= 0.5x);
3. in-process, no HTTP: decode + preprocess of each file from a full-size decode and through the
   one pipeline (scaled JPEG decode), and a bare decode at 1/8 scale: the floor of any JPEG decode,
   since the entropy decoding reads every coefficient whatever the scale; medians of ``--repeat`` runs.
The server is stopped at the end. Prints a Markdown report.

``--stages`` measures in-process only, with no server: each stage of the pipeline (scaled decode,
the exact resize against the crop-window resize of the reduced decode, normalisation) and the bare
1/8-scale decode, as min / median ms of ``--repeat`` runs (the min is the figure least moved by
other work on the machine), plus the model's inference on one image.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))
from serve import Server  # noqa: E402 - the serving benchmark's server

SIZES = {"500x375": (500, 375), "12 MP": (4000, 3000), "24 MP": (6000, 4000)}


def make_files(source: str | None, grain: float) -> dict[str, bytes]:
    from imgclf.images import decode_file
    from imgclf.samples import reference_photo

    photo = Image.fromarray(decode_file(source) if source else reference_photo())
    rng = np.random.default_rng(0)
    out = {}
    for name, size in SIZES.items():
        big = photo.resize(size, Image.Resampling.BICUBIC)
        if grain and size[0] * size[1] > 1_000_000:  # the phone photos: luminance grain, weaker colour noise
            px = np.asarray(big, dtype=np.float32)
            px += rng.standard_normal(px.shape[:2], dtype=np.float32)[..., None] * np.float32(grain)
            px += rng.standard_normal(px.shape, dtype=np.float32) * np.float32(grain / 2)
            big = Image.fromarray(np.clip(px + 0.5, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        big.save(buf, format="JPEG", quality=90)
        out[name] = buf.getvalue()
    return out


async def _load(port: int, path: str, body: bytes, concurrency: int, requests: int, seconds: float) -> dict:
    """Keep-alive clients posting ``body``; returns 200-latencies, other statuses and the elapsed time."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    latencies: list[float] = []
    errors: dict[int, int] = {}
    warmup = 2 * concurrency
    sent = 0
    started: list[float] = []
    stop_at = time.perf_counter() + seconds + 60

    async def client() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while sent < warmup + requests and time.perf_counter() < stop_at:
                sent += 1
                measured = sent > warmup
                if measured and not started:
                    started.append(time.perf_counter())
                t0 = time.perf_counter()
                writer.write(head + body)
                resp = await reader.readuntil(b"\r\n\r\n")
                status = int(resp.split(b" ", 2)[1])
                m = re.search(rb"(?i)content-length: *(\d+)", resp)
                await reader.readexactly(int(m.group(1)) if m else 0)
                if measured:
                    if status == 200:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors[status] = errors.get(status, 0) + 1
                if started and time.perf_counter() - started[0] > seconds:
                    return
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started[0] if started else float("nan")
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def eighth_scale_decode(data: bytes) -> None:
    """Pillow's bare JPEG decode at 1/8 scale (DCT scaling, nothing else): the floor of any decode."""
    img = Image.open(io.BytesIO(data))
    img.draft(None, (img.width // 8, img.height // 8))
    img.load()


def in_process(package: str, files: dict[str, bytes], repeat: int) -> dict[str, tuple[float, float, float]]:
    """name -> (full decode + preprocess ms, pipeline ms, bare 1/8-scale decode ms), medians."""
    from imgclf.images import decode
    from imgclf.package import load_package
    from imgclf.pipeline import prepare
    from imgclf.preprocess import preprocess

    spec = load_package(package).spec
    out = {}
    for name, data in files.items():
        full, fast, floor = [], [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            preprocess(decode(data), spec)
            t1 = time.perf_counter()
            prepare(data, spec)
            t2 = time.perf_counter()
            eighth_scale_decode(data)
            floor.append(time.perf_counter() - t2)
            fast.append(t2 - t1)
            full.append(t1 - t0)
        out[name] = (statistics.median(full) * 1000, statistics.median(fast) * 1000, statistics.median(floor) * 1000)
    return out


def stages(package: str, files: dict[str, bytes], repeat: int) -> None:
    """Min / median ms of each pipeline stage, in-process."""
    from imgclf.engine import OnnxEngine
    from imgclf.images import decode_scaled
    from imgclf.package import load_package
    from imgclf.pipeline import prepare
    from imgclf.preprocess import decode_min_side, normalize, resize_and_crop

    pkg = load_package(package)
    spec, engine = pkg.spec, OnnxEngine(pkg)
    x = prepare(files["500x375"], spec)[None]
    infer = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        engine.probabilities(x)
        infer.append(time.perf_counter() - t0)

    def ms(v: list[float]) -> str:
        return f"{min(v) * 1000:.1f} / {statistics.median(v) * 1000:.1f}"

    print(f"## Pipeline stages in-process, min / median ms of {repeat}: inference of one image {ms(infer)}\n")
    print("| photo | decoded to | decode | exact resize | crop-window resize | normalise | 1/8-scale decode |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, data in files.items():
        t: dict[str, list[float]] = {k: [] for k in ("decode", "exact", "window", "norm", "floor")}
        for _ in range(repeat):
            t0 = time.perf_counter()
            img = decode_scaled(data, min_side=decode_min_side(spec))
            t1 = time.perf_counter()
            resize_and_crop(img.pixels, spec)
            t2 = time.perf_counter()
            px = resize_and_crop(img.pixels, spec, exact=False)
            t3 = time.perf_counter()
            normalize(px, spec)
            t4 = time.perf_counter()
            eighth_scale_decode(data)
            t5 = time.perf_counter()
            for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                t[key].append(dt)
        h, w = img.pixels.shape[:2]
        print(f"| {name} | {w}x{h} | {ms(t['decode'])} | {ms(t['exact'])} | {ms(t['window'])} | {ms(t['norm'])} | "
              f"{ms(t['floor'])} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", help="model package directory (model.onnx + model.json)")
    ap.add_argument("--source", metavar="PHOTO", help="photo the three sizes are made from (default: a sample photo)")
    ap.add_argument("--files", nargs=3, metavar=("SMALL", "MP12", "MP24"), help="use these JPEG files as they are")
    ap.add_argument("--grain", type=float, default=0.0, metavar="SIGMA",
                    help="sensor-like noise (grey levels) added to the enlarged photos (default 0; 4 ~ a phone)")
    ap.add_argument("--requests", type=int, default=100, help="measured requests per size and level (default 100)")
    ap.add_argument("--seconds", type=float, default=10.0, help="time limit per size and level (default 10)")
    ap.add_argument("--repeat", type=int, default=15, help="in-process repetitions (default 15)")
    ap.add_argument("--stages", action="store_true", help="only time each pipeline stage in-process (no server)")
    args = ap.parse_args()

    if args.files:
        files = {name: Path(f).read_bytes() for name, f in zip(SIZES, args.files, strict=True)}
    else:
        files = make_files(args.source, args.grain)
    if args.stages:
        stages(args.package, files, args.repeat)
        return 0
    server = Server(args.package)
    try:
        path = f"/v1/models/{server.default_model()}/predict?top_k=5"
        c1 = {n: asyncio.run(_load(server.port, path, d, 1, args.requests, args.seconds)) for n, d in files.items()}
        c8 = {n: asyncio.run(_load(server.port, path, d, 8, 4 * args.requests, args.seconds)) for n, d in files.items()}
    finally:
        server.stop()
    local = in_process(args.package, files, args.repeat)

    small = "500x375"
    p50 = {n: float(np.median(r["latencies"])) * 1000 if r["latencies"] else float("nan") for n, r in c1.items()}
    tput = {n: len(r["latencies"]) / r["elapsed"] for n, r in c8.items()}
    print(f"## Large photos: {Path(args.package).name}, {os.cpu_count()} CPUs\n")
    print("| photo | bytes | c=1 p50 ms | c=1 mean ms | x small | c=8 img/s | x small | errors | "
          "in-process full ms | in-process pipeline ms | 1/8-scale decode ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for n, data in files.items():
        lat = c1[n]["latencies"]
        errs = {**c1[n]["errors"], **c8[n]["errors"]}
        print(f"| {n} | {len(data):,} | {p50[n]:.1f} | {statistics.fmean(lat) * 1000 if lat else float('nan'):.1f} | "
              f"{p50[n] / p50[small]:.2f} | {tput[n]:.1f} | {tput[n] / tput[small]:.2f} | {errs or '-'} | "
              f"{local[n][0]:.1f} | {local[n][1]:.1f} | {local[n][2]:.1f} |")
    print(f"\ntargets: 12 MP c=1 <= 2x small ({p50['12 MP'] / p50[small]:.2f}x), 24 MP <= 2.5x "
          f"({p50['24 MP'] / p50[small]:.2f}x), 12 MP c=8 >= 0.5x small ({tput['12 MP'] / tput[small]:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
