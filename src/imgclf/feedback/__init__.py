"""What users tell a model about its answers: a feedback store, its review and its export.

Torch-free (the server imports it). SQLAlchemy, Alembic and psycopg come with the ``feedback``
extra (``pip install 'imgclf[feedback]'``); :func:`available` says whether they are installed.
"""

from __future__ import annotations

import importlib.util

from imgclf.feedback.errors import (
    FeedbackError,
    NotFoundError,
    QuotaExceededError,
    StorageFullError,
    StoreTooNewError,
    StoreUnavailableError,
)

EXTRA_HINT = "install the feedback extra: pip install 'imgclf[feedback]'"


def available() -> bool:
    """Whether the store's libraries (SQLAlchemy and Alembic) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("sqlalchemy", "alembic"))


__all__ = ["EXTRA_HINT", "FeedbackError", "NotFoundError", "QuotaExceededError", "StorageFullError",
           "StoreTooNewError", "StoreUnavailableError", "available"]
