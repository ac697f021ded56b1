"""2-D projections of penultimate features: PCA (instant), UMAP and t-SNE, cached beside a run.

The cache is a plain ``embedding-<method>.npy`` file in the run folder (written atomically, loaded
with ``allow_pickle=False``), so each projection is computed once per run.
"""

from __future__ import annotations

import os
import uuid

import numpy as np

from ltlib.runs import Run, load_model

METHODS = ("pca", "umap", "tsne")


def project(features: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Project ``features`` (N×D) to N×2 with PCA, UMAP (McInnes et al. 2018) or t-SNE (van der Maaten & Hinton 2008)."""
    x = np.asarray(features, dtype=np.float32)
    if method == "pca":
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ vt[:2].T
        # Fix the sign of each axis so the picture does not flip between runs.
        return (coords * np.sign(coords[np.abs(coords).argmax(axis=0), [0, 1]])).astype(np.float32)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, random_state=seed).fit_transform(x).astype(np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return (
            TSNE(n_components=2, init="pca", perplexity=min(30.0, max(2.0, (len(x) - 1) / 3)), random_state=seed)
            .fit_transform(x)
            .astype(np.float32)
        )
    raise ValueError(f"unknown projection {method!r}; choose one of: {', '.join(METHODS)}")


def warm_up(method: str = "umap") -> None:
    """Compile a projection's numba kernels on a tiny random set (UMAP: ~30 s of JIT once per process),
    so the first real projection of a run costs only its own computation."""
    project(np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32), method)


def run_embedding(run: Run, method: str = "pca") -> tuple[np.ndarray, np.ndarray]:
    """Projected features of a run's saved test subset and their labels, computed once and cached."""
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}; choose one of: {', '.join(METHODS)}")
    labels = run.arrays["test_labels"][run.arrays["feature_index"]]
    cache = run.path / f"embedding-{method}.npy"
    if cache.exists():
        return np.load(cache, allow_pickle=False), labels
    coords = project(run.arrays["features"], method, seed=int(run.config.get("seed", 0)))
    tmp = cache.with_name(f".{cache.name}.{uuid.uuid4().hex[:6]}.tmp.npy")
    np.save(tmp, coords)
    os.replace(tmp, cache)
    return coords, labels


def decision_grid(run: Run, size: int = 150, margin: float = 0.5) -> dict[str, np.ndarray]:
    """Predicted class over a ``size``×``size`` grid covering a 2-D feature dataset (toy2d), from the saved model.

    The model (``ltlib.runs.load_model``: its schedule's layers, input normalisation and post-hoc
    adjustments as in its evaluation) and the long-tailed test data are rebuilt from the run (deterministic in the seed).
    """
    import torch

    from ltlib.train import prepare_data

    cfg = run.checked_config()  # a crafted config.json fails here, in one line, before any data is made
    data = prepare_data(cfg)
    if data.input_shape != (2,):
        raise ValueError(f"decision regions need 2-D feature data like toy2d; {cfg.dataset} has input shape {data.input_shape}")
    model = load_model(run)
    x_test = data.x_test.numpy()
    lo, hi = x_test.min(axis=0) - margin, x_test.max(axis=0) + margin
    xs, ys = np.linspace(lo[0], hi[0], size), np.linspace(lo[1], hi[1], size)
    grid = torch.from_numpy(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32))
    with torch.no_grad():
        pred = model(grid).argmax(1).reshape(size, size).numpy()
    return {"xs": xs, "ys": ys, "pred": pred, "x_test": x_test, "y_test": data.y_test.numpy()}
