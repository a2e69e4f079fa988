"""A seeded fuzzer over the decode path, plus every crash it ever found (tests/data/regressions/).

Real photos in every format we read are truncated, byte-flipped and given extreme header fields
(width, height, frame count). ``decode`` must return an ``(H, W, 3)`` uint8 array within the limits
or raise ``ImageDecodeError`` (a 415/422 in the server) -- never anything else. A new crash is saved
under tests/data/regressions/ before the test fails, so it is replayed forever after.
The long run is ``python benchmarks/fuzz_decode.py --cases 10000``.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest
from decode_fuzz import check, mutate, save_regression, seed_files

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

REGRESSIONS = Path(__file__).parent / "data" / "regressions"
# Small enough that a mutated header can never make one case expensive: the fuzzer hunts for crashes,
# the limits themselves are tested in test_images.py.
FUZZ_MAX_PIXELS = 1_000_000


@functools.cache
def seeds() -> dict[str, bytes]:
    from imgclf.samples import sample_photos

    photos = sample_photos()
    out = {}
    for photo_name in ("chelsea", "coffee"):
        if photo_name in photos:
            out.update({f"{photo_name}-{k}": v for k, v in seed_files(photos[photo_name]).items()})
    return out


def test_every_seed_decodes():
    for name, data in seeds().items():
        assert check(data) == "decoded", name


@settings(max_examples=2000, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(seeds())), rnd=st.integers(0, 2**32 - 1))
def test_mutated_files_decode_or_raise_a_typed_error(name, rnd):
    data = mutate(seeds()[name], random.Random(rnd))
    try:
        check(data, max_pixels=FUZZ_MAX_PIXELS)
    except BaseException:
        save_regression(data, str(REGRESSIONS))
        raise


def regression_files() -> list[Path]:
    return sorted(REGRESSIONS.glob("*.bin"))


@pytest.mark.parametrize("path", regression_files(), ids=lambda p: p.name)
def test_regression_files_decode_or_raise_a_typed_error(path):
    check(path.read_bytes())


def test_regression_folder_is_not_empty():
    """The crashes found before this fuzzer existed (truncated GIFs, malformed TIFFs, 8192x1 PNGs ...)."""
    assert len(regression_files()) >= 5
