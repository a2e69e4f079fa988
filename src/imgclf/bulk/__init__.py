"""Bulk prediction on Ray (``imgclf predict --ray``): folders, globs or manifests of images in, one
row per file out (Parquet or JSON Lines).

One job per module: :mod:`~imgclf.bulk.sources` lists the files, :mod:`~imgclf.bulk.decode` is the
decode stage, :mod:`~imgclf.bulk.predictor` the engine actors, :mod:`~imgclf.bulk.shipping` gets
the package to them, :mod:`~imgclf.bulk.output` writes the result parts and knows what is done,
:mod:`~imgclf.bulk.job` is the Ray Data pipeline, :mod:`~imgclf.bulk.cluster` the connection to Ray
and :mod:`~imgclf.bulk.command` the command line. Ray is imported lazily (an optional extra) and
nothing here imports torch.
"""
