"""Real photos that ship with imgclf: the calibration set and gate photos of zoo models.

Scaled to 400 pixels on the long side (about 170 KB together). Licences are in ``NOTICE`` beside
them. Four calibrate (a cat, a coffee cup, an astronaut, a rocket); two are held out for the
default accuracy gate, which on two photos is a smoke check only: gate on your own photos with
``imgclf quantize --eval FOLDER`` (see docs/quantize.md).
"""

from __future__ import annotations

from pathlib import Path

CALIBRATION = ("chelsea.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg")
GATE = ("china.jpg", "flower.jpg")


def photos_dir() -> Path:
    return Path(__file__).parent
