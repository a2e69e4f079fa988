"""Fine-tuning a pretrained zoo backbone on a folder of class subfolders (``imgclf finetune``).

:mod:`~imgclf.finetune.options` holds the options, :mod:`~imgclf.finetune.dataset` checks and
splits the folder into the trainer's image sets, :mod:`~imgclf.finetune.backbone` splits any zoo
model into feature extractor + new head + layer groups, :mod:`~imgclf.finetune.features` caches
frozen-backbone features, :mod:`~imgclf.finetune.stages` runs the two stages through the trainer of
``imgclf train`` (augmentation: :mod:`imgclf.train.augment`), :mod:`~imgclf.finetune.state` keeps
what ``--resume`` needs (the same rules as ``imgclf train --resume``:
:mod:`imgclf.train.resume_options`), :mod:`~imgclf.finetune.run` runs it all and publishes the
package (:mod:`imgclf.publish`), and :mod:`~imgclf.finetune.report` writes the run's record beside it.

Calling the package runs :func:`imgclf.training_api.finetune`: ``imgclf.finetune(data, out=...)``.
"""

from __future__ import annotations

from imgclf.callable_package import make_callable

make_callable(__name__, "finetune")
