from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from imgclf.errors import UserError

NAME = "experiment"
HELP = "run a named experiment (seed-ladder: every step of the CIFAR-10 VGG ladder) and write a report"

EXPERIMENTS = {"seed-ladder": "every step of the original CIFAR-10 VGG ladder, one run each, then a table"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=sorted(EXPERIMENTS), help="; ".join(f"{k}: {v}" for k, v in EXPERIMENTS.items()))
    p.add_argument("--data", help="dataset (same forms as 'imgclf train --data')")
    p.add_argument("--format", default="auto", choices=["auto", "cifar10", "folder", "idx", "fashion-mnist", "mnist"])
    p.add_argument("--out", required=True, help="experiment directory: one run folder per step, report.md")
    p.add_argument("--steps", help="comma-separated subset of the ladder's recipes (default: all)")
    p.add_argument("--epochs", type=float, help="epochs for every step (default: each recipe's own)")
    p.add_argument("--seed", type=int)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--time-budget", metavar="DURATION", help="time budget per step, e.g. 20m")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting in every step")
    p.add_argument("--threads", type=int)
    p.add_argument("--cache-dir")
    p.add_argument("--no-progress", action="store_true")


def _summary(step_dir: Path, recipe: str) -> dict[str, Any]:
    from imgclf.train.recipes import RECIPES

    hyp = RECIPES[recipe]
    row: dict[str, Any] = {"recipe": recipe, "label": hyp["ladder"], "adds": hyp["adds"]}
    hist_path = step_dir / "history.json"
    if hist_path.is_file():
        history = json.loads(hist_path.read_text())["epochs"]
        row["history"] = history
        if history:
            last = history[-1]
            row.update(epochs=last.get("epoch_float", last["epoch"]), train_acc=last["train_acc"], time=last["elapsed"])
            vals = [r["val_acc"] for r in history if r.get("val_acc") is not None]
            row["best_eval_acc"] = max(vals) if vals else None
    metrics = step_dir / "metrics.json"
    if metrics.is_file():
        row["test_acc"] = json.loads(metrics.read_text())["accuracy"]
    if (step_dir / "learning_curves.png").is_file():
        row["curves"] = f"{step_dir.name}/learning_curves.png"
    return row


def run(args: argparse.Namespace) -> int:
    from imgclf.evaluation import plot_ladder, write_ladder_report
    from imgclf.train.recipes import LADDER
    from imgclf.train.run import RunOptions
    from imgclf.train.runtime import leave_distributed
    from imgclf.training_api import parse_duration, parse_sets, run_training

    steps = [s.strip() for s in args.steps.split(",")] if args.steps else list(LADDER)
    unknown = [s for s in steps if s not in LADDER]
    if unknown:
        raise UserError(f"not ladder steps: {', '.join(unknown)}; the ladder is {', '.join(LADDER)}")
    out = Path(args.out)
    budget = parse_duration(args.time_budget) if args.time_budget else None
    main = True
    try:
        for i, recipe in enumerate(steps, 1):
            step_dir = out / recipe
            if (step_dir / "package" / "model.json").is_file() and (step_dir / "report.md").is_file():
                print(f"[{i}/{len(steps)}] {recipe}: done already, skipping", file=sys.stderr)
                continue
            print(f"[{i}/{len(steps)}] {recipe}", file=sys.stderr, flush=True)
            opts = RunOptions(out=str(step_dir), data=args.data, format=args.format, recipe=recipe,
                              epochs=args.epochs, seed=args.seed, val_fraction=args.val_fraction,
                              precision=args.precision, time_budget=budget, overrides=parse_sets(args.set),
                              threads=args.threads, cache_dir=args.cache_dir,
                              progress=False if args.no_progress else None, resume=True)
            outcome = run_training(opts)
            main = outcome.is_main
            if outcome.stopped == "interrupted":
                if main:
                    print(f"interrupted; run the same command again to continue from {step_dir}", file=sys.stderr)
                return 130
    finally:
        leave_distributed()
    if not main:
        return 0
    rows = [_summary(out / r, r) for r in steps]
    plot_ladder(rows, out / "ladder_curves.png")
    dataset = args.data or args.format
    report = write_ladder_report(out, rows, dataset=str(dataset))
    (out / "ladder.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "history"} for r in rows],
                                                indent=2) + "\n", encoding="utf-8")
    print(f"{'step':<16} {'recipe':<24} {'epochs':>6} {'train':>8} {'eval':>8} {'test':>8}")
    for r in rows:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2%}"
        print(f"{r['label']:<16} {r['recipe']:<24} {r.get('epochs', 'n/a'):>6} {pct(r.get('train_acc')):>8} "
              f"{pct(r.get('best_eval_acc')):>8} {pct(r.get('test_acc')):>8}")
    print(f"report: {report}")
    return 0
