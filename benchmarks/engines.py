"""Engines and precisions side by side: ONNX Runtime and OpenVINO at fp32, bf16 and int8.

    python benchmarks/engines.py --work DIR [--models efficientnet_lite0,resnet50,vgg16,PACKAGE_DIR]
                                 [--images DIR] [--rounds 2] [--no-server]

1. Packages in DIR (made once): EfficientNet-Lite0 with its real weights; ResNet50 and VGG16 with
   random weights (only their speed is measured). Each gets an int8 variant in PACKAGE/int8 by
   ``imgclf quantize`` (its default NNCF backend, calibrated on the photos shipped with imgclf).
   A package folder given in ``--models`` (trained or fine-tuned) is measured as it is, its int8
   variant made by ``imgclf quantize``'s defaults (its own splits) when PACKAGE/int8 is missing.
2. For every model, every variant this CPU runs (ORT fp32, OV fp32, OV bf16, ORT int8, OV int8):
   batch-16 throughput and batch-1 latency on the engine alone (no decode), all variants in turn,
   ``--rounds`` times, so background load drifts over all of them alike; ratios are against ORT
   fp32 of the same round. For Lite0 each variant's top-1 is compared with ORT fp32 on the real
   sample photos (the accuracy gate).
3. The server end to end for Lite0: ``imgclf serve --engine E --precision P`` hit at concurrency
   16 with small photos (the sample photos scaled to 320 px, or ``--images``), next to the decode
   + preprocess ceiling (the same photos through the serving path's decode on as many threads as
   CPUs, no model): where the server's throughput meets that ceiling, decode is the limit.

Prints a Markdown report (CPU model and the flags that matter first).
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))

VARIANTS = (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("onnxruntime", "int8"),
            ("openvino", "int8"))
# Per model: (batch-16 calls per measurement, batch-1 calls); VGG16 is big, keep its runs short.
ITERS = {"efficientnet_lite0": (8, 20), "resnet50": (4, 10), "vgg16": (2, 4)}


def cpu_line() -> tuple[str, list[str]]:
    from imgclf.engines.cpu import cpu_caps

    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), model)
    except (OSError, subprocess.CalledProcessError):
        pass
    return model, cpu_caps().relevant()


# -- packages --------------------------------------------------------------------------------


def make_package(name: str, work: Path) -> Path:
    """``work/name``: Lite0 with its weights, anything else with random weights (made once)."""
    from imgclf.package import is_package_dir

    out = work / name
    if is_package_dir(out):
        return out
    if name == "efficientnet_lite0":
        from imgclf.publish import export_zoo_model

        export_zoo_model(name, out, allow_download=False)
        return out
    import torch

    from imgclf import zoo
    from imgclf.package import Provenance
    from imgclf.publish import publish
    from imgclf.zoo.labels import get_labels
    from imgclf.zoo.loading import preprocess_for

    entry = zoo.get(name)
    torch.manual_seed(0)
    net = zoo.build(name, pretrained=False)
    publish(net, out, name=name, labels=get_labels(entry.labels), spec=preprocess_for(entry),
            provenance=Provenance(architecture=name, weights="random (speed benchmark only)"))
    return out


def make_int8(package_dir: Path) -> tuple[Path, str]:
    """``package_dir/int8`` by ``imgclf quantize``'s defaults (NNCF; a zoo model calibrated on the
    photos shipped with imgclf and gated on the held-out ones, a trained package on its own splits),
    and how it was made."""
    from imgclf.package import is_package_dir, load_package
    from imgclf.quantize.build import default_max_float_layers, quantize_package
    from imgclf.quantize.fixes import Fixes
    from imgclf.quantize.sources import default_calibration, default_gate

    out = package_dir / "int8"
    parent = load_package(package_dir)
    if not is_package_dir(out):
        labelled, photos = default_gate(parent)
        calibration = default_calibration(parent)
        quantize_package(parent, calibration, labelled=labelled, photos=photos,
                         fixes=Fixes(max_float_layers=default_max_float_layers(calibration)))
    calibration = load_package(out).meta.provenance.extra.get("calibration") or {}
    return out, f"imgclf quantize (NNCF; calibrated on {calibration.get('count', '?')} images: {calibration.get('data', '?')})"


# -- engines alone ---------------------------------------------------------------------------


def engine_for(package_dir: Path, engine: str, precision: str):
    from imgclf.engines.choice import EngineChoice, build
    from imgclf.package import load_package

    run = load_package(package_dir / "int8" if precision == "int8" else package_dir)
    return build(EngineChoice(engine, precision, "benchmark", run))


def measure(eng, batch16: np.ndarray, calls16: int, calls1: int) -> tuple[float, float]:
    """(batch-16 images/s, batch-1 median ms), after one warm-up call of each shape."""
    eng.logits(batch16)
    t0 = time.perf_counter()
    for _ in range(calls16):
        eng.logits(batch16)
    ips = calls16 * len(batch16) / (time.perf_counter() - t0)
    one = batch16[:1]
    eng.logits(one)
    times = []
    for _ in range(calls1):
        t = time.perf_counter()
        eng.logits(one)
        times.append(time.perf_counter() - t)
    return ips, 1000 * statistics.median(times)


def top1_on_photos(eng, photos: np.ndarray) -> list[int]:
    return eng.logits(photos).argmax(1).tolist()


def bench_model(name: str, package_dir: Path, variants: list[tuple[str, str]], rounds: int) -> dict:
    from imgclf.package import load_package
    from imgclf.preprocess import preprocess
    from imgclf.samples import sample_photos

    spec = load_package(package_dir).spec
    photos = np.stack([preprocess(a, spec) for a in sample_photos().values()])
    rng = np.random.default_rng(0)
    batch16 = np.concatenate([photos, rng.standard_normal((16 - len(photos), *photos.shape[1:]), np.float32)])
    calls16, calls1 = ITERS.get(name, (8, 20))
    results: dict[tuple[str, str], dict] = {v: {"ips": [], "ms": []} for v in variants}
    for _ in range(rounds):
        for v in variants:
            eng = engine_for(package_dir, *v)
            ips, ms = measure(eng, batch16, calls16, calls1)
            results[v]["ips"].append(ips)
            results[v]["ms"].append(ms)
            if "top1" not in results[v]:
                results[v]["top1"] = top1_on_photos(eng, photos)
            del eng
            gc.collect()
    return results


def recorded_gates(package_dir: Path, variants: list[tuple[str, str]], measure_bf16: bool) -> dict:
    """The gate verdict of each int8/bf16 variant as recorded in the packages (bf16 measured here if
    ``measure_bf16`` and not yet recorded, as ``auto`` would on first use)."""
    from imgclf.engines.choice import measure_and_record
    from imgclf.package import load_package

    out = {}
    fp32 = load_package(package_dir)
    for engine, precision in variants:
        record = None
        if precision == "int8":
            record = load_package(package_dir / "int8").meta.gate_for(engine, precision)
        elif precision == "bf16":
            record = fp32.meta.gate_for(engine, precision)
            if record is None and measure_bf16:
                record = measure_and_record(fp32, engine, precision)
        if record is not None:
            out[(engine, precision)] = (f"passed ({record.images} images)" if record.passed
                                        else f"FAILED: {record.reason} ({record.images} images)")
    return out


# -- the server ------------------------------------------------------------------------------


def small_photos(folder: str | None, size: int = 320) -> list[bytes]:
    from PIL import Image

    from imgclf.samples import sample_photos

    if folder:
        from imgclf.images import image_files

        return [p.read_bytes() for p in image_files(folder)]
    out = []
    for arr in sample_photos().values():
        img = Image.fromarray(arr)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode_ceiling(images: list[bytes], spec, seconds: float = 4.0) -> float:
    """Images/s through decode + preprocess alone, on as many threads as CPUs (the server's default)."""
    from imgclf.pipeline import prepare

    done, t0 = 0, time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        while time.perf_counter() - t0 < seconds:
            list(pool.map(lambda b: prepare(b, spec), images * 4))
            done += 4 * len(images)
    return done / (time.perf_counter() - t0)


def bench_server(package_dir: Path, variants: list[tuple[str, str]], images: list[bytes], requests: int,
                 seconds: float) -> dict[tuple[str, str], float]:
    from serve import Server, run_load

    out = {}
    for engine, precision in variants:
        server = Server(package_dir, "--engine", engine, "--precision", precision)
        try:
            path = f"/v1/models/{server.default_model()}/predict?top_k=5"
            r = run_load(server.port, path, images, 16, requests=requests, seconds=seconds, api="multipart")
            out[(engine, precision)] = len(r["latencies"]) / r["elapsed"] if r["elapsed"] else 0.0
        finally:
            server.stop()
    return out


# -- report ----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="folder for the packages (made once, reused)")
    ap.add_argument("--models", default="efficientnet_lite0,resnet50,vgg16")
    ap.add_argument("--images", help="small photos for the server run (default: the sample photos at 320 px)")
    ap.add_argument("--rounds", type=int, default=2, help="times every variant is measured (default 2)")
    ap.add_argument("--no-server", action="store_true", help="skip the server run")
    ap.add_argument("--requests", type=int, default=600, help="measured requests per server run")
    ap.add_argument("--seconds", type=float, default=15.0, help="time limit per server run")
    args = ap.parse_args()

    import onnxruntime

    from imgclf.engines.choice import openvino_installed
    from imgclf.engines.cpu import cpu_caps

    caps = cpu_caps()
    variants = [v for v in VARIANTS if (v[0] != "openvino" or openvino_installed()) and (v[1] != "bf16" or caps.bf16)]
    model, flags = cpu_line()
    ov_version = "not installed"
    if openvino_installed():
        import openvino

        ov_version = openvino.__version__.split("-")[0]
    load = os.getloadavg()
    print("## Engines and precisions\n")
    print(f"`python benchmarks/engines.py --work DIR --rounds {args.rounds}`, {time.strftime('%Y-%m-%d')}: "
          f"{model}, {os.cpu_count()} CPUs, flags: {', '.join(flags) or 'none of note'}; "
          f"ONNX Runtime {onnxruntime.__version__}, OpenVINO {ov_version}; load average at start "
          f"{load[0]:.1f}/{load[1]:.1f}.\n", flush=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lite0_dir = None
    from imgclf.package import is_package_dir, load_package

    for entry in [m.strip() for m in args.models.split(",") if m.strip()]:
        # A zoo name (made in --work) or the path of a trained or fine-tuned package.
        own = is_package_dir(Path(entry))
        package_dir = Path(entry) if own else make_package(entry, work)
        name = load_package(package_dir).name if own else entry
        if name == "efficientnet_lite0":
            lite0_dir = package_dir
        how = make_int8(package_dir)[1] if any(p == "int8" for _, p in variants) else "-"
        res = bench_model(name, package_dir, variants, args.rounds)
        real = own or name == "efficientnet_lite0"
        weights = ("trained package " + str(package_dir)) if own else "real weights" if real else "random weights"
        print(f"### {name} ({weights}); int8 by {how}\n")
        gates = recorded_gates(package_dir, variants, measure_bf16=real)
        print("| engine | precision | batch-16 images/s (each round) | vs ORT fp32 | batch-1 ms (median) |"
              " top-1 on 5 photos = fp32 | recorded accuracy gate |")
        print("|---|---|---:|---:|---:|---|---|")
        base = res[("onnxruntime", "fp32")]
        for v in variants:
            r = res[v]
            ratios = [a / b for a, b in zip(r["ips"], base["ips"], strict=True)]
            same = "yes" if r["top1"] == base["top1"] else f"no ({r['top1']} vs {base['top1']})"
            if not real:
                same += " (random weights: not meaningful)"
            print(f"| {v[0]} | {v[1]} | {' / '.join(f'{x:.1f}' for x in r['ips'])} | "
                  f"{' / '.join(f'{x:.2f}x' for x in ratios)} | {statistics.median(r['ms']):.1f} | {same} | "
                  f"{gates.get(v, '-')} |")
        print(flush=True)
    if lite0_dir is not None and not args.no_server:
        from imgclf.package import load_package

        images = small_photos(args.images)
        spec = load_package(lite0_dir).spec
        before = decode_ceiling(images, spec)
        served = bench_server(lite0_dir, variants, images, args.requests, args.seconds)
        after = decode_ceiling(images, spec)
        ceiling = (before + after) / 2
        sizes = sorted(len(b) // 1024 for b in images)
        print(f"### The server end to end: efficientnet_lite0, concurrency 16, {len(images)} photos "
              f"({sizes[0]}-{sizes[-1]} KB JPEG), multipart\n")
        print(f"Decode + preprocess alone (no model, {os.cpu_count()} threads): {ceiling:.0f} images/s "
              f"(before {before:.0f}, after {after:.0f}).\n")
        print("| engine | precision | server images/s | vs ORT fp32 | share of the decode ceiling |")
        print("|---|---|---:|---:|---:|")
        base_s = served[("onnxruntime", "fp32")]
        for v in variants:
            print(f"| {v[0]} | {v[1]} | {served[v]:.1f} | {served[v] / base_s:.2f}x | {100 * served[v] / ceiling:.0f}% |")
        print(flush=True)
    print(f"Load average at the end: {'/'.join(f'{x:.1f}' for x in os.getloadavg()[:2])}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
