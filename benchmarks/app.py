"""Speed of the explorer app in a real browser (headless Chromium + `streamlit run`), as a table.

    python benchmarks/app.py            # ~2 minutes on 2 CPU cores

Measures, against the targets of the app issue: switching pages with a finished run (sidebar click
until every chart on the new page is drawn), a Lab toggle on the digits quick preset (click until
the "after" chart shows the new setting), 2-D embeddings of 2,000 test features (PCA, UMAP first
time and cached), and one figure export after the first (kaleido's persistent server).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "app"))

from testing import browser, go_to, open_page, server, wait_chart_title  # noqa: E402

from ltlib import embed, plots  # noqa: E402
from ltlib.presets import preset  # noqa: E402
from ltlib.runs import load_run  # noqa: E402
from ltlib.train import train  # noqa: E402

PAGES = ["Per-class", "Margins", "Calibration", "Embeddings", "Compare", "Data", "Per-class"]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    rows: list[tuple[str, str, float]] = []
    runs = Path(tempfile.mkdtemp(prefix="ltlib-bench-app-")) / "runs"
    os.environ["LTLIB_HOME"] = str(runs)
    os.environ.setdefault("LTLIB_CACHE", str(ROOT / ".cache"))

    # Runs to look at: a digits run and a Fashion-MNIST-LT one whose 10,000-image test set gives 2,000 saved features.
    train(preset("digits-quick"))
    fashion = load_run(train(preset("fashion-mnist-lt", model="mlp", epochs=1)).run_id)
    n = len(fashion.arrays["features"])
    rows.append((f"embedding PCA, {n:,} points", "≤ 0.5 s", timed(lambda: embed.run_embedding(fashion, "pca"))))
    rows.append(
        (
            f"embedding UMAP, {n:,} points, first time in a fresh process (numba JIT)",
            "—",
            timed(lambda: embed.run_embedding(fashion, "umap")),
        )
    )
    (fashion.path / "embedding-umap.npy").unlink()  # as the app does: kernels compiled by embed.warm_up, run not cached yet
    rows.append((f"embedding UMAP, {n:,} points, first time for a run", "≤ 15 s", timed(lambda: embed.run_embedding(fashion, "umap"))))
    rows.append((f"embedding UMAP, {n:,} points, cached", "instant", timed(lambda: embed.run_embedding(fashion, "umap"))))

    fig = plots.per_class_accuracy(fashion)
    rows.append(("figure export PNG, first (starts kaleido)", "—", timed(lambda: plots.to_bytes(fig, "png"))))
    for fmt in plots.FORMATS:
        t = statistics.median(timed(lambda fmt=fmt: plots.to_bytes(fig, fmt)) for _ in range(5))
        rows.append((f"figure export {fmt.upper()}, after the first (median of 5)", "≤ 1 s", t))

    with server(runs) as url, browser() as context:
        page = open_page(context, f"{url}/per_class")
        go_to(page, "Per-class")  # warm the session's caches once, as a user would have
        switches = [timed(lambda name=name: go_to(page, name)) for name in PAGES]
        rows.append(("page switch, finished run, median of 7", "≤ 1 s", statistics.median(switches)))
        rows.append(("page switch, finished run, slowest of 7", "≤ 1 s", max(switches)))
        rows.append(("Embeddings page, PCA (browser, cached)", "≤ 0.5 s", timed(lambda: go_to(page, "Embeddings"))))
        page.close()

        lab = open_page(context, f"{url}/lab")
        wait_chart_title(lab, "after", "mixup off")

        def toggle(expect: str) -> None:
            lab.get_by_text("Mixup", exact=True).click()
            wait_chart_title(lab, "after", expect)

        rows.append(("Lab toggle (mixup on: retrain digits quick)", "≤ 5 s", timed(lambda: toggle("mixup on"))))
        rows.append(("Lab toggle back (result kept: no retrain)", "—", timed(lambda: toggle("mixup off"))))

    print("| measurement | target | seconds |")
    print("|---|---|---:|")
    for name, target, seconds in rows:
        print(f"| {name} | {target} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
