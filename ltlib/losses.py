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

import weakref
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltlib.registry import Registry, check_range

LOSSES = Registry("loss", fixed=("class_counts",))
TALLY = "Yang, Yao, Zhou & Finn, Multi-Domain Long-Tailed Learning by Augmenting Disentangled Representations, TMLR 2023"


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


def momentum_update(
    prototypes: torch.Tensor, seen: torch.Tensor, values: torch.Tensor, groups: torch.Tensor, momentum: float
) -> torch.Tensor:
    """In place: P_g ← m·P_g + (1 − m)·(mean of ``values`` in group g) for each group g in the batch.

    A group not yet ``seen`` takes the batch mean as it is. Returns the mask of groups present.
    """
    n = torch.bincount(groups, minlength=len(prototypes)).to(values.dtype)
    sums = torch.zeros_like(prototypes).index_add_(0, groups, values)
    present = n > 0
    shape = (-1,) + (1,) * (values.dim() - 1)
    means = sums[present] / n[present].reshape(shape)
    keep = torch.where(seen[present], momentum, 0.0).to(values.dtype).reshape(shape)
    prototypes[present] = keep * prototypes[present] + (1 - keep) * means
    return present


class Loss(nn.Module):
    """Base class: subclasses implement ``per_sample(logits, targets)``.

    ``needs_features = True`` makes the training loop pass the penultimate features as
    ``features=``, ``needs_domains = True`` the batch's domain ids as ``domains=`` (multi-domain
    datasets); ``on_epoch_start(epoch, state)`` (optional) lets a loss change with the epoch.
    """

    head: str = "linear"
    needs_features: bool = False
    needs_domains: bool = False

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


@LOSSES.register("tally_proto", paper=TALLY, needs=("domains",))
class TallyPrototype(Loss):
    """Cross-entropy plus a cosine classifier on TALLY's domain-invariant class prototypes (domain-averaged momentum means).

    With n = (f − mean f)/std f the penultimate features normalised per sample (TALLY's removal
    of instance statistics, here over the feature vector), each (domain, class) cell keeps a
    momentum mean, updated once per forward pass as M_(d,c) ← m·M_(d,c) + (1 − m)·mean of n over the
    batch's images of cell (d, c) (no gradient; a cell's first batch sets it). The class prototype
    averages the cells seen so far with equal weight per domain, P_c = mean_d M_(d,c), so a domain's
    share does not depend on how many images it has of the class — domain effects average out:

        ℓ = −log softmax(z)_y − w · log softmax(s · cos(n, P))_y

    m = 0.8 is the official code's momentum. In TALLY the prototype enters only through the
    augmentation (``tally_mix`` uses it there, on images); this loss is ltlib's classifier-side use
    of it, pulling each feature towards its class's domain-averaged prototype. It is not a term of
    the paper's objective, so ``w`` (weight) and ``s`` (scale, as a cosine classifier's) are
    ltlib's choices. With ``tally_mix`` the domain of a mixed image is that of its content image.
    """

    needs_features = True
    needs_domains = True

    def __init__(self, class_counts: np.ndarray | list[int], weight: float = 1.0, momentum: float = 0.8, scale: float = 10.0) -> None:
        super().__init__(class_counts)
        check_range("weight", weight, 0.0, float("inf"))
        check_range("momentum", momentum, 0.0, 1.0)
        check_range("scale", scale, 1e-6, float("inf"))
        self.weight, self.momentum, self.scale = weight, momentum, scale
        # Per (domain, class) momentum means and which cells have been seen; sized on first use.
        self.cells: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        # A mixed batch calls the loss twice with the same features: update the cells once.
        self._updated_for: weakref.ref | None = None

    @property
    def prototypes(self) -> torch.Tensor:
        """P_c = mean over the domains seen with class c of M_(d,c); zeros for a class not seen yet."""
        seen = self.seen.to(self.cells.dtype)[..., None]
        return (self.cells * seen).sum(0) / seen.sum(0).clamp_min(1.0)

    def _update(self, n: torch.Tensor, targets: torch.Tensor, domains: torch.Tensor) -> None:
        num_classes, num_domains = len(self.class_counts), int(domains.max()) + 1
        if self.cells is None or num_domains > len(self.cells):  # a new domain: grow the table
            grown = torch.zeros(num_domains, num_classes, n.shape[1], device=n.device)
            seen = torch.zeros(num_domains, num_classes, dtype=torch.bool, device=n.device)
            if self.cells is not None:
                grown[: len(self.cells)], seen[: len(self.seen)] = self.cells, self.seen
            self.cells, self.seen = grown, seen
        flat, flat_seen = self.cells.view(-1, n.shape[1]), self.seen.view(-1)
        flat_seen |= momentum_update(flat, flat_seen, n, domains * num_classes + targets, self.momentum)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor, domains: torch.Tensor | None) -> torch.Tensor:
        if domains is None:
            raise ValueError("tally_proto needs a dataset with domains, e.g. digits-domains")
        n = F.layer_norm(features, features.shape[1:])
        if self._updated_for is None or self._updated_for() is not features:
            with torch.no_grad():
                self._update(n.detach(), targets, domains.to(n.device))
            self._updated_for = weakref.ref(features)
        proto_logits = self.scale * F.linear(F.normalize(n, dim=1), F.normalize(self.prototypes, dim=1))
        return F.cross_entropy(logits, targets, reduction="none") + self.weight * F.cross_entropy(proto_logits, targets, reduction="none")
