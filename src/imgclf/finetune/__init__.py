"""Fine-tuning a pretrained zoo backbone on a folder of class subfolders (``imgclf finetune``).

:mod:`~imgclf.finetune.dataset` checks and splits the folder, :mod:`~imgclf.finetune.backbone`
splits any zoo model into feature extractor + new head + layer groups,
:mod:`~imgclf.finetune.features` caches frozen-backbone features, :mod:`~imgclf.finetune.augment`
holds the augmentation presets, :mod:`~imgclf.finetune.run` runs both stages through the trainer of ``imgclf train`` and publishes the
package (:mod:`imgclf.publish`), and :mod:`~imgclf.finetune.report` writes the run's record beside it.
"""
