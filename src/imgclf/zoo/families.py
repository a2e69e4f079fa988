"""Imports every model family module; importing one registers its zoo entries."""

# Add a new family module to this import.
from imgclf.zoo import efficientnet_lite, inception, mobilenet, resnet, squeezenet, vgg, xception  # noqa: F401
