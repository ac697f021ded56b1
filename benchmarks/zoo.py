"""Method-zoo table: every registered method of a family on digits-LT (imbalance 100), mean of seeds.

    python benchmarks/zoo.py --family loss            # all losses, 3 seeds, markdown table
    python benchmarks/zoo.py --family sampler --seeds 3
    python benchmarks/zoo.py --family mixing --preset fashion-mnist-lt --epochs 5
    python benchmarks/zoo.py --family loss --only ce ldam --set schedule=drw   # any Config field
    python benchmarks/zoo.py --family mixing --only cmo --param start_epoch=0 --param end_epochs=0
    python benchmarks/zoo.py --family norm --set model=cnn   # norm layers need a model that has them

Each row trains the preset with one registry entry swapped in (everything else as the preset), on
CPU, and reports balanced / many / medium / few accuracy and ECE, mean ± std over seeds. The
``ce`` / ``instance`` / ``none`` row is the plain baseline every other row is compared with.
Entries whose needs the dataset cannot meet are listed as skipped with the reason.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ltlib.cli import _key_value
from ltlib.families import FAMILIES, family
from ltlib.presets import preset
from ltlib.train import train

METRICS = ("balanced_accuracy", "many", "medium", "few", "ece")


def run_row(field: str, name: str, seeds: int, base: dict) -> dict[str, tuple[float, float]]:
    scores = {k: [] for k in METRICS}
    for seed in range(seeds):
        result = train(preset(base["preset"], **{**base["overrides"], field: name, "seed": seed}), save=False)
        for k in METRICS:
            scores[k].append(result.eval[k])
    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=[f.name for f in FAMILIES if f.name != "dataset"], required=True)
    p.add_argument("--preset", default="digits-quick")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int)
    p.add_argument("--only", nargs="*", help="only these entries")
    p.add_argument(
        "--set", type=_key_value, action="append", default=[], metavar="FIELD=VALUE", help="override a Config field for every row"
    )
    p.add_argument("--param", type=_key_value, action="append", default=[], help="key=value for every row's method (repeatable)")
    args = p.parse_args(argv)
    field, registry = args.family, family(args.family).registry
    overrides = {**dict(args.set), **({"epochs": args.epochs} if args.epochs else {})}
    if args.param:
        overrides[f"{field}_params"] = dict(args.param)
    base = {"preset": args.preset, "overrides": overrides}
    names = args.only or registry.available()
    started = time.time()
    print(f"| {args.family} | balanced acc | many | medium | few | ECE |")
    print("|---|---|---|---|---|---|")
    for name in names:
        try:
            row = run_row(field, name, args.seeds, base)
        except ValueError as e:  # the dataset lacks what the method needs (domains, …)
            print(f"| `{name}` | skipped: {e} | | | | |")
            continue
        cells = " | ".join(f"{100 * m:.1f} ± {100 * s:.1f}" if k != "ece" else f"{m:.3f}" for k, (m, s) in row.items())
        print(f"| `{name}` | {cells} |", flush=True)
    print(f"\n{args.preset}, {args.seeds} seeds, {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
