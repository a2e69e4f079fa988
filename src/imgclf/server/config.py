"""Server settings: one frozen object built by ``imgclf serve`` (or a test) and read everywhere."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from imgclf.engine import default_threads
from imgclf.engines.choice import ENGINE_ARGS, PRECISION_ARGS

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024


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
    # Load models after the server starts listening (liveness at once, readiness after warm-up).
    load_in_background: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(str(m) for m in self.models))
        checks = [
            (self.max_batch_size >= 1, "max_batch_size must be at least 1"),
            (self.max_delay_ms >= 0, "max_delay_ms must not be negative"),
            (self.queue_size >= 1, "queue_size must be at least 1"),
            (self.request_timeout_s > 0, "request_timeout_s must be positive"),
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
