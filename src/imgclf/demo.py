"""``make demo``: classify the sample photos bundled with scikit-image and scikit-learn."""

from __future__ import annotations

import sys
import tempfile

from imgclf.cli import main as cli_main
from imgclf.samples import write_sample_photos


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="imgclf-demo-") as tmp:
        write_sample_photos(tmp)
        return cli_main(["predict", tmp, "--top-k", "3", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
