"""Embeddings page: 2-D projection of the test set's penultimate features (PCA, UMAP, t-SNE), cached per run."""

import os
import threading
import time

import common
import streamlit as st

from ltlib import embed, plots
from ltlib.runs import load_run


@st.cache_resource(max_entries=8, show_spinner="drawing the decision regions…")
def regions(path: str) -> dict:
    """The decision grid of a run, once per run (runs never change)."""
    return embed.decision_grid(load_run(path))


@st.cache_resource(show_spinner=False)
def umap_warm_up() -> threading.Thread:
    """Once per server process: compile UMAP in the background while the user looks at PCA."""
    thread = threading.Thread(target=embed.warm_up, args=("umap",), name="umap-warm-up", daemon=True)
    thread.start()
    return thread


LABELS = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}
st.title("Embeddings")
run = common.pick_run()
if run is not None and run.config["dataset"] == "toy2d":
    st.caption("toy2d lives in 2-D already: here are the classifier's decision regions, with the test points.")
    names = run.meta.get("class_names") or [str(i) for i in range(len(run.eval["class_counts"]))]
    try:
        run.checked_config()  # the saved config rebuilds the data: refuse one that is not a valid config
        grid = st.cache_data(
            embed.decision_grid, show_spinner="drawing the decision regions…", hash_funcs={type(run): lambda r: str(r.path)}
        )(run)
    except (ValueError, MemoryError) as e:  # CorruptRun (config, weights), or data too large to rebuild
        st.error(f"Cannot draw the decision regions: {e}")
        st.stop()
    common.figure(plots.decision_regions(grid, names), "decision_regions")
elif run is not None:
    if os.environ.get("LTLIB_UMAP_WARM_UP", "1") != "0":  # tests switch it off to spare the CPU
        umap_warm_up()
    method = st.radio("projection", embed.METHODS, horizontal=True, key="w_projection", format_func=LABELS.get)
    cached = (run.path / f"embedding-{method}.npy").exists()
    started = time.perf_counter()
    with st.spinner(f"computing {LABELS[method]} once for this run…" if not cached else "loading…"):
        try:
            coords, labels = embed.run_embedding(run, method)
        except (ValueError, EOFError) as e:  # a broken embedding cache file beside the run
            st.error(f"Cannot project this run: {e}")
            st.stop()
    seconds = time.perf_counter() - started
    names = run.meta.get("class_names") or [str(i) for i in range(len(run.eval["class_counts"]))]
    st.caption(f"{len(labels):,} test images · {LABELS[method]} {'from the cache' if cached else f'computed in {seconds:.2f} s'}")
    common.figure(plots.embedding(coords, labels, names, f"Penultimate features ({LABELS[method]})"), f"embedding_{method}")
