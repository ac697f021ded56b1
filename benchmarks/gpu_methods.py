"""Every registered method on CIFAR-10-LT on the GPU: does it run, and on which engine.

    python benchmarks/gpu_methods.py                       # every family, 2 epochs each
    python benchmarks/gpu_methods.py --families loss sampler --epochs 2

For each registry entry it trains the ``cifar10-lt`` preset (ResNet-32, batch 128) for a few epochs
with that one entry swapped in and prints a markdown row: the engine the run used (``graph`` is the
CUDA-graph epoch of ``ltlib.fast``; ``eager`` comes with the logged reason), seconds per epoch after
the first, and the last epoch's balanced accuracy (meaningless after 2 epochs; it only shows the run
finished). Entries whose needs CIFAR-10 cannot meet (domains) are listed as skipped; a crash is a row.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from zoo import FAMILIES  # the registry of each family, shared with the digits tables (same folder)

from ltlib.data import load_dataset
from ltlib.presets import preset
from ltlib.train import train

# Entries that only work as a pair.
PAIRED = {("model", "bbn"): {"mixing": "bbn"}, ("mixing", "bbn"): {"model": "bbn"}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--json", help="append one JSON line per row to this file")
    args = p.parse_args()
    data = load_dataset("cifar10")
    print("| family | method | engine | note | s/epoch | balanced acc |\n|---|---|---|---|---|---|", flush=True)
    for family in args.families:
        field, registry = FAMILIES[family]
        for name in registry.available():
            cfg = preset("cifar10-lt", epochs=args.epochs, eval_every=args.epochs, **{field: name}, **PAIRED.get((field, name), {}))
            stamps: list[float] = []
            info: dict = {}

            def watch(e, stamps=stamps, info=info) -> None:
                if e.kind == "start":
                    info.update(e.data)
                if e.kind == "epoch":
                    stamps.append(time.perf_counter())

            row = {"family": family, "method": name}
            try:
                t = time.perf_counter()
                result = train(cfg, [watch], dataset=data, save=False)
                row.update(
                    engine=info["engine"],
                    note=info["engine_note"],
                    s_per_epoch=float(np.median(np.diff(stamps))) if len(stamps) > 1 else stamps[0] - t,
                    balanced_accuracy=result.eval["balanced_accuracy"],
                )
            except ValueError as e:
                row.update(engine="skipped", note=str(e))
            except Exception as e:  # a crash on the GPU is exactly what this script is for
                row.update(engine="ERROR", note=f"{type(e).__name__}: {e}"[:300])
            cells = [row.get("engine"), row.get("note", ""), f"{row['s_per_epoch']:.2f}" if "s_per_epoch" in row else "", ""]
            if "balanced_accuracy" in row:
                cells[3] = f"{100 * row['balanced_accuracy']:.1f}"
            print(f"| {family} | `{name}` | " + " | ".join(str(c) for c in cells) + " |", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
