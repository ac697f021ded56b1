"""Multi-domain long tail: cross-entropy vs TALLY's parts and full TALLY on digits-domains, mean of seeds.

    python benchmarks/tally.py --seeds 3            # markdown table for docs/methods.md
    python benchmarks/tally.py --preset digits-domains-quick --epochs 60

Each row trains the preset with the row's sampler / mixing / loss (everything else as the preset),
on CPU, and reports balanced accuracy, the worst domain and each domain's accuracy (mean over its
classes), mean ± std over seeds. The test set is balanced over (domain, class).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ltlib.presets import preset
from ltlib.train import train

ROWS = {
    "CE (instance sampling)": {},
    "selective_balanced": {"sampler": "selective_balanced"},
    "tally_mix": {"mixing": "tally_mix"},
    "tally_proto": {"loss": "tally_proto"},
    "TALLY (selective_balanced + tally_mix)": {"sampler": "selective_balanced", "mixing": "tally_mix"},
    "full TALLY (+ tally_proto)": {"sampler": "selective_balanced", "mixing": "tally_mix", "loss": "tally_proto"},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="digits-domains-quick")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int)
    args = p.parse_args(argv)
    overrides = {"epochs": args.epochs} if args.epochs else {}
    started = time.time()
    header = None
    for label, methods in ROWS.items():
        evals = [train(preset(args.preset, **{**overrides, **methods, "seed": s}), save=False).eval for s in range(args.seeds)]
        domains = list(evals[0]["per_domain_accuracy"])
        if header is None:
            header = ["balanced acc", "worst domain", *domains]
            print(f"| method | {' | '.join(header)} |")
            print("|---" * (len(header) + 1) + "|")
        columns = [[e["balanced_accuracy"] for e in evals], [e["worst_domain_accuracy"] for e in evals]]
        columns += [[e["per_domain_accuracy"][d] for e in evals] for d in domains]
        cells = " | ".join(f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}" for v in columns)
        print(f"| {label} | {cells} |", flush=True)
    print(f"\n{args.preset}, {args.seeds} seeds, {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
