"""imgclf against LitServe serving the same ONNX package, same photos, same batching, same run.

    python benchmarks/litserve_compare.py [PACKAGE_DIR] [--images DIR] [--concurrency 16] [--rounds 3]

Both servers take multipart uploads (field ``file``) on loopback and answer the top 5 classes. The
LitServe side is a ``LitAPI`` built on imgclf's own pieces (``imgclf.pipeline.prepare`` for decode
and preprocessing on a thread pool, ``OnnxEngine`` for ONNX Runtime) with the same
``max_batch_size`` and batch timeout, so the difference is the serving machinery. The servers take
turns for ``--rounds`` rounds (the machine's background load drifts; turns share it fairly); the
report gives each round and the medians. Needs ``pip install litserve``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve import Server, percentile, read_images, run_load  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


try:
    import litserve as ls
except ImportError:  # the comparison needs it; main() says so
    ls = None

if ls is not None:

    class ImgclfAPI(ls.LitAPI):
        """imgclf's decode + preprocessing and ONNX Runtime engine behind LitServe (module level: it is pickled)."""

        def __init__(self, package: str, **kw: object) -> None:
            super().__init__(**kw)
            self.package = package

        def setup(self, device: str) -> None:
            from concurrent.futures import ThreadPoolExecutor

            import numpy as np

            from imgclf.engine import OnnxEngine
            from imgclf.package import load_package

            self.engine = OnnxEngine(load_package(self.package))
            self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
            spec = self.engine.spec
            self.engine.logits(np.zeros((1, spec.channels, spec.input_size, spec.input_size), np.float32))

        def decode_request(self, request):  # noqa: ANN001, ANN201 - LitServe's interface
            return request["file"].file.read()

        def batch(self, inputs):  # noqa: ANN001, ANN201
            return inputs

        def predict(self, x):  # noqa: ANN001, ANN201
            import numpy as np

            from imgclf.pipeline import prepare

            rows = list(self.pool.map(lambda b: prepare(b, self.engine.spec), x))
            return self.engine.probabilities(np.stack(rows))

        def unbatch(self, output):  # noqa: ANN001, ANN201
            return list(output)

        def encode_response(self, output):  # noqa: ANN001, ANN201
            from imgclf.engine import top_k

            row = top_k(output[None], self.engine.labels, 5)[0]
            return {"predictions": [[p.to_dict() for p in row]]}


def serve_litserve(package: str, port: int, max_batch_size: int, batch_timeout_s: float) -> None:
    """Runs in the LitServe server process."""
    api = ImgclfAPI(package, max_batch_size=max_batch_size, batch_timeout=batch_timeout_s)
    ls.LitServer(api, accelerator="cpu").run(port=port, host="127.0.0.1", generate_client_file=False)


class LitServeServer:
    def __init__(self, package: Path, max_batch_size: int, batch_timeout_s: float) -> None:
        from imgclf.commands.serve import _listen

        sock = _listen("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        sock.close()
        self.log = tempfile.NamedTemporaryFile(prefix="litserve-bench-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, __file__, "--litserve-child", str(package), str(self.port),
                                     str(max_batch_size), str(batch_timeout_s)],
                                    stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                sys.exit("LitServe exited:\n" + Path(self.log.name).read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        sys.exit("LitServe did not become ready")

    def stop(self) -> None:
        # LitServe runs its API servers and inference workers as child processes: end the whole group.
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                time.sleep(0.5)  # let the group's other processes go too
            except subprocess.TimeoutExpired:
                continue
        if os.path.exists(self.log.name):
            os.unlink(self.log.name)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--litserve-child":
        _, _, package, port, batch, timeout = sys.argv
        serve_litserve(package, int(port), int(batch), float(timeout))
        return 0
    if ls is None:
        sys.exit("LitServe is not installed: pip install litserve")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", nargs="?", default="efficientnet_lite0", help="package directory or zoo name")
    ap.add_argument("--images", help="folder of photos to send (default: the sample photos, as JPEG)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=400, help="measured requests per turn (default 400)")
    ap.add_argument("--seconds", type=float, default=15.0, help="time limit per turn (default 15)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    args = ap.parse_args()

    from imgclf.package import load_package
    from imgclf.resolve import package_dirs

    (package,) = package_dirs([args.package], None)
    name = load_package(package).name
    with tempfile.TemporaryDirectory() as tmp:
        images = read_images(args.images, Path(tmp))
    results: dict[str, list[tuple[float, float, int]]] = {"imgclf": [], "LitServe": []}
    imgclf = Server(package, "--max-batch-size", str(args.max_batch_size), "--max-delay-ms", str(args.max_delay_ms))
    try:
        lit = LitServeServer(package, args.max_batch_size, args.max_delay_ms / 1000)
    except SystemExit:
        imgclf.stop()
        raise
    try:
        for _ in range(args.rounds):
            for label, port, path in (("imgclf", imgclf.port, f"/v1/models/{name}/predict?top_k=5"),
                                      ("LitServe", lit.port, "/predict")):
                r = run_load(port, path, images, args.concurrency, requests=args.requests, seconds=args.seconds,
                             api="multipart")
                bad = sum(len(v) for s, v in r["statuses"].items() if s != 200)
                ips = len(r["latencies"]) / r["elapsed"] if r["elapsed"] else 0.0
                results[label].append((ips, 1000 * percentile(r["latencies"], 50), bad))
    finally:
        imgclf.stop()
        lit.stop()
    print(f"# imgclf vs LitServe: {name}, {len(images)} photos, concurrency {args.concurrency}, "
          f"max batch {args.max_batch_size}, batch timeout {args.max_delay_ms:g} ms, {os.cpu_count()} CPUs\n")
    print("| server | images/s per round | median images/s | median p50 ms | non-200 |")
    print("|---|---|---:|---:|---:|")
    for label, rows in results.items():
        print(f"| {label} | {', '.join(f'{r[0]:.1f}' for r in rows)} | {statistics.median(r[0] for r in rows):.1f} | "
              f"{statistics.median(r[1] for r in rows):.1f} | {sum(r[2] for r in rows)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
