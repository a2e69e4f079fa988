"""The imgclf web service: REST (v1), Open Inference Protocol (v2), a web page, batching, metrics.

The server runs model packages on ONNX Runtime and never imports torch. Build an app with
:func:`imgclf.server.app.create_app`; ``imgclf serve`` runs it under uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf.server.config import ServerConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ServerConfig", "create_app"]


def create_app(config: ServerConfig) -> FastAPI:  # FastAPI is imported lazily
    from imgclf.server.app import create_app as _create_app

    return _create_app(config)
