"""Imports every model family module; importing one registers its zoo entries."""

from imgclf.zoo import (  # noqa: F401
)
