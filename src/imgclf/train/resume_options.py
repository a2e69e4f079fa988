"""What ``--resume`` means, for ``imgclf train`` and ``imgclf finetune`` alike.

``--resume`` continues the run in ``--out`` from its last checkpoint. The run's options come from
the run folder, so ``--out DIR --resume`` alone is enough; an option given again replaces the saved
one (a longer ``--epochs`` or ``--time-budget``, a new learning rate), except the options the
checkpoint depends on (the data, the model, the image size, the seed and split), which must stay as
they were. Without ``--resume`` a folder that holds a run is never overwritten.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from imgclf.errors import UserError


def same_value(key: str, saved: Any, given: Any) -> bool:  # noqa: ANN401 - option values of any type
    """Whether an option given on resume equals its saved value (paths compared resolved)."""
    if key == "data" and saved is not None and given is not None:
        return Path(str(saved)).expanduser().resolve() == Path(str(given)).expanduser().resolve()
    return bool(saved == given)


def merge_on_resume(saved: Mapping[str, Any], given: Mapping[str, Any], *, fixed: Iterable[str],
                    run_dir: Path) -> dict[str, Any]:
    """The options of a resumed run: ``saved`` replaced by ``given`` (the options stated now);
    refuses a change to any option in ``fixed``."""
    changed = [k for k in fixed if k in given and k in saved and not same_value(k, saved[k], given[k])]
    if changed:
        what = ", ".join(f"--{k.replace('_', '-')} {saved[k]!r} -> {given[k]!r}" for k in changed)
        raise UserError(f"--resume cannot change what the checkpoints in {run_dir} depend on ({what}); "
                        "drop those options or start a new run in another --out")
    return {**saved, **given}


def refuse_overwrite(run_dir: Path, *, what: str, out: Path) -> None:
    """The error for starting a run where one already is, without ``--resume``."""
    raise UserError(f"{out} already holds {what} ({run_dir}); pass --resume to continue it, "
                    "or choose another --out")
