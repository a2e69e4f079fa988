"""Inference backends implementing :class:`imgclf.engine.Engine`, one module per runtime.

``onnxruntime`` needs only the core install (the server's engine); ``torch`` needs the torch
extra. Import the module you need; this package imports neither.
"""
