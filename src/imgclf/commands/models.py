from __future__ import annotations

import argparse
import json
from typing import Any

NAME = "models"
HELP = "list the model zoo: parameters, input size and whether weights are available here"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def rows() -> list[dict[str, Any]]:
    from imgclf.zoo import DEFAULT_MODEL, entries
    from imgclf.zoo.weights import availability

    out = []
    for e in entries():
        spec = e.preprocess
        out.append({
            "name": e.name,
            "family": e.family,
            "params": e.num_params,
            "input_size": spec.input_size,
            "preprocess": spec.to_dict(),
            "weights": availability(e),
            "weights_url": e.weights.url if e.weights else None,
            "default": e.name == DEFAULT_MODEL,
            "description": e.description,
        })
    return out


def run(args: argparse.Namespace) -> int:
    data = rows()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{'name':<20} {'params':>13} {'input':>6}  weights")
    for r in data:
        star = " (default)" if r["default"] else ""
        print(f"{r['name']:<20} {r['params']:>13,} {r['input_size']:>6}  {r['weights']}{star}")
    return 0
