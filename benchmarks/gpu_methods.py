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

from ltlib.data import load_dataset
from ltlib.families import METHOD_FAMILIES, family
from ltlib.presets import preset
from ltlib.train import train

# BBN's model and mixing only work as a pair (the "bbn model" trait).
BBN = {"model": "bbn", "mixing": "bbn"}
FAMILY_NAMES = [f.name for f in METHOD_FAMILIES] + ["model", "norm"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="*", default=FAMILY_NAMES, choices=FAMILY_NAMES)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--json", help="append one JSON line per row to this file")
    args = p.parse_args()
    data = load_dataset("cifar10")
    print("| family | method | engine | note | s/epoch | balanced acc |\n|---|---|---|---|---|---|", flush=True)
    for name_of_family in args.families:
        for entry in family(name_of_family).registry.entries():
            name = entry.name
            pair = BBN if "bbn model" in entry.traits or (name_of_family, name) == ("model", "bbn") else {}
            cfg = preset("cifar10-lt", epochs=args.epochs, eval_every=args.epochs, **{name_of_family: name, **pair})
            stamps: list[float] = []
            info: dict = {}

            def watch(e, stamps=stamps, info=info) -> None:
                if e.kind == "start":
                    info.update(e.data)
                if e.kind == "epoch":
                    stamps.append(time.perf_counter())

            row = {"family": name_of_family, "method": name}
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
            print(f"| {name_of_family} | `{name}` | " + " | ".join(str(c) for c in cells) + " |", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
