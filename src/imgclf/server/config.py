"""Server settings: one frozen object built by ``imgclf serve`` (or a test) and read everywhere."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from imgclf.engine import default_threads
from imgclf.engines.choice import ENGINE_ARGS, PRECISION_ARGS

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class FeedbackSettings:
    """Where the server keeps what users tell it, and how much one client may send."""

    db_url: str | None = None  # None: SQLite feedback.db in store_dir
    store_dir: str | None = None  # None: the default store folder under the imgclf home
    max_bytes: int | None = 1024 * 1024 * 1024
    max_records: int | None = 100_000
    rate_per_minute: float = 60.0  # corrections per client address
    burst: int = 20
    # Uploads kept in memory so a correction can cite a prediction's id instead of re-sending the image.
    keep_uploads_bytes: int = 64 * 1024 * 1024
    log_predictions: bool = False

    def __post_init__(self) -> None:
        if self.rate_per_minute <= 0 or self.burst < 1:
            raise ValueError("the feedback rate limit needs a positive rate and a burst of at least 1")
        if self.keep_uploads_bytes < 0:
            raise ValueError("keep_uploads_bytes must not be negative")
        for limit in (self.max_bytes, self.max_records):
            if limit is not None and limit < 1:
                raise ValueError("the feedback quota must be positive")


@dataclass(frozen=True)
class ServerConfig:
    """How the server loads, batches and guards its models.

    ``models`` are package directories loaded at start, in order; the first is the default model
    (``POST /predict``) unless ``default_model`` names another. ``model_dir`` is the repository that
    runtime management loads packages from, by name.
    """

    models: tuple[str, ...] = ()
    model_dir: str | None = None
    default_model: str | None = None
    # Batching: a batch forms up to max_batch_size images or max_delay_ms after its oldest image.
    max_batch_size: int = 16
    max_delay_ms: float = 5.0
    # Images admitted per model and not yet handed to ONNX Runtime; more is answered 429.
    queue_size: int = 128
    request_timeout_s: float = 30.0
    # Threads that decode and preprocess uploads (PIL and numpy release the GIL).
    decode_threads: int = field(default_factory=default_threads)
    # Engine intra-op threads per model, ONNX Runtime or OpenVINO (None: the CPUs this process may use).
    ort_threads: int | None = None
    # Which engine and precision run each model (imgclf.engines.choice; "auto" is decided per model).
    engine: str = "onnxruntime"
    precision: str | None = None  # None: "auto" with engine "auto", else fp32
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_images_per_request: int = 64
    max_pixels: int | None = None
    # Seconds between looks at the model directory's versions.json files (0: never; see model_store).
    store_poll_s: float = 2.0
    # Load models after the server starts listening (liveness at once, readiness after warm-up).
    load_in_background: bool = True
    # Corrections from users (POST /v1/models/{name}/feedback); None: the feature is off.
    feedback: FeedbackSettings | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(str(m) for m in self.models))
        checks = [
            (self.max_batch_size >= 1, "max_batch_size must be at least 1"),
            (self.max_delay_ms >= 0, "max_delay_ms must not be negative"),
            (self.queue_size >= 1, "queue_size must be at least 1"),
            (self.request_timeout_s > 0, "request_timeout_s must be positive"),
            (self.store_poll_s >= 0, "store_poll_s must not be negative"),
            (self.decode_threads >= 1, "decode threads must be at least 1"),
            (self.ort_threads is None or self.ort_threads >= 1, "ort_threads must be at least 1"),
            (self.max_body_bytes >= 1, "max_body_bytes must be positive"),
            (self.max_images_per_request >= 1, "max_images_per_request must be at least 1"),
            (self.api_key is None or len(self.api_key) > 0, "the API key must not be empty"),
        ]
        checks += [
            (self.engine in ENGINE_ARGS, f"engine must be one of {', '.join(ENGINE_ARGS)}"),
            (self.precision is None or self.precision in PRECISION_ARGS,
             f"precision must be one of {', '.join(PRECISION_ARGS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.model_dir is not None:
            object.__setattr__(self, "model_dir", os.fspath(self.model_dir))
