"""The ``imgclf`` command line: one app, one module per command under :mod:`imgclf.commands`.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Heavy imports (torch, the server) happen inside ``run`` so ``imgclf --help`` stays instant.

Errors: a :class:`~imgclf.errors.UserError` (the root of every error a user can fix) becomes one
line on stderr and exit code 2; a file the user named that does not exist likewise. Anything else
is a bug: Python prints its traceback and the exit code is 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from imgclf import __version__
from imgclf.errors import UserError

COMMANDS = ["models", "predict", "export", "import_model", "serve", "train", "evaluate", "experiment", "finetune",
            "feedback", "quantize"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgclf",
        description="Image classification: pretrained zoo, training, fine-tuning and serving.",
    )
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for modname in COMMANDS:
        mod = importlib.import_module(f"imgclf.commands.{modname}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Keep torch's OpenMP threads from spinning when cores are shared (server, tests, CI).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("imgclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `imgclf predict ... | head`: the reader left; stay quiet like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except UserError as exc:
        print(f"imgclf: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except FileNotFoundError as exc:
        if exc.filename is None:  # not a path the user named: a bug
            return internal_error()
        print(f"imgclf: error: no such file: {exc.filename}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - a bug: show where, and do not pass it off as the user's mistake
        return internal_error()


def internal_error() -> int:
    """Print the exception being handled with its traceback; exit code 1."""
    traceback.print_exc()
    print(f"imgclf {__version__}: internal error (the traceback above is a bug; please report it)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
