"""Long-tail losses, each registered by name with its paper and formula.

``build(name, class_counts, **params)`` returns an ``nn.Module``; ``loss(logits, targets)`` is the
mean over the batch. Every loss computes per-sample values (``reduction="none"``) so Mixup-style
methods can mix two label sets per sample, and carries per-class weights that schedules such as
DRW set during training (all ones by default; the weighted mean is Σ w_y ℓ / Σ w_y, as
``F.cross_entropy(weight=…)`` does).

Every loss is called the same way, ``loss(logits, targets, reduction, features=…, domains=…)``:
callers always pass the batch's penultimate features and domain ids (None when there are none), and
the base class hands them on only to a loss whose traits include "features" / "domains". A loss that
needs a particular classifier head declares it as a trait ("cosine head", "experts head"), read back
as ``head`` / ``head_params`` (LDAM: the cosine head with scale s); the training loop builds the
model accordingly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltlib.registry import Check, Interval, Registry, check_range
from ltlib.samplers import TALLY

if TYPE_CHECKING:
    from ltlib.models import Classifier

LOSSES = Registry("loss", fixed=("class_counts",), extensions=("ltlib.autobalance", "ltlib.contrastive"))

# Ranges shared by many entries.
NON_NEGATIVE = Interval(0, None)
POSITIVE = Interval(0, None, closed="neither")
UNIT = Interval(0, 1, closed="left")  # [0, 1): β of effective numbers, a momentum
# Why a loss runs eagerly, not inside the captured CUDA-graph step.
EAGER_INPUTS = "needs per-step inputs or hooks the graph does not capture"


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


def batch_objective(
    loss_fn: Loss,
    logits: torch.Tensor,
    y: torch.Tensor,
    y_b: torch.Tensor | None = None,
    lam: torch.Tensor | None = None,
    *,
    features: torch.Tensor | None = None,
    domains: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A batch's loss, as every engine computes it: lam·ℓ(z, y) + (1 − lam)·ℓ(z, y_b) per sample for a
    mixed batch (``y_b``), times per-sample ``weight`` (Open-sampling's noise images), then the mean —
    or the optimiser's own ``reduce`` of the per-sample values (ABSGD's attention weights).
    """
    extra = {"features": features, "domains": domains}
    if y_b is None and weight is None and reduce is None:
        return loss_fn(logits, y, **extra)
    if y_b is None:
        values = loss_fn(logits, y, reduction="none", **extra)
    else:
        assert lam is not None, "a mixed batch (y_b) comes with its mixing weights lam"
        values = lam * loss_fn(logits, y, reduction="none", **extra) + (1 - lam) * loss_fn(logits, y_b, reduction="none", **extra)
    if weight is not None:
        values = weight * values
    return values.mean() if reduce is None else reduce(values)


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

    The contract is the registry entry's traits (``self.traits``, set by ``LOSSES.register``):
    "features" makes ``forward`` pass the penultimate features on as ``per_sample(…, features=)``,
    "domains" the batch's domain ids as ``domains=`` (multi-domain datasets); "epoch hook" marks an
    ``on_epoch_start(epoch, state)`` that changes the loss with the epoch; "cosine head" / "experts
    head" the classifier head it trains with.
    """

    traits: frozenset[str] = frozenset()  # replaced on each registered class by its entry's traits
    # Buffers (``register_buffer`` in ``__init__``), declared for the type checker.
    class_counts: torch.Tensor
    class_weight: torch.Tensor
    # A loss with the "validation split" trait sets the share of the training set it holds out when
    # ``Config.val_fraction`` is 0 (AutoBalance: 0.2).
    default_val_fraction: ClassVar[float]

    def __init__(self, class_counts: np.ndarray | list[int]) -> None:
        super().__init__()
        counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float32)
        if counts.ndim != 1 or len(counts) < 2 or bool((counts < 0).any()):
            raise ValueError(f"class_counts={list(np.asarray(class_counts))} must list >= 2 non-negative counts")
        self.register_buffer("class_counts", counts)
        self.register_buffer("class_weight", torch.ones_like(counts))

    def attach(self, model: Classifier) -> None:
        """Build the loss's own layers, sized by ``model`` (losses with the "own parameters" trait); a no-op here.

        Called by the loop before the optimiser is made, so those layers train with the model.
        """

    @property
    def head(self) -> str:
        """The classifier head this loss trains with: "cosine", "experts" or "linear" (from its traits)."""
        if "cosine head" in self.traits:
            return "cosine"
        return "experts" if "experts head" in self.traits else "linear"

    @property
    def head_params(self) -> dict[str, Any]:
        return {}

    @property
    def needs_features(self) -> bool:
        """True when the loss reads the batch's penultimate features (the "features" trait)."""
        return "features" in self.traits

    @property
    def needs_domains(self) -> bool:
        """True when the loss reads the batch's domain ids (the "domains" trait)."""
        return "domains" in self.traits

    @property
    def log_prior(self) -> torch.Tensor:
        """log π_c with π the training class prior (a count of 0 is treated as 1 to stay finite)."""
        n = self.class_counts.clamp_min(1.0)
        return (n / n.sum()).log()

    def set_class_weight(self, weight: torch.Tensor | np.ndarray) -> None:
        self.class_weight.copy_(torch.as_tensor(np.asarray(weight), dtype=torch.float32))

    def sample_weight(self, targets: torch.Tensor) -> torch.Tensor:
        """Per-sample class weight w_y; for multi-label (B, C) targets the mean weight of the positive classes."""
        if targets.ndim == 1:
            return self.class_weight[targets]
        return (targets * self.class_weight).sum(1) / targets.sum(1).clamp_min(1.0)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sample loss values (B,). A loss with the "features" / "domains" trait adds the keyword-only
        ``features: torch.Tensor | None = None`` / ``domains: …`` parameters, which ``forward`` always fills."""
        raise NotImplementedError

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        reduction: str = "mean",
        *,
        features: torch.Tensor | None = None,
        domains: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean loss (``reduction="mean"``) or per-sample weighted values (``"none"``).

        ``features`` (penultimate, (B, D)) and ``domains`` ((B,) domain ids) may always be passed;
        they reach ``per_sample`` only when the loss's traits include "features" / "domains".
        """
        inputs: dict[str, torch.Tensor] = {}
        if "features" in self.traits:
            if features is None:
                raise ValueError(f"{self._name()} needs features=: the penultimate features of the batch")
            inputs["features"] = features
        if "domains" in self.traits:
            if domains is None:
                raise ValueError(f"{self._name()} needs a dataset with domains, e.g. digits-domains; it got domains=None")
            inputs["domains"] = domains
        logits = logits.float()
        w = self.sample_weight(targets)
        values = w * self.per_sample(logits, targets, **inputs)
        if reduction == "none":
            return values
        return values.sum() / w.sum()

    def _name(self) -> str:
        """The registered name of this loss (for messages), else its class name."""
        return next((e.name for e in LOSSES.entries() if e.obj is type(self)), type(self).__name__)


@LOSSES.register("ce", paper="cross-entropy (softmax) loss")
class CrossEntropy(Loss):
    """Plain softmax cross-entropy: ℓ = −log softmax(z)_y."""

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, reduction="none")


@LOSSES.register("focal", paper="Lin, Goyal, Girshick, He & Dollár, Focal Loss, ICCV 2017", constraints={"gamma": NON_NEGATIVE})
class Focal(Loss):
    """Focal loss: ℓ = −(1 − p_y)^γ · log p_y (γ = 2 as in the paper; γ = 0 is cross-entropy)."""

    def __init__(self, class_counts: np.ndarray | list[int], gamma: float = 2.0) -> None:
        super().__init__(class_counts)
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


def ldam_margins(class_counts: torch.Tensor, max_m: float) -> torch.Tensor:
    """LDAM's class margins Δ_c ∝ n_c^(−1/4), scaled so the largest (rarest class) is ``max_m``."""
    m = class_counts.clamp_min(1.0) ** -0.25
    return m * (max_m / m.max())


def target_shifted_ce(logits: torch.Tensor, targets: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-sample −log softmax(z − shift_i·e_y)_y: cross-entropy with the target logit lowered by ``shift``."""
    return F.cross_entropy(logits - F.one_hot(targets, logits.shape[1]) * shift[:, None], targets, reduction="none")


def sample_margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """z_y − max_{j≠y} z_j per sample (positive when the sample is classified correctly)."""
    target = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(targets, logits.shape[1]).bool(), float("-inf"))
    return target - others.max(1).values


@LOSSES.register(
    "ldam",
    paper="Cao, Wei, Gaidon, Arechiga & Ma, LDAM, NeurIPS 2019",
    traits=("cosine head",),
    constraints={"max_m": NON_NEGATIVE, "s": POSITIVE},
)
class LDAM(Loss):
    """Label-distribution-aware margin: ℓ = −log softmax(s·(cos − Δ_y·e_y))_y, Δ_c ∝ n_c^(−1/4).

    Margins are scaled so the largest is ``max_m`` (0.5). As in the official code the classifier is
    cosine-normalised and the scale s = 30 multiplies the margin-shifted cosines; here the head
    applies s, so the loss subtracts s·Δ_y from the target logit. The paper trains it with deferred
    re-weighting (``--schedule drw``); alone it is close to CE on small data.
    """

    margins: torch.Tensor

    def __init__(self, class_counts: np.ndarray | list[int], max_m: float = 0.5, s: float = 30.0) -> None:
        super().__init__(class_counts)
        self.register_buffer("margins", ldam_margins(self.class_counts, max_m))
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
    traits=("experts head",),
    constraints={"lambdas": Check(lambda v: len(v) > 0, "with one test-prior exponent per expert (at least one)"), "s": POSITIVE},
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

    expert_bias: torch.Tensor

    def __init__(self, class_counts: np.ndarray | list[int], lambdas: tuple[float, ...] = (1.0, 0.0, -1.0), s: float = 30.0) -> None:
        super().__init__(class_counts)
        lambdas = tuple(float(v) for v in np.atleast_1d(lambdas))
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


@LOSSES.register(
    "class_balanced",
    paper="Cui, Jia, Lin, Song & Belongie, Class-Balanced Loss Based on Effective Number of Samples, CVPR 2019",
    constraints={"beta": UNIT, "gamma": NON_NEGATIVE},
)
class ClassBalanced(Loss):
    """Class-balanced loss: each sample weighted by (1 − β)/(1 − β^n_y), the inverse effective number.

    w_c = (1 − β)/(1 − β^n_c), normalised to Σ_c w_c = C as in the official code; β = 0.9999.
    ``base`` picks the loss being weighted:
      softmax: ℓ = w_y · (−log softmax(z)_y);
      sigmoid: ℓ = w_y · Σ_c BCE(z_c, 1[c = y])  (one-vs-all sigmoids, summed over classes);
      focal:   ℓ = w_y · Σ_c (1 − p_c)^γ · BCE(z_c, 1[c = y]),  p_c = σ(z_c) if c = y else 1 − σ(z_c).
    The batch loss is Σ_i ℓ_i / B: the official code divides by the number of labels, not by Σ w.
    γ = 1.0 here (the paper tunes γ ∈ {0.5, 1, 2}; focal's own default is 2). The official code also
    initialises the last layer's bias to −log((1 − π)/π), a small prior π, for the sigmoid and focal variants;
    here the head keeps its usual initialisation (it is shared by every loss).
    """

    cb_weight: torch.Tensor

    def __init__(
        self,
        class_counts: np.ndarray | list[int],
        beta: float = 0.9999,
        base: Literal["softmax", "sigmoid", "focal"] = "softmax",
        gamma: float = 1.0,
    ) -> None:
        super().__init__(class_counts)
        weights = effective_number_weights(self.class_counts.clamp_min(1.0).numpy(), beta)
        self.register_buffer("cb_weight", torch.as_tensor(weights, dtype=torch.float32))
        self.base, self.gamma = base, gamma

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.base == "softmax":
            loss = F.cross_entropy(logits, targets, reduction="none")
        else:
            onehot = F.one_hot(targets, logits.shape[1]).float()
            bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
            if self.base == "focal":
                bce = (1 - torch.exp(-bce)) ** self.gamma * bce  # exp(−BCE) is p_c of the true label
            loss = bce.sum(1)
        return self.cb_weight[targets] * loss


@LOSSES.register(
    "logit_adjusted",
    paper="Menon, Jayasumana, Rawat, Jain, Veit & Kumar, Long-tail learning via logit adjustment, ICLR 2021",
    constraints={"tau": NON_NEGATIVE},
)
class LogitAdjusted(Loss):
    """Logit-adjusted loss: ℓ = −log softmax(z + τ·log π)_y, π the training class prior (τ = 1).

    Training-time counterpart of post-hoc adjustment (``Config.posthoc_tau``: z − τ·log π at test).
    With τ = 1 it equals Balanced Softmax (log π and log n differ by a constant that softmax ignores).
    The official code uses the same τ = 1 default and adds τ·log π to the logits inside the loss only.
    """

    def __init__(self, class_counts: np.ndarray | list[int], tau: float = 1.0) -> None:
        super().__init__(class_counts)
        self.tau = tau

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.tau * self.log_prior, targets, reduction="none")


@LOSSES.register(
    "cdt",
    paper="Ye, Chen, Zhan & Chao, Identifying and Compensating for Feature Deviation in Imbalanced Deep Learning, 2020",
    constraints={"gamma": NON_NEGATIVE},
)
class CDT(Loss):
    """Class-dependent temperatures: ℓ = −log softmax(z_c / a_c)_y with a_c = (n_max / n_c)^γ.

    Rare classes get a higher temperature during training only, which simulates the feature
    deviation of their test images and forces larger decision values for them; the test logits
    are the plain z. The paper tunes γ on validation data (CIFAR-10: γ ∈ [0, 0.4]); γ = 0.1 here.
    The 1/a_c factor also shrinks the rare classes' gradients, so CDT pays off only once training
    fits the data (on digits-LT it trails CE after 30 epochs and beats it after 100).
    """

    temperature: torch.Tensor

    def __init__(self, class_counts: np.ndarray | list[int], gamma: float = 0.1) -> None:
        super().__init__(class_counts)
        n = self.class_counts.clamp_min(1.0)
        self.register_buffer("temperature", (n.max() / n) ** gamma)
        self.gamma = gamma

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits / self.temperature, targets, reduction="none")


# The two variants of the maximum-margin loss: one paper, one head, one set of parameters.
MAX_MARGIN: dict[str, Any] = dict(
    paper="Kang, Vu & Yoo, Learning Imbalanced Datasets with Maximum Margin Loss, ICIP 2021",
    traits=("cosine head",),
    constraints={"max_m": NON_NEGATIVE, "gamma": NON_NEGATIVE, "s": POSITIVE},
)


@LOSSES.register("mm", **MAX_MARGIN)
class MaxMargin(LDAM):
    """Maximum-margin (hard MM) loss: the target cosine is lowered by a shift set from each sample's own margin.

    With d = cos_y − max_{j≠y} cos_j (the sample margin, no gradient) and one margin M = max_m for
    every class:
        shift = exp(−d − γ·M)  if d > 0 (correct, the shift shrinks as the margin grows),
        shift = exp(−|d| − M)  if d < 0 (wrong),  0 if d = 0;
        ℓ = −log softmax(s·(cos − shift·e_y))_y.
    Defaults are the official README's run (``--loss_type HMM --scale 19 --max_m 1.29 --gamma 1.528``,
    i.e. ``HMMLoss(ldam=False)``: the same M for every class); ``mm_ldam`` is the class-aware variant.
    The official ``HMMLoss.obj_margins`` takes max_{j≠y} over cos·(1 − e_y), i.e. also over a 0 at the
    target position, and reads the target column of the batch's *first* label for every sample; here d
    is the true per-sample margin.
    """

    def __init__(self, class_counts: np.ndarray | list[int], max_m: float = 1.29, gamma: float = 1.528, s: float = 19.0) -> None:
        super().__init__(class_counts, max_m=0.5, s=s)
        self.max_m, self.gamma = max_m, gamma

    def max_margin(self, targets: torch.Tensor) -> torch.Tensor | float:
        """M of each sample's class: one constant here."""
        return self.max_m

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            d = sample_margin(logits, targets) / self.s
            m = self.max_margin(targets)
            shift = torch.where(d > 0, torch.exp(-d - self.gamma * m), torch.exp(-d.abs() - m)) * (d != 0)
        return target_shifted_ce(logits, targets, self.s * shift)


@LOSSES.register("mm_ldam", **MAX_MARGIN)
class MaxMarginLDAM(MaxMargin):
    """Maximum-margin loss with class-aware margins (MM-LDAM): ``mm`` with M_y = max_m − Δ_y per class.

    Δ_y are LDAM's margins (∝ n_y^(−1/4), largest 0.5), so rare classes get the smaller M and thus the
    larger shift. Defaults are the official ``train.sh`` run ``hmm-ldam`` (``--loss_type HMM-LDAM
    --scale 26 --max_m 1.29 --gamma 1.528``, i.e. ``HMMLoss(ldam=True)``).
    """

    def __init__(self, class_counts: np.ndarray | list[int], max_m: float = 1.29, gamma: float = 1.528, s: float = 26.0) -> None:
        super().__init__(class_counts, max_m=max_m, gamma=gamma, s=s)

    def max_margin(self, targets: torch.Tensor) -> torch.Tensor | float:
        return self.max_m - self.margins[targets]


@LOSSES.register(
    "gml",
    paper="Zhou, Liu, Zhai, Jiang, Gao & Ji, Learning Towards the Largest Margins, ICLR 2022",
    traits=("cosine head",),
    constraints={"max_m": NON_NEGATIVE, "s": POSITIVE, "lambda_sm": NON_NEGATIVE, "lambda_zc": NON_NEGATIVE},
)
class GeneralizedMaxMargin(LDAM):
    """Generalised margin softmax with class margins, a sample-margin and a zero-centroid regulariser.

    ℓ = −log softmax(s·(cos − Δ_y·e_y))_y                     (margin softmax, LDAM class margins Δ)
        − λ_sm · (cos_y − max_{j≠y} cos_j)                   (sample-margin regulariser)
        + λ_zc · ‖(1/C) Σ_c w_c/‖w_c‖‖²                        (zero-centroid regulariser on the prototypes)
    The paper defines the class margin (smallest angle between prototypes) and the sample margin,
    and derives the sample-margin regulariser as a general tool and the zero-centroid regulariser
    for the class-imbalanced case (where rare-class prototypes otherwise drift together), both added
    to an existing margin loss; here they sit on LDAM's margin softmax. The prototypes are the cosine
    head's weights, picked up in ``on_epoch_start``. λ_sm = λ_zc = 1 here (the paper tunes them per
    task); its official code was not available to us.
    """

    def __init__(
        self, class_counts: np.ndarray | list[int], max_m: float = 0.5, s: float = 30.0, lambda_sm: float = 1.0, lambda_zc: float = 1.0
    ) -> None:
        super().__init__(class_counts, max_m=max_m, s=s)
        self.lambda_sm, self.lambda_zc = lambda_sm, lambda_zc
        self._prototypes: tuple[torch.Tensor, ...] = ()  # a tuple, so the head's weight is not re-registered here

    def attach(self, model: Classifier) -> None:
        # The class prototypes are the cosine head's weight (the same tensor all run, also in a CUDA graph).
        self._prototypes = (head_weight(model),)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = super().per_sample(logits, targets) - self.lambda_sm * sample_margin(logits, targets) / self.s
        if self._prototypes:
            centroid = F.normalize(self._prototypes[0].float(), dim=1).mean(0)
            loss = loss + self.lambda_zc * centroid.square().sum()
        return loss


def head_weight(model: Classifier) -> torch.Tensor:
    """The weight (C, D) of ``model.head``, the classifier head (a cosine head's class prototypes)."""
    weight = model.head.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"the model's head has no weight tensor: {type(weight).__name__}")
    return weight


def simplex_prototypes(num_classes: int, dim: int, seed: int = 0, steps: int = 300) -> torch.Tensor:
    """C unit vectors in R^dim as far apart as possible: a regular simplex (pairwise cosine −1/(C − 1)) when dim ≥ C.

    There, the centred basis vectors e_c − 1/C, normalised, turned by a fixed random rotation into
    R^dim: spread over all dims, so non-negative (post-ReLU) features with a few dead units can still
    point at every prototype (without the rotation PAL did not train on digits). When dim < C the
    simplex does not fit; the prototypes then minimise a smooth maximum (log-sum-exp, temperature
    0.01) of the pairwise cosines with Adam, from a seeded random start.
    """
    gen = torch.Generator().manual_seed(seed)
    if dim >= num_classes:
        rotation, _ = torch.linalg.qr(torch.randn(dim, num_classes, generator=gen))
        return F.normalize(torch.eye(num_classes) - 1.0 / num_classes, dim=1) @ rotation.T
    protos = torch.randn(num_classes, dim, generator=gen).requires_grad_(True)
    optimizer = torch.optim.Adam([protos], lr=0.05)
    off_diagonal = ~torch.eye(num_classes, dtype=torch.bool)
    for _ in range(steps):
        unit = F.normalize(protos, dim=1)
        smooth_max = 0.01 * torch.logsumexp((unit @ unit.T)[off_diagonal] / 0.01, dim=0)
        optimizer.zero_grad()
        smooth_max.backward()
        optimizer.step()
    return F.normalize(protos.detach(), dim=1)


@LOSSES.register(
    "pal",
    paper="Zhou et al., Prototype-Anchored Learning for Learning with Imperfect Annotations, ICML 2022",
    traits=("cosine head",),
    constraints={"max_m": NON_NEGATIVE, "s": POSITIVE},
)
class PrototypeAnchored(LDAM):
    """Prototype-anchored learning: prototypes fixed to a regular simplex, margin softmax on the cosines.

    The paper shows the minimum sample margin is maximised when the class prototypes are anchored
    at maximally separated points (pairwise cosine −1/(C − 1)); only the features are learned. Here
    the cosine head's weight is set to the simplex (``simplex_prototypes``; optimised spread-out
    points when the feature dim is below C) and frozen (no gradient, no weight decay) at the start of
    training. PAL plugs into margin-based losses; the loss on top here is the class-aware one of this
    library, LDAM's margin softmax (s = 30, largest margin 0.5): ℓ = −log softmax(s·(cos(f, p) − Δ_y·e_y))_y.
    """

    def attach(self, model: Classifier) -> None:
        weight = head_weight(model)
        if weight.requires_grad:
            with torch.no_grad():
                weight.copy_(simplex_prototypes(*weight.shape).to(weight.device))
            weight.requires_grad_(False)


@LOSSES.register(
    "coupling_regulation",
    paper="Xu, Cheng, Zhang, Wu, Shao, Liu, Shen, Yao & Xu, Phased Progressive Learning with Coupling-Regulation-Imbalance Loss, 2022",
    traits=("cosine head", "epoch hook"),
    constraints={
        "max_m": NON_NEGATIVE,
        "s": POSITIVE,
        "gamma": NON_NEGATIVE,
        "beta": UNIT,
        "phase_start": Interval(0, 1),
        "phase_end": Interval(0, 1),
    },
)
class CouplingRegulation(LDAM):
    """Coupling-regulation-imbalance loss: focal-modulated LDAM with class-balanced correction, phased in progressively.

    With p = softmax(s·(cos − Δ_y·e_y))_y (LDAM margins Δ: quantity imbalance) and the focal factor
    (1 − p)^γ (classification difficulty), ℓ = w_y(t) · (−(1 − p)^γ · log p). The correction term
    w_y(t) = (1 − α_t) + α_t·w^CB_y re-weights by the effective number (β = 0.9999, Σ w^CB = C); the
    phased progressive schedule (``on_epoch_start``) moves α_t linearly from 0 to 1 between
    ``phase_start`` and ``phase_end`` (fractions of the epochs), a smooth version of DRW's switch that
    moves the emphasis from representation learning to the classifier (it sets the class weights
    itself, after any schedule's hook: do not combine it with ``--schedule drw``). γ = 1 is the focal γ
    of the LDAM-DRW official code. The paper's code is not released and its text also credits the
    correction with handling outliers; that part could not be checked and is not implemented
    (a per-sample down-weighting of very unlikely samples that we tried collapsed training at s = 30).
    """

    def __init__(
        self,
        class_counts: np.ndarray | list[int],
        max_m: float = 0.5,
        s: float = 30.0,
        gamma: float = 1.0,
        beta: float = 0.9999,
        phase_start: float = 0.5,
        phase_end: float = 0.8,
    ) -> None:
        super().__init__(class_counts, max_m=max_m, s=s)
        if phase_end < phase_start:
            raise ValueError(f"phase_end={phase_end} is out of range; allowed: >= phase_start={phase_start}")
        self.gamma, self.phase_start, self.phase_end = gamma, phase_start, phase_end
        self.cb_weight = effective_number_weights(self.class_counts.clamp_min(1.0).numpy(), beta)

    def progress(self, epoch: int, epochs: int) -> float:
        """Share α ∈ [0, 1] of the re-weighting at ``epoch`` (0 up to ``phase_start``, 1 from ``phase_end``)."""
        t = epoch / max(epochs, 1)
        if self.phase_end <= self.phase_start:
            return float(t >= self.phase_end)
        return float(np.clip((t - self.phase_start) / (self.phase_end - self.phase_start), 0.0, 1.0))

    def on_epoch_start(self, epoch: int, state: Any) -> None:
        alpha = self.progress(epoch, state.cfg.epochs)
        self.set_class_weight((1 - alpha) + alpha * self.cb_weight)
        state.log["reweight_alpha"] = alpha

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = -super().per_sample(logits, targets)
        return -((1 - logp.exp()) ** self.gamma) * logp


@LOSSES.register(
    "distribution_balanced",
    paper="Wu, Huang, Liu, Wang & Lin, Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed Datasets, ECCV 2020",
    constraints={
        "map_alpha": NON_NEGATIVE,
        "map_beta": NON_NEGATIVE,
        "map_mu": NON_NEGATIVE,
        "neg_scale": POSITIVE,
        "init_bias": NON_NEGATIVE,
        "gamma": NON_NEGATIVE,
        "balance": POSITIVE,
    },
)
class DistributionBalanced(Loss):
    """Distribution-balanced loss (multi-label, sigmoid): re-balanced weights + negative-tolerant regularisation.

    Targets are (B, C) multi-label 0/1 floats, or integer labels (read as one-hot). Per class c of sample i:
      re-balancing:  r_ic = (1/n_c) / Σ_{k: y_ik=1} (1/n_k),  w_ic = α + σ(β·(r_ic − μ))   (α 0.1, β 10, μ 0.2);
      logit shift:   z′ = z + κ·b̂_c/λ with b̂_c = −log(N/n_c − 1), the prior's logit (κ 0.05, λ 2);
      negative-tolerant BCE:  positives w·log(1 + e^(−z′)),  negatives (w/λ)·log(1 + e^(λz′));
      focal factor (1 − p_t)^γ with p_t from the same (scaled) logit, γ = 2, times ``balance`` = 2;
      ℓ_i = mean over the C classes.
    Defaults are the official COCO-MLT/VOC-MLT config (``init_bias`` 0.05, ``neg_scale`` 2). N is the
    number of training samples; it defaults to Σ n_c, right for single-label data — for multi-label
    data pass ``num_samples``. The paper's ν = κ·b̂ appears in the code, as here, divided by λ before the
    negatives are scaled by λ. The weights r are the ratio of class-aware to instance sampling
    frequency: the paper (and its configs) train with a class-aware sampler, and with plain instance
    sampling the loss favours the head classes (use ``--sampler class_balanced``).
    """

    freq_inv: torch.Tensor
    logit_shift: torch.Tensor

    def __init__(
        self,
        class_counts: np.ndarray | list[int],
        map_alpha: float = 0.1,
        map_beta: float = 10.0,
        map_mu: float = 0.2,
        neg_scale: float = 2.0,
        init_bias: float = 0.05,
        gamma: float = 2.0,
        balance: float = 2.0,
        num_samples: int | None = None,
    ) -> None:
        super().__init__(class_counts)
        n = self.class_counts.clamp_min(1.0)
        total = float(n.sum()) if num_samples is None else float(num_samples)
        if total <= float(n.max()):
            raise ValueError(f"num_samples={num_samples} is out of range; allowed: > the largest class count {int(n.max())}")
        self.register_buffer("freq_inv", 1.0 / n)
        self.register_buffer("logit_shift", -torch.log(total / n - 1) * init_bias / neg_scale)
        self.map_alpha, self.map_beta, self.map_mu = map_alpha, map_beta, map_mu
        self.neg_scale, self.gamma, self.balance = neg_scale, gamma, balance

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = F.one_hot(targets, logits.shape[1]).float() if targets.ndim == 1 else targets.float()
        repeat = (y * self.freq_inv).sum(1, keepdim=True).clamp_min(1e-12)
        weight = torch.sigmoid(self.map_beta * (self.freq_inv / repeat - self.map_mu)) + self.map_alpha
        z = logits + self.logit_shift
        z = torch.where(y > 0, z, z * self.neg_scale)
        weight = torch.where(y > 0, weight, weight / self.neg_scale)
        bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        loss = self.balance * (1 - torch.exp(-bce)) ** self.gamma * weight * bce
        return loss.mean(1)


@LOSSES.register(
    "ot_reweight",
    paper="Guo et al., Learning to Re-weight Examples with Optimal Transport for Imbalanced Classification, NeurIPS 2022",
    traits=("features", "epoch hook"),
    constraints={"meta_per_class": Interval(1, None), "eps": POSITIVE, "label_cost": NON_NEGATIVE},
    eager=EAGER_INPUTS,
)
class OTReweight(Loss):
    """Optimal-transport re-weighting: batch samples weighted to transport best onto a small balanced meta set.

    The batch is a distribution Σ_i w_i δ_(f_i, y_i) with unknown weights w on the simplex, the meta
    set a balanced one Σ_j q_j δ_(g_j, y_j) (each class mass 1/C). The cost is
    C_ij = 1 − cos(f_i, g_j) + ``label_cost``·1[y_i ≠ y_j] (features f, g: the penultimate layer). The
    weights minimise the entropic OT distance min_w min_{P ≥ 0, P^T1 = q, P1 = w} ⟨C, P⟩ − ε·H(P);
    with w free the row constraint drops and the minimiser is closed-form: every meta point sends
    its mass over the batch by a softmax of −C_ij/ε, P_ij = q_j·softmax_i(−C_ij/ε), and w_i = Σ_j P_ij
    (one Sinkhorn half-step from w = 1 is exact here). ℓ = B·w_i·CE_i, so the batch mean is Σ_i w_i·CE_i.
    Differences from the paper: its weights are per training example, learned by gradient steps on
    the OT loss across iterations with features of a first-stage model; here they are recomputed
    per batch, features detached. The meta set is carved from the training set (``meta_per_class``
    images per class, 10 being the usual CIFAR-LT meta-set size, fewer if a class has fewer; the
    images stay in the training set too) at the first epoch, and its features are recomputed at the
    start of each epoch (``on_epoch_start``).
    """

    def __init__(self, class_counts: np.ndarray | list[int], meta_per_class: int = 10, eps: float = 0.1, label_cost: float = 1.0) -> None:
        super().__init__(class_counts)
        self.meta_per_class, self.eps, self.label_cost = int(meta_per_class), eps, label_cost
        self.meta_index: torch.Tensor | None = None
        self.meta_features: torch.Tensor | None = None
        self.meta_labels: torch.Tensor | None = None

    def set_meta(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Set the balanced meta set's features (M, D) and integer labels (M,)."""
        self.meta_features, self.meta_labels = features.detach().float(), labels

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, state: Any) -> None:
        y = state.data.y_train
        if self.meta_index is None:
            rng = np.random.default_rng(state.cfg.seed)
            picks = [rng.permutation(np.flatnonzero(y.numpy() == c))[: self.meta_per_class] for c in range(len(self.class_counts))]
            self.meta_index = torch.as_tensor(np.concatenate(picks), dtype=torch.long)
        model = state.model
        was_training = model.training
        model.eval()
        x = state.inputs(state.data.x_train[self.meta_index])
        self.set_meta(model.features(x), y[self.meta_index].to(state.device))
        model.train(was_training)

    def batch_weights(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The OT weights w (B,) of a batch, summing to 1; uniform when no meta set is set yet."""
        if self.meta_features is None or self.meta_labels is None:  # set together by set_meta
            return torch.full((len(targets),), 1.0 / len(targets), device=features.device)
        f = F.normalize(features.detach().float(), dim=1)
        g = F.normalize(self.meta_features.to(f.device), dim=1)
        meta_y = self.meta_labels.to(targets.device)
        cost = 1 - f @ g.T + self.label_cost * (targets[:, None] != meta_y[None, :]).float()
        # q_j = 1/(C_meta · m_c): every class present in the meta set carries the same mass.
        per_class = torch.bincount(meta_y, minlength=len(self.class_counts)).float()
        q = 1.0 / (per_class[meta_y] * int((per_class > 0).sum()))
        plan = q[None, :] * torch.softmax(-cost / self.eps, dim=0)
        return plan.sum(1)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor, *, features: torch.Tensor | None = None) -> torch.Tensor:
        assert features is not None, "forward passes features= (the loss's 'features' trait)"
        w = self.batch_weights(features, targets)
        return len(targets) * w * F.cross_entropy(logits, targets, reduction="none")


@LOSSES.register(
    "tally_proto",
    paper=TALLY,
    traits=("domains", "features"),
    constraints={"weight": NON_NEGATIVE, "momentum": UNIT, "scale": POSITIVE},
    eager=EAGER_INPUTS,
)
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

    def __init__(self, class_counts: np.ndarray | list[int], weight: float = 1.0, momentum: float = 0.8, scale: float = 10.0) -> None:
        super().__init__(class_counts)
        self.weight, self.momentum, self.scale = weight, momentum, scale
        # Per (domain, class) momentum means and which cells have been seen; sized on first use.
        self.cells: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        # A mixed batch calls the loss twice with the same features: update the cells once.
        self._updated_for: weakref.ref | None = None

    @property
    def prototypes(self) -> torch.Tensor:
        """P_c = mean over the domains seen with class c of M_(d,c); zeros for a class not seen yet."""
        assert self.cells is not None and self.seen is not None, "no batch seen yet: per_sample updates the cells first"
        seen = self.seen.to(self.cells.dtype)[..., None]
        return (self.cells * seen).sum(0) / seen.sum(0).clamp_min(1.0)

    def _update(self, n: torch.Tensor, targets: torch.Tensor, domains: torch.Tensor) -> None:
        num_classes, num_domains = len(self.class_counts), int(domains.max()) + 1
        if self.cells is None or num_domains > len(self.cells):  # a new domain: grow the table
            grown = torch.zeros(num_domains, num_classes, n.shape[1], device=n.device)
            seen = torch.zeros(num_domains, num_classes, dtype=torch.bool, device=n.device)
            if self.cells is not None and self.seen is not None:  # grown together
                grown[: len(self.cells)], seen[: len(self.seen)] = self.cells, self.seen
            self.cells, self.seen = grown, seen
        assert self.seen is not None, "sized together with the cells"
        flat, flat_seen = self.cells.view(-1, n.shape[1]), self.seen.view(-1)
        flat_seen |= momentum_update(flat, flat_seen, n, domains * num_classes + targets, self.momentum)

    def per_sample(
        self, logits: torch.Tensor, targets: torch.Tensor, *, features: torch.Tensor | None = None, domains: torch.Tensor | None = None
    ) -> torch.Tensor:
        assert features is not None and domains is not None, "forward passes features= and domains= (the loss's traits)"
        if len(domains) != len(targets):
            raise ValueError(
                "tally_proto needs one domain per sample; a mixing method that adds samples (open_sampling) cannot be combined"
            )
        n = F.layer_norm(features, features.shape[1:])
        if self._updated_for is None or self._updated_for() is not features:
            with torch.no_grad():
                self._update(n.detach(), targets, domains.to(n.device))
            self._updated_for = weakref.ref(features)
        proto_logits = self.scale * F.linear(F.normalize(n, dim=1), F.normalize(self.prototypes, dim=1))
        return F.cross_entropy(logits, targets, reduction="none") + self.weight * F.cross_entropy(proto_logits, targets, reduction="none")
