"""Packages that are also functions: ``imgclf.train(...)`` and ``imgclf.finetune(...)``.

Once ``imgclf.train`` (the package) is imported, Python binds that name on ``imgclf`` to it, so the
front door's ``imgclf.train`` must work both as the package and as the function. The package's
module class is swapped for one whose call runs the function of :mod:`imgclf.training_api`,
imported on first call so that importing the package stays light.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgclf.package import ModelPackage


def make_callable(package: str, function: str) -> None:
    """Make the imported package ``package`` call ``imgclf.training_api.<function>``."""

    def target() -> Callable[..., ModelPackage]:
        fn: Callable[..., ModelPackage] = getattr(importlib.import_module("imgclf.training_api"), function)
        return fn

    class CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> ModelPackage:
            return target()(*args, **kwargs)

        @property
        def __wrapped__(self) -> Callable[..., ModelPackage]:  # inspect.signature() and help() follow this
            return target()

    CallablePackage.__doc__ = f"This package, called, is :func:`imgclf.training_api.{function}`."
    sys.modules[package].__class__ = CallablePackage
