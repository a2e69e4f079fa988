"""Former home of :class:`TorchEngine`; it lives in :mod:`imgclf.engines.torch` now."""

from imgclf.engines.torch import TorchEngine

__all__ = ["TorchEngine"]
