"""What a run shows while it trains: a step bar with an ETA (rank 0, on a terminal) and one line per epoch."""

from __future__ import annotations

import sys
from typing import Any


class TrainProgress:
    """A tqdm bar over the run's steps; :meth:`log` writes above it (or plain lines without one)."""

    def __init__(self, total: int, initial: int, *, show_bar: bool, log_epochs: bool) -> None:
        from tqdm import tqdm

        self.log_epochs = log_epochs
        self.bar: Any = tqdm(total=total, initial=initial, unit="step", file=sys.stderr, disable=not show_bar,
                             dynamic_ncols=True, leave=True)

    @property
    def shown(self) -> bool:
        return not self.bar.disable

    def epoch(self, epoch: int, n_epochs: int) -> None:
        self.bar.set_description(f"epoch {epoch + 1}/{n_epochs}")

    def step(self, **postfix: str) -> None:
        self.bar.update(1)
        if postfix:
            self.bar.set_postfix(**postfix, refresh=False)

    def note(self, **postfix: str) -> None:
        self.bar.set_postfix(**postfix, refresh=False)

    def log(self, msg: str) -> None:
        if not self.log_epochs:
            return
        if self.shown:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
