"""Imports every model family module; importing one registers its zoo entries.

Only :func:`imgclf.zoo.load_families` imports this module. Add a new family module here.
"""

import imgclf.zoo.efficientnet_lite  # noqa: F401
import imgclf.zoo.inception  # noqa: F401
import imgclf.zoo.mobilenet  # noqa: F401
import imgclf.zoo.resnet  # noqa: F401
import imgclf.zoo.squeezenet  # noqa: F401
import imgclf.zoo.vgg  # noqa: F401
import imgclf.zoo.xception  # noqa: F401
