"""Training from scratch (``imgclf train``, ``imgclf evaluate``, ``imgclf experiment``).

:mod:`~imgclf.train.sources` reads datasets (CIFAR-10 python format, IDX, image folders through the
one decode path, with a decode cache), :mod:`~imgclf.train.data` holds them as uint8 tensors with
batched augmentation, :mod:`~imgclf.train.loop` is the one trainer (also used by fine-tuning),
:mod:`~imgclf.train.callbacks` its hooks, :mod:`~imgclf.train.models` the networks,
:mod:`~imgclf.train.recipes` the named recipes, :mod:`~imgclf.train.run` one run from data to
package, :mod:`~imgclf.train.evaluate` evaluation through the serving path and
:mod:`~imgclf.train.report` the history files, plots and ``report.md``.

Importing this package loads neither torch nor numpy-heavy code.
"""
