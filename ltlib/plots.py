"""Plotly figures of runs — the one place figures are drawn; the app and notebooks call these.

Every function returns a ``plotly.graph_objects.Figure``; :func:`save` writes PNG, SVG or PDF
(kaleido with a system Chrome/Chromium) and :func:`to_bytes` gives the bytes for a download.
"""

from __future__ import annotations

import io
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ltlib import metrics
from ltlib.data import class_groups
from ltlib.runs import Run

GROUP_COLOURS = {"many": "rgba(31,119,180,0.10)", "medium": "rgba(255,127,14,0.10)", "few": "rgba(214,39,40,0.10)"}
FORMATS = ("png", "svg", "pdf")
WEBGL_POINTS = 5000
_kaleido_started = False
# Streamlit runs each session (and each download callback) in its own thread: one export at a time
# through kaleido's single browser process.
_KALEIDO_LOCK = threading.Lock()


def _layout(fig: go.Figure, title: str, **kw: Any) -> go.Figure:
    fig.update_layout(title=title, template="plotly_white", margin=dict(l=60, r=30, t=60, b=60), **kw)
    return fig


def _eval(run: Run) -> dict[str, Any]:
    """The final metrics (eval.json) of a run that has them (a finished run)."""
    if run.eval is None:
        raise ValueError(f"run {run.id} has no final metrics (eval.json; status {run.status})")
    return run.eval


def _names(run: Run) -> list[str]:
    n = len(run.eval["class_counts"]) if run.eval else len(run.meta.get("class_counts", []))
    return run.meta.get("class_names") or [str(i) for i in range(n)]


def _order(counts: np.ndarray) -> np.ndarray:
    return np.argsort(-np.asarray(counts), kind="stable")


def _group_bands(fig: go.Figure, counts: np.ndarray, order: np.ndarray) -> None:
    """Shade the many/medium/few groups behind a bar chart whose x order is ``order``."""
    groups, _ = class_groups(counts)
    position = {c: i for i, c in enumerate(order)}
    for name, members in groups.items():
        if members:
            xs = [position[c] for c in members]
            fig.add_vrect(
                x0=min(xs) - 0.5,
                x1=max(xs) + 0.5,
                fillcolor=GROUP_COLOURS[name],
                line_width=0,
                annotation_text=name,
                annotation_position="top left",
                layer="below",
            )


def class_counts(
    counts: np.ndarray | list[int], names: list[str], log: bool = False, title: str = "Training images per class"
) -> go.Figure:
    """Bar chart of training counts, head to tail, with many/medium/few bands."""
    counts = np.asarray(counts)
    order = _order(counts)
    fig = go.Figure(go.Bar(x=[names[c] for c in order], y=counts[order], marker_color="#4c78a8", name="train images"))
    _group_bands(fig, counts, order)
    return _layout(fig, title, yaxis=dict(title="images", type="log" if log else "linear"), xaxis=dict(title="class (head → tail)"))


def per_class_accuracy(run: Run, title: str | None = None) -> go.Figure:
    """Per-class test accuracy, classes ordered by training count, with the count overlaid."""
    e = _eval(run)
    counts, acc, names = np.asarray(e["class_counts"]), np.asarray(e["per_class_accuracy"]), _names(run)
    order = _order(counts)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=[names[c] for c in order], y=acc[order], name="test accuracy", marker_color="#4c78a8"))
    fig.add_trace(
        go.Scatter(x=[names[c] for c in order], y=counts[order], name="train images", mode="lines+markers", line=dict(color="#e45756")),
        secondary_y=True,
    )
    _group_bands(fig, counts, order)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.05], secondary_y=False)
    # One tick per decade: plotly's default log ticks (1, 2, 5 …) crowd a small chart.
    fig.update_yaxes(title_text="train images", type="log", dtick=1, showgrid=False, secondary_y=True)
    return _layout(
        fig,
        title or f"Per-class accuracy — balanced {e['balanced_accuracy']:.3f}",
        xaxis=dict(title="class (head → tail)"),
        # Legend above the plot: beside it, it hides the count axis' labels in a narrow chart.
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
    )


def training_curves(
    history: list[dict[str, Any]], keys: tuple[str, ...] = ("balanced_accuracy", "accuracy", "many", "medium", "few", "ece")
) -> go.Figure:
    """Training loss (left) and evaluation metrics (right) over epochs."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss", "test metrics"))
    fig.add_trace(go.Scatter(x=[h["epoch"] for h in history], y=[h["loss"] for h in history], name="loss", mode="lines"), row=1, col=1)
    evals = [h for h in history if "balanced_accuracy" in h]
    for k in keys:
        fig.add_trace(go.Scatter(x=[h["epoch"] for h in evals], y=[h[k] for h in evals], name=k, mode="lines+markers"), row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    return _layout(fig, "Training curves")


def sampler_rates(run: Run) -> go.Figure:
    """Per-class sampling probability over epochs (stacked, head → tail) for samplers that learn (meta)."""
    rows = [h for h in run.history if "sampler_rates" in h]
    if not rows:
        raise ValueError(f"run {run.id} logged no sampler_rates; only learning samplers (meta) log them")
    rates = np.array([h["sampler_rates"] for h in rows])
    counts, names = np.asarray(run.meta["class_counts"]), _names(run)
    epochs = [h["epoch"] for h in rows]
    fig = go.Figure(
        [go.Scatter(x=epochs, y=rates[:, c], name=f"{names[c]} (n={counts[c]})", mode="lines", stackgroup="rates") for c in _order(counts)]
    )
    return _layout(fig, "Learned class sampling rates", xaxis=dict(title="epoch"), yaxis=dict(title="sampling probability", range=[0, 1]))


def learned_per_class(run: Run, key: str = "autobalance") -> go.Figure:
    """Per-class values a method learns during training (logged per epoch under ``key``, e.g. AutoBalance's σ(Δ), ι, ω)."""
    logged = [h for h in run.history if isinstance(h.get(key), dict)]
    if not logged:
        keys = sorted({k for h in run.history for k, v in h.items() if isinstance(v, dict)})
        raise ValueError(f"run {run.id} logged no per-class values under {key!r}; logged: {', '.join(keys) or 'none'}")
    fields = list(logged[0][key])
    names, epochs = _names(run), [h["epoch"] for h in logged]
    fig = make_subplots(rows=1, cols=len(fields), subplot_titles=fields)
    for col, name in enumerate(fields, start=1):
        values = np.asarray([h[key][name] for h in logged])
        for c in range(values.shape[1]):
            trace = go.Scatter(x=epochs, y=values[:, c], name=names[c], legendgroup=names[c], showlegend=col == 1, mode="lines")
            fig.add_trace(trace, row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    return _layout(fig, f"Learned per-class parameters ({key})")


def confusion(run: Run, normalize: bool = True) -> go.Figure:
    """Confusion matrix (rows: true class, ordered head → tail), row-normalised."""
    logits, labels = run.arrays["test_logits"], run.arrays["test_labels"]
    counts, names = np.asarray(_eval(run)["class_counts"]), _names(run)
    cm = metrics.confusion_matrix(logits.argmax(1), labels, len(names), normalize)
    order = _order(counts)
    cm = cm[np.ix_(order, order)]
    labels_sorted = [names[c] for c in order]
    fig = go.Figure(
        go.Heatmap(
            z=cm,
            x=labels_sorted,
            y=labels_sorted,
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalize else None,
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z:.2f}<extra></extra>",
        )
    )
    return _layout(
        fig, "Confusion matrix (rows: true class)", xaxis=dict(title="predicted"), yaxis=dict(title="true", autorange="reversed")
    )


def domain_class_accuracy(run: Run) -> go.Figure:
    """Test accuracy per (domain, class) of a multi-domain run, each cell labelled with its training count."""
    if not (run.eval and "domain_class_accuracy" in run.eval):
        raise ValueError(f"run {run.id!r} has no per-domain results; train on a dataset with domains, e.g. digits-domains")
    acc = np.array(run.eval["domain_class_accuracy"], dtype=float)
    counts = np.asarray(run.meta["domain_class_counts"])
    domains = list(run.eval["per_domain_accuracy"])
    fig = go.Figure(
        go.Heatmap(
            z=acc,
            x=_names(run),
            y=domains,
            text=counts,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            hovertemplate="domain %{y}, class %{x}<br>accuracy %{z:.2f}<br>%{text} training images<extra></extra>",
        )
    )
    return _layout(fig, "Accuracy per (domain, class); numbers: training images", xaxis=dict(title="class", type="category"))


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15, title: str | None = None) -> go.Figure:
    """Reliability diagram: accuracy vs confidence per bin, with the gap and the diagonal."""
    b = metrics.reliability_bins(probs, labels, n_bins)
    ece = metrics.expected_calibration_error(probs, labels, n_bins)
    centres = (b["edges"][:-1] + b["edges"][1:]) / 2
    keep = b["count"] > 0
    fig = go.Figure()
    fig.add_trace(go.Bar(x=centres[keep], y=b["accuracy"][keep], width=1 / n_bins, name="accuracy", marker_color="#4c78a8"))
    fig.add_trace(
        go.Bar(
            x=centres[keep],
            y=(b["confidence"] - b["accuracy"])[keep],
            base=b["accuracy"][keep],
            width=1 / n_bins,
            name="gap",
            marker_color="rgba(228,87,86,0.45)",
        )
    )
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line=dict(dash="dash", color="grey")))
    return _layout(
        fig,
        title or f"Reliability diagram — ECE {ece:.3f}",
        barmode="overlay",
        xaxis=dict(title="confidence", range=[0, 1]),
        yaxis=dict(title="accuracy", range=[0, 1]),
    )


def confidence_histogram(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> go.Figure:
    """Histogram of top-label confidence, split into correct and wrong predictions."""
    conf, hit = probs.max(1), probs.argmax(1) == labels
    fig = go.Figure()
    for mask, name in ((hit, "correct"), (~hit, "wrong")):
        fig.add_trace(go.Histogram(x=conf[mask], xbins=dict(start=0, end=1, size=1 / n_bins), name=name, opacity=0.7))
    return _layout(fig, "Confidence histogram", barmode="overlay", xaxis=dict(title="confidence"), yaxis=dict(title="test images"))


def margins(run: Run) -> go.Figure:
    """Distribution of logit margins (true-class logit − best other) per class, head → tail."""
    logits, labels = run.arrays["test_logits"], run.arrays["test_labels"]
    counts, names = np.asarray(_eval(run)["class_counts"]), _names(run)
    m = metrics.margins(logits, labels)
    fig = go.Figure()
    for c in _order(counts):
        fig.add_trace(go.Box(y=m[labels == c], name=f"{names[c]} (n={counts[c]})", boxpoints=False, marker_color="#4c78a8"))
    fig.add_hline(y=0, line_dash="dash", line_color="grey")
    return _layout(fig, "Logit margins per class (head → tail)", showlegend=False, yaxis=dict(title="margin"))


def margin_vs_count(run: Run) -> go.Figure:
    """Mean test margin of each class against its training count (log axis)."""
    counts, names = np.asarray(_eval(run)["class_counts"]), _names(run)
    fig = go.Figure(go.Scatter(x=counts, y=_eval(run)["per_class_margin"], mode="markers+text", text=names, textposition="top center"))
    return _layout(fig, "Mean margin vs training count", xaxis=dict(title="train images", type="log"), yaxis=dict(title="mean margin"))


def weight_norms(run: Run) -> go.Figure:
    """L2 norm of each class's classifier weight vector, head → tail (the τ-norm story)."""
    w = run.arrays.get("head_weight")
    if w is None:
        raise ValueError(f"run {run.id} saved no classifier weights")
    counts, names = np.asarray(_eval(run)["class_counts"]), _names(run)
    order = _order(counts)
    fig = go.Figure(go.Bar(x=[names[c] for c in order], y=np.linalg.norm(w, axis=1)[order], marker_color="#72b7b2"))
    return _layout(fig, "Classifier weight norms (head → tail)", yaxis=dict(title="‖w_c‖"))


def embedding(coords: np.ndarray, labels: np.ndarray, names: list[str], title: str = "Feature embedding") -> go.Figure:
    """2-D scatter of projected features, coloured by class."""
    # SVG draws a few thousand points faster than WebGL starts up (and needs no GPU); WebGL beyond that.
    scatter = go.Scattergl if len(coords) > WEBGL_POINTS else go.Scatter
    fig = go.Figure()
    for c, name in enumerate(names):
        sel = labels == c
        fig.add_trace(scatter(x=coords[sel, 0], y=coords[sel, 1], mode="markers", name=name, marker=dict(size=5)))
    return _layout(fig, title, xaxis=dict(title="1"), yaxis=dict(title="2"))


def decision_regions(grid: dict[str, np.ndarray], names: list[str], title: str = "Decision regions") -> go.Figure:
    """Predicted class over the input plane (``embed.decision_grid``) with the test points on top."""
    palette = [f"hsl({int(360 * c / len(names))},60%,{85}%)" for c in range(len(names))]
    scale = [[v, palette[c]] for c in range(len(names)) for v in (c / len(names), (c + 1) / len(names))]
    fig = go.Figure(
        go.Heatmap(
            x=grid["xs"],
            y=grid["ys"],
            z=grid["pred"],
            zmin=-0.5,
            zmax=len(names) - 0.5,
            colorscale=scale,
            showscale=False,
            hoverinfo="skip",
            name="region",
        )
    )
    for c, name in enumerate(names):
        sel = grid["y_test"] == c
        fig.add_trace(
            (go.Scattergl if len(grid["x_test"]) > WEBGL_POINTS else go.Scatter)(
                x=grid["x_test"][sel, 0],
                y=grid["x_test"][sel, 1],
                mode="markers",
                name=name,
                marker=dict(size=4, color=f"hsl({int(360 * c / len(names))},70%,40%)"),
            )
        )
    return _layout(fig, title, xaxis=dict(title="x₁"), yaxis=dict(title="x₂", scaleanchor="x"))


def compare_per_class(runs: list[Run], labels: list[str] | None = None) -> go.Figure:
    """Per-class accuracy of several runs side by side, classes ordered by the first run's counts."""
    counts, names = np.asarray(_eval(runs[0])["class_counts"]), _names(runs[0])
    order = _order(counts)
    fig = go.Figure()
    for i, r in enumerate(runs):
        acc = np.asarray(_eval(r)["per_class_accuracy"])
        fig.add_trace(go.Bar(x=[names[c] for c in order], y=acc[order], name=labels[i] if labels else r.id))
    _group_bands(fig, counts, order)
    return _layout(fig, "Per-class accuracy", barmode="group", yaxis=dict(title="accuracy", range=[0, 1.05]))


def expert_accuracy(run: Run) -> go.Figure:
    """Per-class accuracy of each BalPoE expert beside their product (the run's prediction), head → tail."""
    experts = run.arrays.get("test_expert_logits")
    if experts is None:
        raise ValueError(f"run {run.id} has no per-expert logits; train it with --loss balpoe")
    from ltlib.losses import LOSSES

    lambdas = (run.config.get("loss_params") or {}).get("lambdas", LOSSES.get("balpoe").defaults["lambdas"])
    counts, names = np.asarray(_eval(run)["class_counts"]), _names(run)
    order, x = _order(counts), [names[c] for c in _order(counts)]
    fig = go.Figure()
    for k, acc in enumerate(metrics.expert_per_class_accuracy(experts, run.arrays["test_labels"])):
        fig.add_trace(go.Bar(x=x, y=acc[order], name=f"expert {k + 1} (λ = {float(np.atleast_1d(lambdas)[k]):g})"))
    product = np.asarray(_eval(run)["per_class_accuracy"])
    fig.add_trace(go.Scatter(x=x, y=product[order], name="product of experts", mode="lines+markers", line=dict(color="black")))
    _group_bands(fig, counts, order)
    return _layout(
        fig, "Per-class accuracy of each expert and of their product", barmode="group", yaxis=dict(title="accuracy", range=[0, 1.05])
    )


def delta(run_a: Run, run_b: Run, label_a: str = "A", label_b: str = "B") -> go.Figure:
    """Per-class accuracy of run B minus run A, head → tail."""
    counts, names = np.asarray(_eval(run_a)["class_counts"]), _names(run_a)
    order = _order(counts)
    d = np.asarray(_eval(run_b)["per_class_accuracy"]) - np.asarray(_eval(run_a)["per_class_accuracy"])
    fig = go.Figure(go.Bar(x=[names[c] for c in order], y=d[order], marker_color=np.where(d[order] >= 0, "#54a24b", "#e45756")))
    _group_bands(fig, counts, order)
    return _layout(fig, f"Per-class accuracy: {label_b} − {label_a}", yaxis=dict(title="Δ accuracy"))


def predictions_per_class(run: Run) -> go.Figure:
    """Share of test predictions that go to each class against its true share, head → tail."""
    logits, labels = run.arrays["test_logits"], run.arrays["test_labels"]
    counts, names = np.asarray(_eval(run)["class_counts"]), _names(run)
    order = _order(counts)
    n = len(names)
    predicted = np.bincount(logits.argmax(1), minlength=n) / len(labels)
    true = np.bincount(labels, minlength=n) / len(labels)
    x = [names[c] for c in order]
    fig = go.Figure(go.Bar(x=x, y=predicted[order], name="predicted", marker_color="#4c78a8"))
    fig.add_trace(go.Scatter(x=x, y=true[order], name="true", mode="lines+markers", line=dict(color="grey", dash="dash")))
    _group_bands(fig, counts, order)
    return _layout(fig, "Where the test predictions go (head → tail)", yaxis=dict(title="share of test predictions"))


def per_class_values(
    counts: np.ndarray | list[int], series: dict[str, np.ndarray | list[float]], names: list[str], title: str, y_title: str
) -> go.Figure:
    """Grouped bars of per-class quantities (sampling probabilities, loss weights, margins …), head → tail."""
    counts = np.asarray(counts)
    order = _order(counts)
    fig = go.Figure()
    for label, values in series.items():
        fig.add_trace(go.Bar(x=[names[c] for c in order], y=np.asarray(values)[order], name=label))
    _group_bands(fig, counts, order)
    return _layout(fig, title, barmode="group", yaxis=dict(title=y_title), xaxis=dict(title="class (head → tail)"))


def per_class_slider(
    counts: np.ndarray | list[int], steps: dict[str, np.ndarray | list[float]], names: list[str], title: str, slider_title: str
) -> go.Figure:
    """Per-class bars (head → tail) for each value of a setting, one slider step per value (e.g. τ-norm's τ)."""
    counts = np.asarray(counts)
    order = _order(counts)
    labels = list(steps)
    fig = go.Figure()
    for i, label in enumerate(labels):
        values = np.asarray(steps[label])[order]
        fig.add_trace(go.Bar(x=[names[c] for c in order], y=values, name=label, visible=i == 0, marker_color="#4c78a8"))
    _group_bands(fig, counts, order)
    slider_steps = [
        dict(method="update", label=label, args=[{"visible": [j == i for j in range(len(labels))]}]) for i, label in enumerate(labels)
    ]
    return _layout(
        fig,
        title,
        sliders=[dict(active=0, currentvalue=dict(prefix=f"{slider_title} = "), steps=slider_steps, pad=dict(t=50))],
        yaxis=dict(title="accuracy", range=[0, 1.05]),
        xaxis=dict(title="class (head → tail)"),
    )


def sweep(
    values: list[float],
    evals: list[dict[str, Any]],
    x_title: str,
    keys: tuple[str, ...] = ("balanced_accuracy", "many", "medium", "few"),
    log_x: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Summary metrics of several evaluations against the one setting that varies (imbalance, τ, …)."""
    if len(values) != len(evals):
        raise ValueError(f"values has {len(values)} entries but evals has {len(evals)}; they must match")
    fig = go.Figure()
    for k in keys:
        fig.add_trace(go.Scatter(x=list(values), y=[e[k] for e in evals], name=k, mode="lines+markers"))
    return _layout(
        fig, title or f"Metrics vs {x_title}", xaxis=dict(title=x_title, type="log" if log_x else "linear"), yaxis=dict(title="value")
    )


def tradeoff(evals: dict[str, dict[str, Any]], x: str = "many", y: str = "few") -> go.Figure:
    """One point per method: accuracy on the head (``x``) against the tail (``y``), labelled by name."""
    names = list(evals)
    fig = go.Figure(
        go.Scatter(
            x=[evals[n][x] for n in names], y=[evals[n][y] for n in names], mode="markers+text", text=names, textposition="top center"
        )
    )
    return _layout(fig, f"Head–tail trade-off: {y} vs {x}", xaxis=dict(title=f"{x} accuracy"), yaxis=dict(title=f"{y} accuracy"))


def per_domain_accuracy(evals: dict[str, dict[str, Any]]) -> go.Figure:
    """Accuracy per domain (mean over its classes) for several runs, grouped by domain."""
    fig = go.Figure()
    for label, e in evals.items():
        per_domain = e["per_domain_accuracy"]
        fig.add_trace(go.Bar(x=list(per_domain), y=list(per_domain.values()), name=label))
    return _layout(fig, "Accuracy per domain", barmode="group", yaxis=dict(title="accuracy", range=[0, 1.05]), xaxis=dict(title="domain"))


def accuracy_vs_count(run: Run) -> go.Figure:
    """Per-class accuracy against training count (log axis) with a least-squares trend in log count."""
    counts, acc, names = np.asarray(_eval(run)["class_counts"]), np.asarray(_eval(run)["per_class_accuracy"]), _names(run)
    fig = go.Figure(go.Scatter(x=counts, y=acc, mode="markers+text", text=names, textposition="top center", name="class"))
    ok = (counts > 0) & np.isfinite(acc)
    if ok.sum() >= 2 and np.ptp(np.log(counts[ok])) > 0:
        slope, intercept = np.polyfit(np.log(counts[ok]), acc[ok], 1)
        xs = np.geomspace(counts[ok].min(), counts[ok].max(), 20)
        fig.add_trace(go.Scatter(x=xs, y=intercept + slope * np.log(xs), mode="lines", name=f"trend: {slope:+.3f} per e× images"))
    return _layout(fig, "Head-to-tail trend", xaxis=dict(title="train images", type="log"), yaxis=dict(title="accuracy", range=[0, 1.05]))


def group_accuracy(evals: list[dict[str, Any]], labels: list[str]) -> go.Figure:
    """Many / medium / few / balanced accuracy of one or more runs as grouped bars."""
    keys = ("many", "medium", "few", "balanced_accuracy")
    fig = go.Figure([go.Bar(x=list(keys), y=[e[k] for k in keys], name=lab) for e, lab in zip(evals, labels)])
    return _layout(fig, "Accuracy by group", barmode="group", yaxis=dict(title="accuracy", range=[0, 1.05]))


def confidence_gap(probs: np.ndarray, labels: np.ndarray, counts: np.ndarray | list[int], names: list[str]) -> go.Figure:
    """Per class (head → tail): mean top-label confidence minus accuracy; > 0 over-confident, < 0 under."""
    counts = np.asarray(counts)
    k = len(names)
    conf = metrics.per_class_mean(probs.max(1), labels, k)
    acc = metrics.per_class_mean((probs.argmax(1) == labels).astype(float), labels, k)
    gap = conf - acc
    order = _order(counts)
    fig = go.Figure(go.Bar(x=[names[c] for c in order], y=gap[order], marker_color=np.where(gap[order] >= 0, "#e45756", "#4c78a8")))
    _group_bands(fig, counts, order)
    return _layout(fig, "Over-(+) / under-(−) confidence per class", yaxis=dict(title="confidence − accuracy"))


def sample_images(x: np.ndarray, y: np.ndarray, names: list[str], per_class: int = 8, seed: int = 0) -> go.Figure:
    """A grid of training images: one row per class (uint8 N×C×H×W), up to ``per_class`` each."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"sample_images needs images N×C×H×W; got shape {x.shape}")
    rng = np.random.default_rng(seed)
    _, ch, h, w = x.shape
    pad = 1
    grid = np.full((len(names) * (h + pad), per_class * (w + pad), 3), 255, np.uint8)
    for c in range(len(names)):
        idx = np.flatnonzero(y == c)
        for j, i in enumerate(rng.permutation(idx)[:per_class]):
            img = x[i].transpose(1, 2, 0)
            grid[c * (h + pad) : c * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = img if ch == 3 else np.repeat(img[..., :1], 3, 2)
    fig = go.Figure(go.Image(z=grid, hoverinfo="skip"))
    step = h + pad
    fig.update_yaxes(tickvals=[c * step + h / 2 for c in range(len(names))], ticktext=names, showgrid=False)
    fig.update_xaxes(showticklabels=False, showgrid=False)
    return _layout(fig, "Sample training images (one row per class)")


def points_2d(x: np.ndarray, y: np.ndarray, names: list[str], title: str = "Training points") -> go.Figure:
    """Scatter of 2-D feature data (toy2d), coloured by class."""
    return embedding(np.asarray(x), np.asarray(y), names, title)


def run_figures(run: Run) -> dict[str, go.Figure]:
    """Every figure of a finished run, by file-friendly name (the app's "all figures" zip)."""
    probs = metrics.softmax(run.arrays["test_logits"].astype(np.float64))
    labels = run.arrays["test_labels"]
    figs = {
        "training_curves": training_curves(run.history),
        "per_class_accuracy": per_class_accuracy(run),
        "accuracy_vs_count": accuracy_vs_count(run),
        "confusion": confusion(run),
        "margins": margins(run),
        "margin_vs_count": margin_vs_count(run),
        "reliability": reliability(probs, labels),
        "confidence_histogram": confidence_histogram(probs, labels),
        "confidence_gap": confidence_gap(probs, labels, _eval(run)["class_counts"], _names(run)),
    }
    if "head_weight" in run.arrays:
        figs["weight_norms"] = weight_norms(run)
    if "test_expert_logits" in run.arrays:
        figs["expert_accuracy"] = expert_accuracy(run)
    return figs


def figure_table(fig: go.Figure) -> pd.DataFrame:
    """The data behind a figure as a long table (trace, x, y[, z]) — the CSV download."""
    rows: list[dict[str, Any]] = []
    for i, t in enumerate(fig.data):
        name = t.name or f"trace {i}"
        if t.type == "heatmap":
            for r, yv in enumerate(t.y):
                rows += [{"trace": name, "x": xv, "y": yv, "z": float(t.z[r][c])} for c, xv in enumerate(t.x)]
        elif t.type == "image":
            continue  # pixels are not tabular data
        else:
            xs = list(t.x) if t.x is not None else [None] * len(t.y if t.y is not None else [])
            ys = list(t.y) if t.y is not None else [None] * len(xs)
            rows += [{"trace": name, "x": xv, "y": yv} for xv, yv in zip(xs, ys)]
    return pd.DataFrame(rows, columns=["trace", "x", "y", "z"] if any("z" in r for r in rows) else ["trace", "x", "y"])


def figures_zip(figs: dict[str, go.Figure], formats: tuple[str, ...] = FORMATS) -> bytes:
    """One zip with every figure in each format plus its data as CSV."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, fig in figs.items():
            for fmt in formats:
                z.writestr(f"{name}.{fmt}", to_bytes(fig, fmt))
            z.writestr(f"{name}.csv", figure_table(fig).to_csv(index=False))
    return buf.getvalue()


def _start_kaleido() -> None:
    global _kaleido_started
    if not _kaleido_started:
        import kaleido

        try:
            kaleido.start_sync_server(silence_warnings=True)
        except (RuntimeError, TypeError):
            pass  # already running, or an older kaleido without the sync server
        _kaleido_started = True


def to_bytes(fig: go.Figure, fmt: str = "png", width: int = 900, height: int = 500, scale: float = 2.0) -> bytes:
    """The figure as PNG, SVG or PDF bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    with _KALEIDO_LOCK, warnings.catch_warnings():
        _start_kaleido()
        # plotly passes options that kaleido's persistent server ignores, and says so each call.
        warnings.filterwarnings("ignore", message="The kopts argument is ignored")
        return fig.to_image(format=fmt, width=width, height=height, scale=scale if fmt == "png" else 1)


def save(fig: go.Figure, path: str | Path, width: int = 900, height: int = 500, scale: float = 2.0) -> Path:
    """Save a figure; the format comes from the suffix (.png, .svg, .pdf)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    data = to_bytes(fig, fmt, width, height, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
