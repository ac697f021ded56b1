"""CPU speed of the quick presets, end to end through the CLI (interpreter start and imports included).

    python benchmarks/cpu.py [--repeat 3]

digits-quick: data, 30 epochs, evaluation, saved run (target ≤ 5 s on 2 cores).
Fashion-MNIST-LT (imbalance 100), small CNN, 5 epochs (target ≤ 30 s on 2 cores).
Prints the median wall time of each over ``--repeat`` runs (the first Fashion-MNIST run also reads
the gzip'd IDX files; there is no cache to warm).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "digits-quick (30 epochs)": ["--preset", "digits-quick"],
    "fashion-mnist-lt, CNN, 5 epochs": ["--preset", "fashion-mnist-lt", "--epochs", "5"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    print(f"{os.cpu_count()} CPU cores, torch threads default")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "LTLIB_HOME": home}
        for name, flags in CASES.items():
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "ltlib.cli", "train", *flags, "--quiet"], env=env, check=True, stdout=subprocess.DEVNULL
                )
                times.append(time.perf_counter() - t)
            print(f"{name:34s} median {statistics.median(times):6.2f} s   (min {min(times):.2f}, max {max(times):.2f}, {args.repeat} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
