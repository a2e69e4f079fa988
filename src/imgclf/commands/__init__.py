"""One module per ``imgclf`` command (see :mod:`imgclf.cli`)."""
