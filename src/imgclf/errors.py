"""Errors a user can cause. The CLI turns these into one clear line and a non-zero exit."""

from __future__ import annotations


class UserError(Exception):
    """Bad option, missing file, unusable data: something the user can fix. Exit code 2."""

    exit_code = 2


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception type whose message is written for a user (no traceback needed)."""
    from imgclf.images import ImageDecodeError
    from imgclf.package import PackageError

    types: list[type[BaseException]] = [UserError, ImageDecodeError, PackageError]
    try:
        from imgclf.zoo.weights import WeightsError

        types.append(WeightsError)
    except ImportError:  # pragma: no cover - zoo needs nothing beyond the base install
        pass
    return tuple(types)
