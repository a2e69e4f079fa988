"""Long fuzz run of the decode path: every case decodes or raises ImageDecodeError, at bounded cost.

    python benchmarks/fuzz_decode.py --cases 10000 [--seed 0] [--images DIR] [--save-dir tests/data/regressions]

Seeds are real photos (the sample photos, or the images under ``--images``) encoded as JPEG
(baseline, progressive), PNG, GIF (animated), WebP (still, animated), TIFF, BMP and HEIC; each case
truncates, byte-flips or sets a header field (width, height, frames) to an extreme value, then runs
``imgclf.images.decode`` at the default limits. Reports the outcome counts, the peak RSS of the
process (the memory bound of docs/images.md applies), the slowest cases, and saves every crash (an
exception other than ImageDecodeError) into ``--save-dir`` so the test suite replays it forever.
Exits 1 if any case crashed.
"""

from __future__ import annotations

import argparse
import collections
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from decode_fuzz import check, mutate, save_regression, seed_files  # noqa: E402


def photos(folder: str | None) -> dict[str, object]:
    if folder is None:
        from imgclf.samples import sample_photos

        return dict(sample_photos())
    from imgclf.images import decode_file, image_files

    files = image_files(folder)
    if not files:
        sys.exit(f"no images under {folder}")
    return {f.stem: decode_file(f) for f in files[:8]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", metavar="DIR", help="photos to make the seed files from (default: the sample photos)")
    ap.add_argument("--side", type=int, default=256, help="width of the seed files in pixels")
    ap.add_argument("--save-dir", default=str(Path(__file__).resolve().parent.parent / "tests/data/regressions"))
    args = ap.parse_args()

    seeds: dict[str, bytes] = {}
    for name, arr in photos(args.images).items():
        seeds.update({f"{name}-{k}": v for k, v in seed_files(arr, side=args.side).items()})  # type: ignore[arg-type]
    names = sorted(seeds)
    rss_start = peak_rss_mb()
    outcomes: collections.Counter[str] = collections.Counter()
    crashes: list[str] = []
    slowest: list[tuple[float, str, int]] = []
    rng = random.Random(args.seed)
    t_start = time.perf_counter()
    for i in range(args.cases):
        name = rng.choice(names)
        data = mutate(seeds[name], random.Random(rng.getrandbits(64)))
        t0 = time.perf_counter()
        try:
            outcomes[check(data)] += 1
        except Exception as exc:  # noqa: BLE001 - a crash is what we are looking for
            outcomes[f"CRASH {type(exc).__name__}"] += 1
            crashes.append(f"{save_regression(data, args.save_dir)}: {name}: {type(exc).__name__}: {exc}")
        dt = time.perf_counter() - t0
        slowest = sorted([*slowest, (dt, name, i)], reverse=True)[:5]
        if (i + 1) % 1000 == 0:
            print(f"  {i + 1}/{args.cases} cases, {time.perf_counter() - t_start:.0f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_start

    print(f"## Decode fuzz: {args.cases} cases, seed {args.seed}, {len(seeds)} seed files, {total:.1f} s\n")
    print("| outcome | cases |\n|---|---:|")
    for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v} |")
    print(f"\npeak RSS: {peak_rss_mb():.0f} MB (after loading the seeds: {rss_start:.0f} MB)")
    print("slowest cases: " + ", ".join(f"{dt * 1000:.0f} ms ({name} #{i})" for dt, name, i in slowest))
    print(f"mean: {total / max(args.cases, 1) * 1000:.2f} ms a case")
    if crashes:
        print(f"\n{len(crashes)} CRASHES, saved:")
        print("\n".join(crashes))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
