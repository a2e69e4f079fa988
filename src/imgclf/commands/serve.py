from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.errors import UserError

if TYPE_CHECKING:
    from imgclf.server.config import FeedbackSettings

NAME = "serve"
HELP = "serve models over HTTP: REST API, Open Inference Protocol (KServe V2), web page, metrics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", action="append", default=[], metavar="NAME|PACKAGE_DIR",
                   help="zoo model name, package directory or Keras model file (.h5/.keras); repeat for several (the first is the default "
                        "model). Default: every package in --model-dir, else efficientnet_lite0")
    p.add_argument("--model-dir", metavar="DIR",
                   help="folder of model packages that the management API can load and unload by name")
    p.add_argument("--store-poll-s", type=float, default=2.0, metavar="S",
                   help="seconds between looks at --model-dir for version changes another server made "
                        "(versions.json; default 2, 0: never)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-batch-size", type=int, default=16, help="images per ONNX Runtime call (default 16)")
    p.add_argument("--max-delay-ms", type=float, default=5.0,
                   help="longest a batch waits for more images already on their way (default 5)")
    p.add_argument("--queue-size", type=int, default=128,
                   help="images waiting per model before requests get 429 (default 128)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="per-request timeout in seconds: 408 for a body, 504 for inference (default 30)")
    p.add_argument("--workers-threads", "--decode-threads", dest="decode_threads", type=int, default=None,
                   metavar="N", help="threads that decode and preprocess images (default: the CPU count)")
    p.add_argument("--ort-threads", "--engine-threads", dest="ort_threads", type=int, default=None, metavar="N",
                   help="engine intra-op threads per model, ONNX Runtime or OpenVINO (default: the CPU count)")
    p.add_argument("--engine", choices=["auto", "onnxruntime", "openvino"], default="onnxruntime",
                   help="runtime of every model: onnxruntime (default), openvino (the openvino extra) or auto "
                        "(per model, the fastest that passed its accuracy gate)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"], default=None,
                   help="fp32, bf16 (OpenVINO on CPUs with bf16), int8 (each package's int8/ variant from "
                        "'imgclf quantize') or auto (default: auto with --engine auto, else fp32)")
    p.add_argument("--api-key", default=os.environ.get("IMGCLF_API_KEY"),
                   help="key the management API (load/unload models) requires (default: $IMGCLF_API_KEY); without one, management is off (403)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body in MB (default 20)")
    p.add_argument("--max-images", type=int, default=64, help="most images in one request (default 64)")
    p.add_argument("--shutdown-delay", type=float, default=0.0, metavar="SECONDS",
                   help="on SIGTERM, answer /v2/health/ready with 503 and keep serving this long before the port "
                        "closes, so a load balancer stops sending requests first (default 0)")
    p.add_argument("--graceful-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="once the port is closed, longest wait for requests in flight to finish (default 10)")
    g = p.add_argument_group("feedback", "corrections from users: POST /v1/models/{name}/feedback and the web "
                                         "page's right/wrong buttons (review them with imgclf feedback)")
    g.add_argument("--feedback", action="store_true",
                   help="take corrections (stored as pending; listing and review need --api-key)")
    g.add_argument("--db", metavar="URL", default=os.environ.get("IMGCLF_FEEDBACK_DB"),
                   help="feedback database (implies --feedback; default: $IMGCLF_FEEDBACK_DB, else SQLite "
                        "feedback.db in the store folder); PostgreSQL: postgresql+psycopg://USER:PASSWORD@HOST/DB")
    g.add_argument("--feedback-store", metavar="DIR",
                   help="feedback store folder: images (and the SQLite database); implies --feedback. "
                        "Default: $IMGCLF_HOME/feedback, else ~/.local/share/imgclf/feedback")
    g.add_argument("--feedback-quota-mb", type=float, default=1024.0,
                   help="most image megabytes the store holds; more is answered 507 (default 1024)")
    g.add_argument("--feedback-max-records", type=int, default=100_000,
                   help="most records the store holds; more is answered 507 (default 100000)")
    g.add_argument("--feedback-rate", type=float, default=60.0, metavar="PER_MINUTE",
                   help="corrections per minute one client address may send; more is answered 429 (default 60)")
    g.add_argument("--feedback-burst", type=int, default=20, help="corrections one client may send at once (default 20)")
    g.add_argument("--keep-uploads-mb", type=float, default=64.0,
                   help="recent uploads kept in memory so a correction can cite its prediction_id (default 64; 0: off)")
    g.add_argument("--log-predictions", action="store_true",
                   help="also log every prediction (model version, top-k, timings) in the feedback database")
    p.add_argument("--forwarded-allow-ips", default=None, metavar="ADDRS",
                   help="comma-separated proxy addresses (or '*') whose X-Forwarded-For names the client, for the "
                        "per-client limits behind a load balancer (default: $FORWARDED_ALLOW_IPS, else 127.0.0.1,::1)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")


def _feedback_settings(args: argparse.Namespace) -> FeedbackSettings | None:
    from imgclf import feedback
    from imgclf.server.config import FeedbackSettings

    if not (args.feedback or args.db or args.feedback_store or args.log_predictions):
        return None
    if not feedback.available():
        raise UserError(f"--feedback needs SQLAlchemy and Alembic: {feedback.EXTRA_HINT}")
    try:
        settings = FeedbackSettings(
            db_url=args.db or None, store_dir=args.feedback_store,
            max_bytes=int(args.feedback_quota_mb * 1024 * 1024), max_records=args.feedback_max_records,
            rate_per_minute=args.feedback_rate, burst=args.feedback_burst,
            keep_uploads_bytes=int(args.keep_uploads_mb * 1024 * 1024), log_predictions=args.log_predictions)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    # Open the store now: a bad URL or a store from a later imgclf stops here with a clear message.
    # An unreachable database does not: the server starts and answers feedback 503 until it is back.
    from imgclf.feedback.store import FeedbackStore

    try:
        FeedbackStore.open(settings.db_url, Path(settings.store_dir) if settings.store_dir else None).close()
    except feedback.StoreUnavailableError as exc:
        print(f"imgclf: warning: {exc}; feedback answers 503 until it is reachable", file=sys.stderr)
    return settings


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)-9s %(message)s"))
    logger = logging.getLogger("imgclf")
    logger.addHandler(handler)
    logger.setLevel(level.upper())


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from imgclf.engines.choice import precheck
    from imgclf.model_store import resolve_package
    from imgclf.package import load_package
    from imgclf.resolve import package_dirs
    from imgclf.server import ServerConfig, create_app
    from imgclf.server.graceful import GracefulServer, exit_quietly_on_sigterm
    from imgclf.server.state import AppState

    if args.shutdown_delay < 0 or args.graceful_timeout < 0:
        raise UserError("--shutdown-delay and --graceful-timeout must not be negative")
    feedback = _feedback_settings(args)
    paths = package_dirs(args.model, args.model_dir)
    precision = args.precision or ("auto" if args.engine == "auto" else "fp32")
    for path in paths:
        # A broken package, or an engine/precision it cannot run here, stops here before listening.
        precheck(load_package(resolve_package(path)), args.engine, precision)
    try:
        config = ServerConfig(
            models=tuple(str(p) for p in paths),
            model_dir=args.model_dir,
            store_poll_s=args.store_poll_s,
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
            queue_size=args.queue_size,
            request_timeout_s=args.timeout,
            ort_threads=args.ort_threads,
            engine=args.engine,
            precision=args.precision,
            api_key=args.api_key or None,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024),
            max_images_per_request=args.max_images,
            feedback=feedback,
            **({"decode_threads": args.decode_threads} if args.decode_threads else {}),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _setup_logging(args.log_level)
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(p.name for p in paths) or "none (load them through the management API)"
    print(f"imgclf serving {names} at http://{shown}:{port}/  (API docs at /docs)", flush=True)
    app = create_app(config)
    state: AppState = app.state.imgclf
    server = GracefulServer(uvicorn.Config(
        app, log_level=args.log_level, access_log=not args.no_access_log,
        timeout_graceful_shutdown=args.graceful_timeout, forwarded_allow_ips=args.forwarded_allow_ips,
    ), state.registry, shutdown_delay_s=args.shutdown_delay)
    exit_quietly_on_sigterm()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: a normal stop
        pass
    return 0
