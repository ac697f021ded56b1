"""Post-hoc adjustments of a trained classifier, recomputed from a saved run without retraining.

Everything here works on the arrays a run folder stores (test logits, full test features, classifier
weights, validation logits), so the app's sliders and the notebooks can change τ or T and see
per-class accuracy and ECE move instantly:

- temperature scaling (Guo, Pleiss, Sun & Weinberger, ICML 2017): z / T, one T fitted on validation NLL;
- class-wise temperature scaling: z_c / T_c, one T_c per class fitted on validation NLL (the
  post-hoc form of the per-class temperatures of DBN-Mix, Baik, Yoon & Choi, Pattern Recognition 2024,
  seed 002 #7, which scales logits per class during training);
- τ-normalisation (Kang et al., Decoupling Representation and Classifier, ICLR 2020):
  z_c = f · w_c / ‖w_c‖^τ (no bias, as in the official τ-norm evaluation);
- post-hoc logit adjustment (Menon et al., ICLR 2021): z_c − τ·log π_c (``metrics.posthoc_adjust``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ltlib.metrics import posthoc_adjust
from ltlib.registry import check_range


@dataclass
class Outputs:
    """What post-hoc methods need from a run (``from_run``) or from a live model."""

    logits: np.ndarray
    labels: np.ndarray
    class_counts: np.ndarray
    features: np.ndarray | None = None
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    val_logits: np.ndarray | None = None
    val_labels: np.ndarray | None = None

    @classmethod
    def from_run(cls, run: Any) -> Outputs:
        a = run.arrays
        return cls(
            logits=a["test_logits"],
            labels=a["test_labels"],
            class_counts=a["class_counts"],
            features=a.get("test_features"),
            weight=a.get("head_weight"),
            bias=a.get("head_bias"),
            val_logits=a.get("val_logits"),
            val_labels=a.get("val_labels"),
        )


def tau_norm_logits(features: np.ndarray, weight: np.ndarray, tau: float) -> np.ndarray:
    """τ-normalised classifier: z_c = f · w_c / ‖w_c‖^τ (τ = 0 is the raw weights, τ = 1 equal norms)."""
    check_range("tau", tau, 0.0, float("inf"))
    norms = np.linalg.norm(weight, axis=1, keepdims=True)
    return features @ (weight / np.maximum(norms, 1e-12) ** tau).T


def _fit_log_temperature(logits: np.ndarray, labels: np.ndarray, per_class: bool) -> np.ndarray:
    """Minimise validation NLL over log T (scalar or per class) with L-BFGS; T stays positive."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_t = torch.zeros(z.shape[1] if per_class else 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return log_t.detach().exp().numpy()


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The single temperature T minimising NLL of softmax(z / T) on held-out data (Guo et al. 2017)."""
    return float(_fit_log_temperature(logits, labels, per_class=False)[0])


def fit_class_temperature(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class temperatures T_c minimising NLL of softmax(z_c / T_c) on held-out data."""
    return _fit_log_temperature(logits, labels, per_class=True)


def adjust(
    outputs: Outputs,
    temperature: float | np.ndarray = 1.0,
    tau_norm: float | None = None,
    logit_tau: float = 0.0,
) -> np.ndarray:
    """Test logits after τ-norm (if ``tau_norm`` is given), post-hoc logit adjustment and temperature.

    Order: the classifier is τ-normalised first (it replaces the logits), the prior is then removed
    (z − τ·log π) and the temperature divides last, so T changes confidence but not the argmax.
    """
    logits = outputs.logits
    if tau_norm is not None:
        if outputs.features is None or outputs.weight is None:
            raise ValueError("tau_norm needs the run's full test features and a linear head's weights; this run has none")
        logits = tau_norm_logits(outputs.features, outputs.weight, tau_norm)
    logits = posthoc_adjust(logits, outputs.class_counts, logit_tau)
    t = np.asarray(temperature, dtype=np.float64)
    if np.any(t <= 0):
        raise ValueError(f"temperature={temperature} is out of range; allowed: > 0")
    return logits / t


def sweep_tau_norm(outputs: Outputs, taus: np.ndarray | list[float]) -> list[dict[str, Any]]:
    """Balanced / many / medium / few accuracy of the τ-normalised classifier for each τ."""
    from ltlib.metrics import evaluate

    rows = []
    for tau in taus:
        e = evaluate(adjust(outputs, tau_norm=float(tau)), outputs.labels, outputs.class_counts)
        rows.append({"tau": float(tau), **{k: e[k] for k in ("accuracy", "balanced_accuracy", "many", "medium", "few", "ece")}})
    return rows


class PosthocLogits(torch.nn.Module):
    """The evaluation's post-hoc adjustments as a layer (what :func:`adjust` does at temperature 1):
    τ-norm replaces the logits by f · w_c / ‖w_c‖^τ, then logit adjustment subtracts τ·log π_c.

    ``forward(logits, features, weight)`` takes the head's live weight, so the layer follows the head it sits on.
    """

    shift: torch.Tensor

    def __init__(self, class_counts: np.ndarray, tau_norm: float | None = None, logit_tau: float = 0.0) -> None:
        super().__init__()
        self.tau_norm, self.logit_tau = tau_norm, logit_tau
        # The prior in float64 as posthoc_adjust computes it, rounded once.
        shift = posthoc_adjust(np.zeros((1, len(class_counts))), class_counts, logit_tau)
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, features: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        if self.tau_norm is not None:
            if weight is None:
                raise ValueError("tau_norm needs a linear head's weights; this model's head has none")
            logits = features @ (weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12) ** self.tau_norm).T
        return logits + self.shift if self.logit_tau else logits
