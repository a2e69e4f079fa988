"""``imgclf feedback list|accept|reject|delete|predictions|gc|export``: review what users told the served models."""

from __future__ import annotations

import argparse
import getpass
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.errors import UserError

if TYPE_CHECKING:
    from imgclf.feedback.store import FeedbackStore

NAME = "feedback"
HELP = "review the corrections users sent the server (list, accept, reject, delete) and export them"


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--db", default=os.environ.get("IMGCLF_FEEDBACK_DB"), metavar="URL",
                   help="database URL (default: $IMGCLF_FEEDBACK_DB, else SQLite feedback.db in --store); "
                        "PostgreSQL: postgresql+psycopg://USER:PASSWORD@HOST/DB")
    p.add_argument("--store", type=Path, default=None, metavar="DIR",
                   help="the store folder: images (and the SQLite database). Default: $IMGCLF_HOME/feedback, "
                        "else ~/.local/share/imgclf/feedback")
    p.add_argument("--model", help="only records of this model")
    p.add_argument("--version", dest="model_version", metavar="VERSION", help="only records of this model version")
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    common = _common()
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", parents=[common], help="list feedback records")
    ls.add_argument("--status", choices=["pending", "accepted", "rejected"], help="only records in this status")
    ls.add_argument("--limit", type=int, default=100, help="most records to show (default 100; at most 1000)")
    ls.add_argument("--offset", type=int, default=0, help="skip this many first")
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    for action, verb in (("accept", "accept"), ("reject", "reject")):
        a = sub.add_parser(action, parents=[common], help=f"{verb} records (by id, or every pending one)")
        a.add_argument("ids", nargs="*", type=int, metavar="ID", help="record ids")
        a.add_argument("--all-pending", action="store_true",
                       help=f"{verb} every pending record (of --model/--version)")
    d = sub.add_parser("delete", parents=[common], help="delete records (and images no other record cites)")
    d.add_argument("ids", nargs="+", type=int, metavar="ID", help="record ids")
    pr = sub.add_parser("predictions", parents=[common],
                        help="the newest entries of the prediction log (servers started with --log-predictions), as JSON lines")
    pr.add_argument("--limit", type=int, default=20, help="most entries to show (default 20; at most 1000)")
    sub.add_parser("gc", parents=[common],
                   help="remove image files no record cites (left by a crash between the file and its commit)")
    e = sub.add_parser("export", parents=[common],
                       help="write the accepted records as an image folder <label>/<sha256>.jpg with manifest.json")
    e.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new or empty folder")
    e.add_argument("--merge-with", type=Path, metavar="TRAIN_FOLDER",
                   help="also link the original training folder's images in (<class>/... or train/<class>/...)")


def run(args: argparse.Namespace) -> int:
    from imgclf import feedback

    if not feedback.available():
        raise UserError(f"imgclf feedback needs SQLAlchemy and Alembic: {feedback.EXTRA_HINT}")
    from imgclf.feedback.store import FeedbackStore

    store = FeedbackStore.open(args.db, args.store)
    try:
        return _ACTIONS[args.action](store, args)
    finally:
        store.close()


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _list(store: FeedbackStore, args: argparse.Namespace) -> int:
    records, total = store.list(status=args.status, model=args.model, version=args.model_version,
                                limit=args.limit, offset=args.offset)
    if args.json:
        for r in records:
            print(json.dumps(r.to_dict()))
        return 0
    print(f"{'ID':>6}  {'STATUS':8}  {'MODEL':20}  {'VERSION':10}  {'LABEL':24}  {'PREDICTED':24}  CREATED")
    for r in records:
        predicted = r.predicted_label or "-"
        if r.predicted_score is not None:
            predicted += f" ({r.predicted_score:.2f})"
        print(f"{r.id:>6}  {r.status:8}  {r.model[:20]:20}  {r.version[:10]:10}  {r.label[:24]:24}  "
              f"{predicted[:24]:24}  {r.created_at[:19]}")
    print(f"{len(records)} of {total} record(s)")
    return 0


def _review(status: str) -> Callable[[FeedbackStore, argparse.Namespace], int]:
    def run_review(store: FeedbackStore, args: argparse.Namespace) -> int:
        if args.all_pending == bool(args.ids):
            raise UserError("give record ids or --all-pending (not both)")
        if args.all_pending:
            n = store.set_status_where(status, _who(), model=args.model, version=args.model_version)
        else:
            if args.model or args.model_version:
                raise UserError("--model/--version filter --all-pending; with ids, leave them out")
            n = len(store.set_status(args.ids, status, _who()))
        print(f"{status} {n} record(s)")
        return 0
    return run_review


def _delete(store: FeedbackStore, args: argparse.Namespace) -> int:
    n = store.delete(args.ids)
    print(f"deleted {n} record(s)")
    return 0


def _predictions(store: FeedbackStore, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise UserError("--limit must be 1 to 1000")
    for entry in store.predictions(args.limit, model=args.model, version=args.model_version):
        print(json.dumps(entry))
    return 0


def _gc(store: FeedbackStore, args: argparse.Namespace) -> int:
    files, freed = store.collect_garbage()
    print(f"removed {files} image file(s) no record cites ({freed / 1e6:.1f} MB)")
    return 0


def _export(store: FeedbackStore, args: argparse.Namespace) -> int:
    from imgclf.feedback.export import MANIFEST, export

    result = export(store, args.out, model=args.model, version=args.model_version, merge_with=args.merge_with)
    merged = f", {result.merged_files} merged from {args.merge_with}" if args.merge_with else ""
    print(f"exported {result.records} accepted record(s) as {result.files} image(s){merged} to {result.out} "
          f"(see {result.out / MANIFEST})")
    return 0


_ACTIONS = {"list": _list, "accept": _review("accepted"), "reject": _review("rejected"), "delete": _delete,
            "predictions": _predictions, "gc": _gc, "export": _export}
