"""What every route reaches through ``request.app.state.imgclf``."""

from __future__ import annotations

from fastapi import Request

from imgclf.server.config import ServerConfig
from imgclf.server.feedback import FeedbackService
from imgclf.server.inference import Inference
from imgclf.server.metrics import Metrics
from imgclf.server.registry import ModelRegistry, ServedModel

# Scope keys routes set for the metrics middleware.
MODEL_KEY = "imgclf.model"
VERSION_KEY = "imgclf.version"  # the version that answered: sent as X-Model-Version
ENDPOINT_KEY = "imgclf.endpoint"  # for answers given before routing
INFER_KEY = "imgclf.infer"


class AppState:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.registry = ModelRegistry(config, self.metrics)
        self.inference = Inference(config)
        self.feedback = FeedbackService(config.feedback, self.metrics) if config.feedback is not None else None


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.imgclf
    return state


def use_model(request: Request, name: str | None, *, version: str | None = None,
              inference: bool = False) -> ServedModel:
    """The loaded model ``name`` (the default model for None) at ``version`` (its default version
    for None), noted for the metrics and the X-Model-Version header."""
    registry = app_state(request).registry
    model = registry.default() if name is None else registry.get(name, version)
    request.scope[MODEL_KEY] = model.name
    request.scope[VERSION_KEY] = model.version
    if inference:
        request.scope[INFER_KEY] = True
    return model
