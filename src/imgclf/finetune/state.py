"""The run's saved state in ``OUT/training/state.json``: what ``--resume`` needs between stages.

The state records the defining options and, per finished stage, its outcome; each stage's own
checkpoints live beside it in ``stage1/`` and ``stage2/``. ``--resume`` follows the rules of
``imgclf train --resume`` (:mod:`imgclf.train.resume_options`): ``--out DIR --resume`` alone
continues with the saved options; options given again replace them, except those the checkpoints
depend on.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, TypedDict

from imgclf.errors import UserError
from imgclf.finetune.options import DEFINING, FIXED_ON_RESUME, FinetuneOptions, StatedOptions
from imgclf.train.resume_options import merge_on_resume, refuse_overwrite

RUN_DIR = "training"
STATE_FILE = "state.json"


class StageState(TypedDict, total=False):
    """What ``state.json`` keeps of a finished stage."""

    done: bool
    epochs: float
    stopped: str
    best_val_acc: float | None
    seconds: float
    history: list[dict[str, Any]]  # the trainer's per-epoch rows (FitResult.history)
    feature_cache: str  # stage 1: "hit" or "miss"
    feature_seconds: float


class RunState(TypedDict, total=False):
    options: dict[str, Any]  # the DEFINING options, JSON values
    stages: dict[str, StageState]  # "head" (stage 1) and "all" (stage 2)
    kept: str  # the stage whose weights are published


def defining(opts: FinetuneOptions) -> dict[str, Any]:
    d = {k: getattr(opts, k) for k in DEFINING}
    d["data"] = str(Path(opts.data).expanduser().resolve())
    d["add_data"] = [str(Path(p).expanduser().resolve()) for p in opts.add_data]
    return d


def saved_options(out: str | Path) -> dict[str, Any] | None:
    """The options of the unfinished run in ``out``, or None when there is none."""
    state_path = Path(out) / RUN_DIR / STATE_FILE
    if not state_path.is_file():
        return None
    options = json.loads(state_path.read_text(encoding="utf-8")).get("options")
    return dict(options) if isinstance(options, dict) else None


def resolve_options(stated: StatedOptions) -> FinetuneOptions:
    """The options of a run from those stated (on the command line: the flags given; in Python: the
    arguments not None). With ``resume``, the others come from the run in ``out``."""
    given: dict[str, Any] = {k: v for k, v in stated.items() if v is not None}
    saved = saved_options(stated["out"]) if stated.get("resume") else None
    if saved is not None:
        defining_given = {k: v for k, v in given.items() if k in DEFINING}
        known = {f.name for f in fields(FinetuneOptions)}
        merged = merge_on_resume(saved, defining_given, fixed=FIXED_ON_RESUME, run_dir=Path(stated["out"]) / RUN_DIR)
        given.update({k: v for k, v in merged.items() if k in known})
    if given.get("data") is None:
        raise UserError("--data is required" + (f" (there is no unfinished run in {stated['out']} to resume)"
                                                if stated.get("resume") else ""))
    return FinetuneOptions(**given)


def open_run(opts: FinetuneOptions) -> tuple[Path, RunState]:
    """Check ``--out`` and read the saved state of the run to resume; creates nothing."""
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the model package")
    run_dir = out / RUN_DIR
    if run_dir.exists() and not opts.resume:
        refuse_overwrite(run_dir, what="an unfinished fine-tuning run", out=out)
    state: RunState = {"options": defining(opts), "stages": {}}
    saved = saved_options(out) if opts.resume else None
    if saved is not None:
        merge_on_resume(saved, state["options"], fixed=FIXED_ON_RESUME, run_dir=run_dir)
        previous: RunState = json.loads((run_dir / STATE_FILE).read_text(encoding="utf-8"))
        state = {**previous, "options": state["options"]}
    return run_dir, state


def save_state(run_dir: Path, state: RunState) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tmp.replace(run_dir / STATE_FILE)
