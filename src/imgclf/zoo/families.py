"""Imports every model family module; importing one registers its zoo entries."""

# One line per family module, e.g. `from imgclf.zoo import resnet  # noqa: F401`.
