"""imgclf: image classification toolkit and web service."""

__version__ = "0.1.0"
