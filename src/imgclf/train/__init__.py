"""Training from scratch (``imgclf train``, ``imgclf evaluate``, ``imgclf experiment``).

:mod:`~imgclf.train.data` holds the datasets that :mod:`imgclf.data` reads as uint8 tensors with
batched augmentation (:mod:`~imgclf.train.augment`), :mod:`~imgclf.train.loop` is the one trainer
(also used by fine-tuning) and its parts are :mod:`~imgclf.train.config`,
:mod:`~imgclf.train.runtime`, :mod:`~imgclf.train.params`, :mod:`~imgclf.train.schedule`,
:mod:`~imgclf.train.precision`, :mod:`~imgclf.train.speed_probe`, :mod:`~imgclf.train.checkpoint`,
:mod:`~imgclf.train.signals`, :mod:`~imgclf.train.progress`, :mod:`~imgclf.train.hooks` (the
callback interface) and :mod:`~imgclf.train.callbacks`; :mod:`~imgclf.train.models` the networks,
:mod:`~imgclf.train.recipes` the named recipes, :mod:`~imgclf.train.run` one run from data to
package (published by :mod:`imgclf.publish`; evaluation and reports are :mod:`imgclf.evaluation`).

Importing this package loads neither torch nor numpy-heavy code.

Calling the package runs :func:`imgclf.training_api.train`: ``imgclf.train(data, out=...)``.
"""

from __future__ import annotations

from imgclf.callable_package import make_callable

make_callable(__name__, "train")
