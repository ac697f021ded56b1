"""Metrics for long-tailed classification, from logits (or probabilities) and labels (numpy).

Per-class accuracy is per-class recall; balanced accuracy is its mean. Calibration follows
Guo et al., ICML 2017 (top-label ECE, equal-width bins); classwise ECE follows Kull et al.,
NeurIPS 2019. The logit margin of a sample is its true-class logit minus the largest other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ltlib.data import class_groups


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class; NaN for a class with no test samples."""
    hit = np.bincount(labels, weights=(pred == labels).astype(float), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hit / np.maximum(total, 1), np.nan)


def expert_per_class_accuracy(expert_logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class accuracy of each expert, shape (K, C), from a run's ``test_expert_logits`` (K, N, C)."""
    expert_logits = np.asarray(expert_logits)
    return np.stack([per_class_accuracy(z.argmax(axis=1), np.asarray(labels), z.shape[1]) for z in expert_logits])


def group_accuracy(per_class: np.ndarray, class_counts: np.ndarray) -> dict[str, Any]:
    """Mean per-class accuracy over the many/medium/few groups of :func:`ltlib.data.class_groups`."""
    groups, rule = class_groups(class_counts)
    out: dict[str, Any] = {k: float(np.nanmean(per_class[v])) if v else float("nan") for k, v in groups.items()}
    out["groups"] = groups
    out["group_rule"] = rule
    return out


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int, normalize: bool = True) -> np.ndarray:
    """Rows: true class, columns: predicted class; rows sum to 1 when ``normalize``."""
    cm = np.zeros((num_classes, num_classes))
    np.add.at(cm, (labels, pred), 1)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    return cm


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over samples of Σ_c (p_c − 1[y=c])²."""
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label reliability data: per equal-width confidence bin, count, accuracy and mean confidence."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bins are (lo, hi]; confidence 0 cannot occur with a softmax over C >= 1 classes.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    safe = np.maximum(count, 1)
    return {
        "edges": edges,
        "count": count,
        "accuracy": np.bincount(idx, weights=correct, minlength=n_bins) / safe,
        "confidence": np.bincount(idx, weights=conf, minlength=n_bins) / safe,
    }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE = Σ_b (|B_b|/N) · |acc(B_b) − conf(B_b)| over equal-width bins."""
    b = reliability_bins(probs, labels, n_bins)
    return float(np.sum(b["count"] / len(labels) * np.abs(b["accuracy"] - b["confidence"])))


def classwise_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """ECE of each class's one-vs-rest probability p_c against 1[y=c] (Kull et al. 2019), per class."""
    out = np.zeros(probs.shape[1])
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for c in range(probs.shape[1]):
        p, hit = probs[:, c], (labels == c).astype(float)
        idx = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, n_bins - 1)
        count = np.bincount(idx, minlength=n_bins)
        gap = np.abs(np.bincount(idx, weights=hit, minlength=n_bins) - np.bincount(idx, weights=p, minlength=n_bins))
        out[c] = gap.sum() / len(labels) if count.sum() else 0.0
    return out


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample logit margin: z_y − max_{c≠y} z_c (positive means correctly classified)."""
    idx = np.arange(len(labels))
    true = logits[idx, labels]
    other = logits.copy()
    other[idx, labels] = -np.inf
    return true - other.max(axis=1)


def per_class_mean(values: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    total = np.bincount(labels, minlength=num_classes)
    return np.bincount(labels, weights=values, minlength=num_classes) / np.maximum(total, 1)


def posthoc_adjust(logits: np.ndarray, class_counts: np.ndarray, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment (Menon et al., ICLR 2021): z_c − τ·log π_c, π the training prior."""
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    return logits - tau * np.log(counts / counts.sum())


def domain_accuracy(pred: np.ndarray, labels: np.ndarray, domains: np.ndarray, domain_names: list[str], num_classes: int) -> dict[str, Any]:
    """Accuracy per (domain, class) cell and per domain (mean over the domain's classes, as TALLY reports it).

    ``worst_domain_accuracy`` is the lowest domain; a cell with no test samples is NaN (null in JSON).
    """
    cells = np.array([per_class_accuracy(pred[domains == d], labels[domains == d], num_classes) for d in range(len(domain_names))])
    per_domain = np.nanmean(cells, axis=1)
    return {
        "per_domain_accuracy": {name: float(v) for name, v in zip(domain_names, per_domain)},
        "worst_domain_accuracy": float(np.min(per_domain)),
        "domain_class_accuracy": [[None if np.isnan(v) else float(v) for v in row] for row in cells],
    }


def evaluate(
    logits: np.ndarray,
    labels: np.ndarray,
    class_counts: np.ndarray,
    n_bins: int = 15,
    domains: np.ndarray | None = None,
    domain_names: list[str] | None = None,
) -> dict[str, Any]:
    """All summary metrics of a test set as plain JSON-ready values (the run's ``eval.json``).

    With per-sample ``domains`` (and their ``domain_names``) the per-domain accuracies are added.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = logits.shape[1]
    probs = softmax(logits)
    pred = probs.argmax(axis=1)
    pca = per_class_accuracy(pred, labels, num_classes)
    groups = group_accuracy(pca, np.asarray(class_counts))
    m = margins(logits, labels)
    by_domain = {}
    if domains is not None:
        domains = np.asarray(domains)
        names = list(domain_names or [str(d) for d in range(int(domains.max()) + 1)])
        by_domain = domain_accuracy(pred, labels, domains, names, num_classes)
    return {
        "accuracy": float(np.mean(pred == labels)),
        "balanced_accuracy": float(np.nanmean(pca)),
        "per_class_accuracy": [float(v) for v in pca],
        "class_counts": [int(v) for v in class_counts],
        "many": groups["many"],
        "medium": groups["medium"],
        "few": groups["few"],
        "groups": groups["groups"],
        "group_rule": groups["group_rule"],
        "ece": expected_calibration_error(probs, labels, n_bins),
        "classwise_ece": float(np.mean(classwise_ece(probs, labels, n_bins))),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "mean_margin": float(np.mean(m)),
        "per_class_margin": [float(v) for v in per_class_mean(m, labels, num_classes)],
        **by_domain,
    }
