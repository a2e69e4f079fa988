"""Helpers for the server tests: small model packages, image files in every mode, a live server."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx  # starlette.testclient uses httpx2 too
import numpy as np
from PIL import Image

from imgclf.preprocess import PreprocessSpec

CAT = set(range(281, 286))  # ImageNet's domestic cat classes
TINY_LABELS = ["a", "b", "c"]


def build_tiny_package(out_dir: Path, name: str = "tiny", labels: list[str] | None = None, seed: int = 0) -> Path:
    """A tiny conv net with random weights, exported through the real export path."""
    import torch

    from imgclf.package import Provenance
    from imgclf.publish import publish

    torch.manual_seed(seed)
    labels = labels or TINY_LABELS
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, len(labels)),
    )
    spec = PreprocessSpec(input_size=32, crop_pct=0.875)
    publish(net, out_dir, name=name, labels=labels, spec=spec, provenance=Provenance(architecture="tiny-test-net"))
    return out_dir


def jpeg_bytes(arr: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92, **save)
    return buf.getvalue()


def encode(img: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def image_variants(photo: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """The same photo as grayscale, RGBA, palette, CMYK, 16-bit PNG ... -> (bytes, content type)."""
    rgb = Image.fromarray(photo)
    grey16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    rgba = rgb.convert("RGBA")
    return {
        "rgb_jpeg": (encode(rgb, "JPEG", quality=92), "image/jpeg"),
        "grayscale_jpeg": (encode(rgb.convert("L"), "JPEG", quality=92), "image/jpeg"),
        "rgba_png": (encode(rgba, "PNG"), "image/png"),
        "palette_png": (encode(rgb.quantize(256), "PNG"), "image/png"),
        "palette_gif": (encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"), "image/gif"),
        "cmyk_jpeg": (encode(rgb.convert("CMYK"), "JPEG", quality=92), "image/jpeg"),
        "grey16_png": (encode(Image.fromarray(grey16), "PNG"), "image/png"),
        "webp": (encode(rgb, "WEBP", quality=90), "image/webp"),
        "bmp": (encode(rgb, "BMP"), "image/bmp"),
        "tiff": (encode(rgb, "TIFF"), "image/tiff"),
    }


def exif_rotated_jpeg(photo: np.ndarray) -> tuple[bytes, bytes]:
    """(upright JPEG, JPEG whose stored pixels are turned 90 degrees with EXIF Orientation 6).

    Orientation 6 means "rotate 90 degrees clockwise to display", so the stored pixels are the
    upright photo turned 90 degrees counter-clockwise, as a phone held sideways writes them.
    """
    upright = Image.fromarray(photo)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    opts = {"quality": 95, "subsampling": 0}
    return encode(upright, "JPEG", **opts), encode(stored, "JPEG", exif=exif.tobytes(), **opts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``imgclf serve`` in a child process on a free loopback port."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.final_output: str | None = None  # kept once stopped (the log file goes away)
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        if self.final_output is not None:
            return self.final_output
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.final_output is None:
            self.final_output = self.output()
        return self.final_output


@contextmanager
def live_server(*args: str, env: dict[str, str] | None = None, ready_timeout_s: float = 120.0) -> Iterator[LiveServer]:
    """Run ``imgclf serve ARGS --port <free>`` until the block ends."""
    port = free_port()
    cmd = [sys.executable, "-m", "imgclf", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--no-access-log", *args]
    child_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    # Output goes to a file: a pipe nobody reads would stall a chatty server.
    with tempfile.TemporaryDirectory(prefix="imgclf-serve-") as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env)
        server = LiveServer(proc, port, log)
        try:
            server.wait_ready(ready_timeout_s)
            yield server
        finally:
            server.stop()


def banner_port(text: str) -> int | None:
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", text)
    return int(m.group(1)) if m else None


def export_cached(model: str, home: Path) -> Path:
    """Export zoo ``model`` into ``home``'s package cache (what ``IMGCLF_HOME=home`` finds)."""
    import pytest

    from imgclf import zoo
    from imgclf.publish import export_zoo_model
    from imgclf.zoo.weights import availability

    try:
        entry = zoo.get(model)
    except KeyError:
        pytest.skip(f"zoo model {model} is not available in this checkout")
    if availability(entry) not in ("installed", "cached"):
        pytest.skip(f"weights for {model} are not installed")
    target = home / "packages" / model
    export_zoo_model(model, target, allow_download=False)
    return target


def wait_ready(client: httpx.Client) -> None:
    for _ in range(600):
        if client.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise TimeoutError("server never became ready")


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    """Check an error response's status and body; return ``{"code", "message"}``.

    Under /v2 the body is the Open Inference Protocol's ``{"error": message, "code": code}``.
    """
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json", r.headers
    body = r.json()
    if r.request.url.path.startswith("/v2"):
        assert set(body) == {"error", "code"} and isinstance(body["error"], str), body
        err = {"code": body["code"], "message": body["error"]}
    else:
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        err = body["error"]
    assert err["message"]
    if code is not None:
        assert err["code"] == code, body
    return err
