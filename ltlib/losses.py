"""Long-tail losses, each registered by name with its paper and formula.

``build(name, class_counts, **params)`` returns an ``nn.Module``; ``loss(logits, targets)`` is the
mean over the batch. Every loss computes per-sample values (``reduction="none"``) so Mixup-style
methods can mix two label sets per sample, and carries per-class weights that schedules such as
DRW set during training (all ones by default; the weighted mean is Σ w_y ℓ / Σ w_y, as
``F.cross_entropy(weight=…)`` does).

A loss that needs a particular classifier head says so in ``head`` / ``head_params`` (LDAM uses
the cosine head with scale s); the training loop builds the model accordingly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltlib.registry import Registry, check_range

LOSSES = Registry("loss", fixed=("class_counts",))


def available() -> list[str]:
    """Names of all registered losses."""
    return LOSSES.available()


def build(name: str, class_counts: np.ndarray | list[int], **params: Any) -> Loss:
    """Build loss ``name`` for a training set with ``class_counts`` images per class."""
    return LOSSES.build(name, class_counts, **params)


def effective_number_weights(class_counts: np.ndarray | list[int], beta: float) -> np.ndarray:
    """Class-balanced weights w_c ∝ (1 − β) / (1 − β^n_c), normalised to sum to C (Cui et al. 2019)."""
    check_range("beta", beta, 0.0, 1.0)
    n = np.asarray(class_counts, dtype=np.float64)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return w / w.sum() * len(n)


class Loss(nn.Module):
    """Base class: subclasses implement ``per_sample(logits, targets)``.

    ``needs_features = True`` makes the training loop pass the penultimate features as
    ``features=``; ``on_epoch_start(epoch, state)`` (optional) lets a loss change with the epoch.
    """

    head: str = "linear"
    needs_features: bool = False

    def __init__(self, class_counts: np.ndarray | list[int]) -> None:
        super().__init__()
        counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float32)
        if counts.ndim != 1 or len(counts) < 2 or bool((counts < 0).any()):
            raise ValueError(f"class_counts={list(np.asarray(class_counts))} must list >= 2 non-negative counts")
        self.register_buffer("class_counts", counts)
        self.register_buffer("class_weight", torch.ones_like(counts))

    @property
    def head_params(self) -> dict[str, Any]:
        return {}

    @property
    def log_prior(self) -> torch.Tensor:
        """log π_c with π the training class prior (a count of 0 is treated as 1 to stay finite)."""
        n = self.class_counts.clamp_min(1.0)
        return (n / n.sum()).log()

    def set_class_weight(self, weight: torch.Tensor | np.ndarray) -> None:
        self.class_weight.copy_(torch.as_tensor(np.asarray(weight), dtype=torch.float32))

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor, **kw: Any) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", **kw: Any) -> torch.Tensor:
        """Mean loss (``reduction="mean"``) or per-sample weighted values (``"none"``); ``kw`` as documented per loss."""
        logits = logits.float()
        w = self.class_weight[targets]
        values = w * self.per_sample(logits, targets, **kw)
        if reduction == "none":
            return values
        return values.sum() / w.sum()


@LOSSES.register("ce", paper="cross-entropy (softmax) loss")
class CrossEntropy(Loss):
    """Plain softmax cross-entropy: ℓ = −log softmax(z)_y."""

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, reduction="none")


@LOSSES.register("focal", paper="Lin, Goyal, Girshick, He & Dollár, Focal Loss, ICCV 2017")
class Focal(Loss):
    """Focal loss: ℓ = −(1 − p_y)^γ · log p_y (γ = 2 as in the paper; γ = 0 is cross-entropy)."""

    def __init__(self, class_counts: np.ndarray | list[int], gamma: float = 2.0) -> None:
        super().__init__(class_counts)
        check_range("gamma", gamma, 0.0, float("inf"))
        self.gamma = gamma

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
        return -((1 - logp.exp()) ** self.gamma) * logp


@LOSSES.register("balanced_softmax", paper="Ren et al., Balanced Meta-Softmax, NeurIPS 2020")
class BalancedSoftmax(Loss):
    """Balanced Softmax: ℓ = −log softmax(z + log n)_y; the label-shift-aware softmax.

    Adds log n_c (equivalently log π_c, the constant cancels) to the logits during training only;
    at test time the plain logits estimate the balanced posterior.
    """

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.class_counts.clamp_min(1.0).log(), targets, reduction="none")


@LOSSES.register("ldam", paper="Cao, Wei, Gaidon, Arechiga & Ma, LDAM, NeurIPS 2019", needs=("cosine head",))
class LDAM(Loss):
    """Label-distribution-aware margin: ℓ = −log softmax(s·(cos − Δ_y·e_y))_y, Δ_c ∝ n_c^(−1/4).

    Margins are scaled so the largest is ``max_m`` (0.5). As in the official code the classifier is
    cosine-normalised and the scale s = 30 multiplies the margin-shifted cosines; here the head
    applies s, so the loss subtracts s·Δ_y from the target logit.
    """

    head = "cosine"

    def __init__(self, class_counts: np.ndarray | list[int], max_m: float = 0.5, s: float = 30.0) -> None:
        super().__init__(class_counts)
        check_range("max_m", max_m, 0.0, float("inf"))
        check_range("s", s, 1e-6, float("inf"))
        m = self.class_counts.clamp_min(1.0) ** -0.25
        self.register_buffer("margins", m * (max_m / m.max()))
        self.s = s

    @property
    def head_params(self) -> dict[str, Any]:
        return {"scale": self.s}

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        shift = F.one_hot(targets, logits.shape[1]) * (self.s * self.margins[targets])[:, None]
        return F.cross_entropy(logits - shift, targets, reduction="none")


@LOSSES.register(
    "balpoe",
    paper="Sanchez Aimar, Jonnarth, Felsberg & Kuhlmann, Balanced Product of Calibrated Experts for Long-Tailed Recognition, CVPR 2023",
    needs=("experts head",),
)
class BalPoE(Loss):
    """Balanced product of experts: expert k learns the logit-adjusted loss for test prior π^λ_k.

    ℓ = (1/K) Σ_k −log softmax(z_k + (1 − λ_k)·log π)_y, π the training prior. Expert k's optimum is
    z_k = log p(y|x) − (1 − λ_k)·log π + const, the posterior under the test prior π^λ_k; the test
    prediction is the mean of the expert logits (the experts head), whose bias is −(1 − λ̄)·log π, so
    with mean λ̄ = 0 the product of experts targets the balanced prior (the paper's Fisher-consistency
    condition). Defaults λ = (1, 0, −1), i.e. the official code's ``tau_list`` (0, 1, 2) = 1 − λ, with
    cosine-classifier experts (scale s = 30) as in the official CIFAR configs. The paper trains with
    Mixup for calibrated experts (official CIFAR-10 config: α = 0.8): use ``--mixing mixup``. The official
    code also gives each expert its own last two ResNet stages (RIDE-style); here the experts share the
    whole backbone and differ in their classifiers. Each expert's test logits are saved in the run as
    ``test_expert_logits`` (see :func:`ltlib.metrics.expert_per_class_accuracy`).
    """

    head = "experts"

    def __init__(self, class_counts: np.ndarray | list[int], lambdas: tuple[float, ...] = (1.0, 0.0, -1.0), s: float = 30.0) -> None:
        super().__init__(class_counts)
        lambdas = tuple(float(v) for v in np.atleast_1d(lambdas))
        if not lambdas:
            raise ValueError("lambdas=() is out of range; allowed: a list of one test-prior exponent per expert")
        check_range("s", s, 1e-6, float("inf"))
        self.lambdas, self.s = lambdas, s
        # Row k: the training-time bias (1 − λ_k)·log π of expert k.
        self.register_buffer("expert_bias", (1.0 - torch.tensor(lambdas))[:, None] * self.log_prior[None, :])

    @property
    def head_params(self) -> dict[str, Any]:
        return {"num_experts": len(self.lambdas), "scale": self.s}

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 3 or logits.shape[1] != len(self.lambdas):
            raise ValueError(
                f"loss 'balpoe' needs the experts head's (batch, {len(self.lambdas)}, classes) logits, got {tuple(logits.shape)}"
            )
        adjusted = logits + self.expert_bias
        k = adjusted.shape[1]
        per_expert = F.cross_entropy(adjusted.flatten(0, 1), targets.repeat_interleave(k), reduction="none")
        return per_expert.view(-1, k).mean(dim=1)
