"""Errors of the feedback store, each one a person can act on (the CLI prints it, the server maps it)."""

from __future__ import annotations

from imgclf.errors import UserError


class FeedbackError(UserError):
    """The root of the feedback store's errors."""


class StoreUnavailableError(FeedbackError):
    """The database cannot be reached or refuses the write (the server answers 503)."""


class StorageFullError(FeedbackError):
    """The disk under the image store is full or failing (the server answers 503)."""


class QuotaExceededError(FeedbackError):
    """The store holds as many images or bytes as its quota allows (the server answers 507)."""


class StoreTooNewError(FeedbackError):
    """The store was written by a later imgclf whose schema this one does not know."""


class NotFoundError(FeedbackError, KeyError):
    """No feedback record with that id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"
