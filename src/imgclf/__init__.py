"""imgclf: image classification toolkit and web service."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Lazy: `imgclf.train(...)` and `imgclf.finetune(...)` (callable packages, see
    # imgclf.training_api) load nothing until used, so `import imgclf` stays light.
    if name in ("train", "finetune"):
        import importlib

        return importlib.import_module(f"imgclf.{name}")
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
