"""The run's saved state in ``OUT/training/state.json``: what ``--resume`` needs between stages.

The state records the defining options (a resume with different ones is refused) and, per finished
stage, its outcome; each stage's own checkpoints live beside it in ``stage1/`` and ``stage2/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imgclf.errors import UserError
from imgclf.finetune.options import DEFINING, FinetuneOptions

RUN_DIR = "training"
STATE_FILE = "state.json"


def defining(opts: FinetuneOptions) -> dict[str, Any]:
    d = {k: getattr(opts, k) for k in DEFINING}
    d["data"] = str(Path(opts.data).expanduser().resolve())
    return d


def open_run(opts: FinetuneOptions) -> tuple[Path, dict[str, Any]]:
    """Check ``--out`` and read the saved state of the run to resume; creates nothing."""
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the model package")
    run_dir = out / RUN_DIR
    state_path = run_dir / STATE_FILE
    if run_dir.exists() and not opts.resume:
        raise UserError(f"{out} holds an unfinished fine-tuning run ({run_dir}); pass --resume to continue it, "
                        "or choose another --out")
    state: dict[str, Any] = {"options": defining(opts), "stages": {}}
    if opts.resume and state_path.is_file():
        saved = json.loads(state_path.read_text(encoding="utf-8"))
        diff = [k for k in DEFINING if saved["options"].get(k) != state["options"][k]]
        if diff:
            changes = ", ".join(f"{k}: {saved['options'].get(k)!r} -> {state['options'][k]!r}" for k in diff)
            raise UserError(f"--resume with different settings than the run in {run_dir} ({changes}); "
                            "repeat the original options")
        state = saved
    return run_dir, state


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tmp.replace(run_dir / STATE_FILE)
