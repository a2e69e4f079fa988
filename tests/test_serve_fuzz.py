"""A short seeded run of the HTTP fuzzer (benchmarks/fuzz_http.py): mutated photos in every request
form, hostile JSON and bad V2 tensors; every answer is a JSON result or error, never a 5xx, a reset
or a hang, and the server logs no traceback. The long run is the documented benchmark command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a server start and 200 requests: about 10-20 s on 2 busy cores

FUZZER = Path(__file__).parents[1] / "benchmarks" / "fuzz_http.py"


def test_short_seeded_http_fuzz_finds_no_server_error(serve_model_dir):
    out = subprocess.run([sys.executable, str(FUZZER), str(serve_model_dir / "tiny"), "--requests", "200",
                          "--seed", "7"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "failures (5xx, resets, hangs, non-JSON answers): 0" in out.stdout
    assert "200: " in out.stdout and "400: " in out.stdout  # it reached the model and the checks
