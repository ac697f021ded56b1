"""OPeN ablation on digits-LT with the small CNN: does the noise (and DAR-BN) add to the oversampling?

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/darbn_ablation.py

Rows: plain CE; OPeN (``pure_noise``) with ordinary batch norm; OPeN with DAR-BN; OPeN with δ = 0
(its deferred class-balanced oversampling without noise images). Mean ± std over 3 seeds, in %.
"""

from __future__ import annotations

import numpy as np

from ltlib.presets import preset
from ltlib.train import train

ROWS = [("none", "batchnorm", {}), ("pure_noise", "batchnorm", {}), ("pure_noise", "dar_bn", {}), ("pure_noise", "dar_bn", {"delta": 0.0})]
METRICS = ("balanced_accuracy", "many", "medium", "few")


def main(seeds: int = 3) -> None:
    print("| mixing (cnn) | norm | params | balanced acc | many | medium | few |")
    print("|---|---|---|---|---|---|---|")
    for mix, norm, params in ROWS:
        cfgs = [preset("digits-quick", model="cnn", norm=norm, mixing=mix, mixing_params=params, seed=s) for s in range(seeds)]
        evals = [train(cfg, save=False).eval for cfg in cfgs]
        cells = " | ".join(f"{100 * np.mean([e[k] for e in evals]):.1f} ± {100 * np.std([e[k] for e in evals]):.1f}" for k in METRICS)
        print(f"| `{mix}` | `{norm}` | {params or ''} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
