"""``make demo``: classify the sample photos bundled with scikit-image and scikit-learn."""

from __future__ import annotations

import os
import sys
import tempfile

from imgclf.cli import main as cli_main
from imgclf.samples import write_sample_photos


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="imgclf-demo-") as tmp:
        write_sample_photos(tmp)
        here = os.getcwd()
        os.chdir(tmp)  # so the table shows plain file names
        try:
            return cli_main(["predict", ".", "--top-k", "3", *sys.argv[1:]])
        finally:
            os.chdir(here)


if __name__ == "__main__":
    raise SystemExit(main())
