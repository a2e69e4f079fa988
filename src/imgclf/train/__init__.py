"""Training from scratch (``imgclf train``, ``imgclf evaluate``, ``imgclf experiment``).

:mod:`~imgclf.train.data` holds the datasets that :mod:`imgclf.data` reads as uint8 tensors with
batched augmentation, :mod:`~imgclf.train.loop` is the one trainer (also used by fine-tuning),
:mod:`~imgclf.train.callbacks` its hooks, :mod:`~imgclf.train.models` the networks,
:mod:`~imgclf.train.recipes` the named recipes, :mod:`~imgclf.train.run` one run from data to
package (published by :mod:`imgclf.publish`; evaluation and reports are :mod:`imgclf.evaluation`).

Importing this package loads neither torch nor numpy-heavy code.
"""
