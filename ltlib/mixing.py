"""Mixing and data-side augmentation applied to a training batch on the device.

A mixing method maps a batch ``(x, y)`` to ``(x', y_a, y_b, lam)``: the loss is
``lam·ℓ(z, y_a) + (1 − lam)·ℓ(z, y_b)`` per sample, so label mass always sums to one.
``lam`` is a tensor of shape (B,). ``none`` returns the batch unchanged with lam = 1.

A method may return more samples than it was given (Open-sampling appends noise images) and may
set ``batch_weight`` to per-sample loss multipliers for the batch it just returned (None = all 1).
Methods that cut and paste patches declare ``traits=("images",)``; the loop rejects them on
feature-vector datasets such as toy2d. Methods that draw a second batch through
``MixContext.draw_batch`` declare "second batch". Every method but ``none`` runs eagerly (its
entry's ``eager`` says why): its random draws happen outside the captured CUDA-graph step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ltlib import samplers
from ltlib.losses import momentum_update
from ltlib.models import cumulative_alpha, set_noise_mask
from ltlib.registry import Interval, Registry
from ltlib.samplers import TALLY

if TYPE_CHECKING:
    from ltlib.state import TrainState

MIXING = Registry("mixing", fixed=("class_counts",))


def available() -> list[str]:
    return MIXING.available()


@dataclass
class MixContext:
    """What a mixing method may use besides the batch: the class counts and a way to draw more data."""

    class_counts: np.ndarray
    generator: torch.Generator
    epoch: int = 0
    epochs: int = 1
    # draw_batch(class_probabilities, n) -> (x, y): an augmented batch from the training set.
    draw_batch: Callable[[np.ndarray, int], tuple[torch.Tensor, torch.Tensor]] | None = None
    # The model and loss being trained, for methods that perturb inputs with gradients (GAE).
    model: torch.nn.Module | None = None
    loss: torch.nn.Module | None = None
    # Multi-domain datasets: the number of domains, and the domain id of each sample of the
    # current batch (set by the loop each step).
    num_domains: int = 0
    domains: torch.Tensor | None = None


class Mixing:
    """Base class: subclasses implement ``__call__(x, y, ctx)``."""

    # Per-sample loss multipliers of the last returned batch (None: every sample weighs 1).
    batch_weight: torch.Tensor | None = None

    def __init__(self, class_counts: np.ndarray) -> None:
        self.class_counts = np.asarray(class_counts)
        self._constants: dict[tuple[str, str], torch.Tensor] = {}
        self._phase: bool | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, ctx: MixContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def constant(self, name: str, values: np.ndarray, device: torch.device) -> torch.Tensor:
        """``values`` as a float32 tensor on ``device``, copied once: a copy from the host inside a
        captured CUDA graph is not allowed (the graph engine's warm-up fills this cache before capture)."""
        key = (name, str(device))
        if key not in self._constants:
            self._constants[key] = torch.as_tensor(np.asarray(values), dtype=torch.float32, device=device)
        return self._constants[key]

    def switch_phase(self, active: bool, state: TrainState) -> None:
        """For a method that is on only in part of training: when it switches, ask for a fresh epoch
        runner (a captured graph holds the branch it was captured with)."""
        if self._phase is not None and active != self._phase:
            state.rebuild = True
        self._phase = active


def build(name: str, class_counts: np.ndarray, **params: Any) -> Mixing:
    return MIXING.build(name, class_counts, **params)


def sample_beta(alpha: float, generator: torch.Generator, device: torch.device, size: tuple[int, ...] = ()) -> torch.Tensor:
    """λ ~ Beta(α, α) of shape ``size`` (one by default), drawn with ``generator`` (gamma draws) so runs stay seeded."""
    a = torch.full((2, *size), float(alpha), device=device)
    g = torch._standard_gamma(a, generator=generator)
    return g[0] / g.sum(0)


@MIXING.register("none", paper="no mixing")
class NoMixing(Mixing):
    """No mixing: the batch is used as drawn."""

    def __call__(self, x, y, ctx):
        return x, y, y, torch.ones(len(y), device=x.device)


@MIXING.register(
    "mixup",
    paper="Zhang, Cisse, Dauphin & Lopez-Paz, mixup, ICLR 2018",
    constraints={"alpha": Interval(0, None, closed="neither")},
)
class Mixup(Mixing):
    """Mixup: x' = λx_i + (1−λ)x_j, label λ·y_i + (1−λ)·y_j, λ ~ Beta(α, α), one λ per batch."""

    def __init__(self, class_counts: np.ndarray, alpha: float = 1.0) -> None:
        super().__init__(class_counts)
        self.alpha = alpha

    def __call__(self, x, y, ctx):
        lam = sample_beta(self.alpha, ctx.generator, x.device)
        perm = torch.randperm(len(y), generator=ctx.generator, device=x.device)
        return lam * x + (1 - lam) * x[perm], y, y[perm], lam.expand(len(y))


def unmixed(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch as it is: both label sets y, lam = 1."""
    return x, y, y, torch.ones(len(y), device=x.device)


def draw_from(ctx: MixContext, sampler: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A second batch of ``n`` images drawn with a named class sampler through ``ctx.draw_batch``."""
    if ctx.draw_batch is None:
        raise ValueError("this mixing method draws a second batch; MixContext.draw_batch is required")
    return ctx.draw_batch(samplers.class_probabilities(sampler, ctx.class_counts), n)


def coin(p: float, ctx: MixContext, device: torch.device) -> torch.Tensor:
    """A device bool, True with probability p (one seeded draw per batch; none for p ≥ 1): no host
    synchronisation, so the choice can live inside a captured graph (used through ``torch.where``)."""
    if p >= 1:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.rand((), generator=ctx.generator, device=device) < p


def either(flag: torch.Tensor, mixed: tuple[torch.Tensor, ...], plain: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``mixed`` where the device bool ``flag`` holds, else ``plain``, element by element."""
    return tuple(torch.where(flag, a, b) for a, b in zip(mixed, plain))


def paste_box(x: torch.Tensor, source: torch.Tensor, lam: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix's box: paste a box of ``source`` with area ≈ (1 − λ)·H·W into ``x``; return x' and the kept area.

    As in the official ``rand_bbox``: side ratio √(1 − λ) (truncated to whole pixels), a uniform centre,
    the box clipped at the border; λ is then recomputed as the fraction of ``x`` that is kept.
    """
    if x.ndim != 4:
        raise ValueError(f"box pasting needs image batches (N, C, H, W); got shape {tuple(x.shape)}")
    h, w = x.shape[2], x.shape[3]
    # All on the device (no host synchronisation): the box as a mask instead of a slice.
    ratio = torch.sqrt(1 - lam)
    cut_h, cut_w = torch.floor(h * ratio).long(), torch.floor(w * ratio).long()
    cy = torch.randint(h, (1,), generator=generator, device=x.device)[0]
    cx = torch.randint(w, (1,), generator=generator, device=x.device)[0]
    y1, y2 = (cy - cut_h // 2).clamp(0, h), (cy + cut_h // 2).clamp(0, h)
    x1, x2 = (cx - cut_w // 2).clamp(0, w), (cx + cut_w // 2).clamp(0, w)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    box = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
    out = torch.where(box, source, x)
    kept = 1 - ((y2 - y1) * (x2 - x1)).float() / (h * w)
    return out, kept


@MIXING.register(
    "cutmix",
    paper="Yun, Han, Oh, Chun, Choe & Yoo, CutMix, ICCV 2019",
    traits=("images",),
    constraints={"alpha": Interval(0, None, closed="neither"), "prob": Interval(0, 1)},
)
class CutMix(Mixing):
    """CutMix: paste a random box of a shuffled image; label mass = the area each image keeps.

    λ ~ Beta(α, α) with α = 1, box side ratio √(1 − λ), then λ is corrected to the true kept area
    (the box is clipped at the border). One box per batch, as in the official code, which also
    exposes ``cutmix_prob`` (the chance a batch is mixed at all; here ``prob`` = 1).
    """

    def __init__(self, class_counts: np.ndarray, alpha: float = 1.0, prob: float = 1.0) -> None:
        super().__init__(class_counts)
        self.alpha, self.prob = alpha, prob

    def __call__(self, x, y, ctx):
        apply = coin(self.prob, ctx, x.device)
        perm = torch.randperm(len(y), generator=ctx.generator, device=x.device)
        mixed, lam = paste_box(x, x[perm], sample_beta(self.alpha, ctx.generator, x.device), ctx.generator)
        return either(apply, (mixed, y, y[perm], lam.expand(len(y))), unmixed(x, y))


@MIXING.register(
    "remix",
    paper="Chou, Chang, Pan, Wei & Juan, Remix: Rebalanced Mixup, ECCV Workshops 2020",
    constraints={"alpha": Interval(0, None, closed="neither"), "kappa": Interval(1, None), "tau": Interval(0, 1)},
)
class Remix(Mixing):
    """Remix: Mixup images, but give the whole label to the minority image when the counts differ enough.

    x' = λx_i + (1−λ)x_j, λ ~ Beta(α, α). Label weight λ_y on y_i: 0 if n_i/n_j ≥ κ and λ < τ;
    1 if n_i/n_j ≤ 1/κ and 1 − λ < τ; else λ. Paper defaults κ = 3, τ = 0.5, α = 1.
    """

    def __init__(self, class_counts: np.ndarray, alpha: float = 1.0, kappa: float = 3.0, tau: float = 0.5) -> None:
        super().__init__(class_counts)
        self.alpha, self.kappa, self.tau = alpha, kappa, tau

    def label_weight(self, y_i: torch.Tensor, y_j: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """λ_y per pair from the Remix rule (counts of a missing class are taken as 1)."""
        n = self.constant("counts", self.class_counts, y_i.device).clamp_min(1)
        ratio = n[y_i] / n[y_j]
        lam_y = lam.expand(len(y_i))
        lam_y = torch.where((ratio >= self.kappa) & (lam < self.tau), 0.0, lam_y)
        return torch.where((ratio <= 1 / self.kappa) & (1 - lam < self.tau), 1.0, lam_y)

    def __call__(self, x, y, ctx):
        lam = sample_beta(self.alpha, ctx.generator, x.device)
        perm = torch.randperm(len(y), generator=ctx.generator, device=x.device)
        return lam * x + (1 - lam) * x[perm], y, y[perm], self.label_weight(y, y[perm], lam)


@MIXING.register(
    "bilateral_mixup",
    paper="Bilateral mixup augmentation for two-branch long-tail networks, 2022 (seed 002 #7)",
    traits=("second batch",),
    constraints={"alpha": Interval(0, None, closed="neither")},
)
class BilateralMixup(Mixing):
    """Bilateral mixup: mix the batch (uniform sampler) with a batch drawn by BBN's reversed sampler.

    x' = λ·x_uniform + (1−λ)·x_reversed, label λ·y_u + (1−λ)·y_r, λ ~ Beta(α, α) (α = 1, one λ per
    batch); the reversed batch has p_c ∝ 1/n_c (``reverse`` sampler), so the tail enters every pair.
    """

    def __init__(self, class_counts: np.ndarray, alpha: float = 1.0) -> None:
        super().__init__(class_counts)
        self.alpha = alpha

    def __call__(self, x, y, ctx):
        x_r, y_r = draw_from(ctx, "reverse", len(y))
        lam = sample_beta(self.alpha, ctx.generator, x.device)
        return lam * x + (1 - lam) * x_r, y, y_r, lam.expand(len(y))


@MIXING.register(
    "cmo",
    paper="Park, Hong, Heo, Yun & Choi, The Majority Can Help the Minority (CMO), CVPR 2022",
    traits=("images", "second batch", "epoch hook", "changes step"),
    constraints={
        "prob": Interval(0, 1),
        "beta": Interval(0, None, closed="neither"),
        "weighted_alpha": Interval(0, None),
        "start_epoch": Interval(-1, None),
        "end_epochs": Interval(0, None),
    },
)
class CMO(Mixing):
    """Context-rich minority oversampling: paste a box of a minority-sampled image onto each batch image.

    The second batch is drawn with per-image weights ∝ n_c^(−α) (α = ``weighted_alpha`` = 1, as the
    official ``get_weighted_sampler``), i.e. class probabilities ∝ n_c^(1−α): class-balanced for α = 1.
    With probability ``prob`` (0.5) a batch gets a CutMix box from it: λ ~ Beta(β, β), β = 1, label
    λ·y + (1−λ)·y_minority with λ the kept area. As in the official code CMO is active only for
    ``start_epoch`` < epoch < epochs − ``end_epochs`` (both 3 there; epochs 0-based here).
    """

    def __init__(
        self,
        class_counts: np.ndarray,
        prob: float = 0.5,
        beta: float = 1.0,
        weighted_alpha: float = 1.0,
        start_epoch: int = 3,
        end_epochs: int = 3,
    ) -> None:
        super().__init__(class_counts)
        self.prob, self.beta, self.weighted_alpha = prob, beta, weighted_alpha
        self.start_epoch, self.end_epochs = start_epoch, end_epochs

    def minority_probabilities(self) -> np.ndarray:
        """Class probabilities of the pasted batch: n_c · n_c^(−α), normalised."""
        return samplers.power_law(self.class_counts.astype(np.float64), 1.0 - self.weighted_alpha)

    def active(self, epoch: int, epochs: int) -> bool:
        return self.start_epoch < epoch < epochs - self.end_epochs

    def on_epoch_start(self, epoch: int, state: TrainState) -> None:
        self.switch_phase(self.active(epoch, state.cfg.epochs), state)

    def __call__(self, x, y, ctx):
        if not self.active(ctx.epoch, ctx.epochs):
            return unmixed(x, y)
        if ctx.draw_batch is None:
            raise ValueError("cmo draws a minority batch; MixContext.draw_batch is required")
        apply = coin(self.prob, ctx, x.device)
        x_min, y_min = ctx.draw_batch(self.minority_probabilities(), len(y))
        mixed, lam = paste_box(x, x_min, sample_beta(self.beta, ctx.generator, x.device), ctx.generator)
        return either(apply, (mixed, y, y_min, lam.expand(len(y))), unmixed(x, y))


def noise_like(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` pure-noise inputs shaped like x's samples: N(0, 1) per pixel after normalisation.

    Inputs are already normalised by the dataset's per-channel mean and std, so this is noise with the
    dataset's mean and std in pixel space.
    """
    return torch.randn((n, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)


@MIXING.register(
    "open_sampling",
    paper="Wei, Tao, Xie, Feng & An, Open-Sampling, ICML 2022",
    constraints={"ood_ratio": Interval(0, None), "lambda_o": Interval(0, None)},
)
class OpenSampling(Mixing):
    """Open-sampling: append out-of-distribution (pure-noise) images labelled from a complementary prior.

    Each noise image gets a label drawn from Γ_c ∝ π_max + π_min − π_c (the official code's
    ``rebalance_rate`` when its alpha ≤ 0), so the tail receives most of them. The loss is
    mean ℓ(ID) + λ_o · Σ w_ỹ ℓ(noise) / Σ w_ỹ with class weights w = C·Γ/ΣΓ, λ_o = 1 (official
    ``train_batch_with_out``). The official command uses 512 open-set images per 128-image batch
    (``ood_ratio`` = 4); its open set is 300K Random Images, here Gaussian noise at the data's mean/std.
    """

    def __init__(self, class_counts: np.ndarray, ood_ratio: float = 4.0, lambda_o: float = 1.0) -> None:
        super().__init__(class_counts)
        self.ood_ratio, self.lambda_o = ood_ratio, lambda_o
        prior = self.class_counts / self.class_counts.sum()
        self.rates = prior.max() + prior.min() - prior  # Γ: complementary to the prior

    def __call__(self, x, y, ctx):
        b, m = len(y), int(round(self.ood_ratio * len(y)))
        if m == 0:
            self.batch_weight = None
            return unmixed(x, y)
        rates = self.constant("rates", self.rates, x.device)
        y_ood = torch.multinomial(rates, m, replacement=True, generator=ctx.generator)
        w = (rates / rates.sum() * len(rates))[y_ood]
        # The loop averages weight·ℓ over b + m samples: these multipliers turn that mean into
        # mean_ID ℓ + λ_o · weighted mean_OOD ℓ.
        self.batch_weight = (b + m) * torch.cat([torch.full((b,), 1.0 / b, device=x.device), self.lambda_o * w / w.sum()])
        y_all = torch.cat([y, y_ood])
        return torch.cat([x, noise_like(x, m, ctx.generator)]), y_all, y_all, torch.ones(b + m, device=x.device)


@MIXING.register(
    "pure_noise",
    paper="Zada, Benou & Irani, Pure Noise to the Rescue of Insufficient Data (OPeN), ICML 2022",
    traits=("second batch", "epoch hook", "changes step"),
    constraints={"delta": Interval(0, 1), "start_epoch": Interval(0, None)},
)
class PureNoise(Mixing):
    """OPeN: oversample the minority classes and replace part of the oversampled images by pure noise.

    From ``start_epoch`` (deferred, as the paper's CIFAR recipe from epoch 160 of 200; default 0.8 · epochs)
    the batch is redrawn class-balanced and an image of class c becomes a noise image (N(μ, σ) of the
    dataset, i.e. N(0, 1) after normalisation) with probability δ·(1 − n_c/n_max): a fraction δ of the
    images that oversampling duplicated (δ = 1/3, the paper's CIFAR-10-LT value). Noise images keep their
    (minority) label. The noise mask is handed to DAR-BN layers (norm ``dar_bn``) through
    :func:`ltlib.models.set_noise_mask`, so they normalise noise with its own batch statistics.
    """

    def __init__(self, class_counts: np.ndarray, delta: float = 1 / 3, start_epoch: int | None = None) -> None:
        super().__init__(class_counts)
        self.delta, self.start_epoch = delta, start_epoch
        counts = self.class_counts.astype(np.float64)
        self.replace_prob = delta * (1 - counts / counts.max())

    def active(self, epoch: int, epochs: int) -> bool:
        return epoch >= (int(0.8 * epochs) if self.start_epoch is None else self.start_epoch)

    def on_epoch_start(self, epoch: int, state: TrainState) -> None:
        self.switch_phase(self.active(epoch, state.cfg.epochs), state)

    def __call__(self, x, y, ctx):
        if not self.active(ctx.epoch, ctx.epochs):
            set_noise_mask(ctx.model, None)
            return unmixed(x, y)
        x, y = draw_from(ctx, "class_balanced", len(y))
        p = self.constant("replace_prob", self.replace_prob, x.device)[y]
        mask = torch.rand(len(y), generator=ctx.generator, device=x.device) < p
        x = torch.where(mask.view(-1, *([1] * (x.ndim - 1))), noise_like(x, len(y), ctx.generator), x)
        set_noise_mask(ctx.model, mask)
        return unmixed(x, y)


@MIXING.register(
    "gae",
    paper="Zhang, Zhang, Li & Wu, Adversarial Examples for Good: Adversarial Examples Guided Imbalanced Learning, 2022",
    traits=("second pass",),
    constraints={"eps": Interval(0, None), "steps": Interval(1, None), "start_epoch": Interval(0, None)},
    eager="takes its adversarial gradient steps outside the graph",
)
class GuidedAdversarial(Mixing):
    """Guided adversarial examples: push majority images a few signed-gradient steps toward minority classes.

    For each image of a majority class (n_c above the median count) a target t is drawn from the
    minority classes (n_c below the median) ∝ 1/n_t; ``steps`` steps x ← x − (ε/steps)·sign ∇x ℓ(f(x), t)
    (targeted FGSM/I-FGSM, L∞ radius ε in normalised units) are taken with the current model and loss,
    and the perturbed images are trained with their original labels (the probing passes run in training
    mode, so batch-norm statistics see them, as in common adversarial-training code). Only the abstract of the paper was
    available here: ε = 0.1, 3 steps and the start at ``start_epoch`` (default half of training, so the
    model's boundary exists to be probed) are small choices of this library, not the paper's values.
    """

    def __init__(self, class_counts: np.ndarray, eps: float = 0.1, steps: int = 3, start_epoch: int | None = None) -> None:
        super().__init__(class_counts)
        self.eps, self.steps, self.start_epoch = eps, steps, start_epoch
        counts = self.class_counts.astype(np.float64)
        median = np.median(counts)
        self.majority = counts > median
        minority = (counts < median) & (counts > 0)
        self.target_probs = np.where(minority, 1 / np.maximum(counts, 1), 0.0)

    def __call__(self, x, y, ctx):
        start = ctx.epochs // 2 if self.start_epoch is None else self.start_epoch
        if ctx.epoch < start or ctx.model is None or ctx.loss is None or not self.target_probs.any():
            return unmixed(x, y)
        major = torch.as_tensor(self.majority, device=x.device)[y]
        if not bool(major.any()):
            return unmixed(x, y)
        probs = torch.as_tensor(self.target_probs, dtype=torch.float32, device=x.device)
        target = torch.multinomial(probs, len(y), replacement=True, generator=ctx.generator)
        x_adv = x.detach().clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            feats = ctx.model.features(x_adv)
            loss = ctx.loss(ctx.model.head(feats), target, features=feats, domains=ctx.domains)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = (x_adv.detach() - (self.eps / self.steps) * grad.sign()).clamp(x - self.eps, x + self.eps)
        return torch.where(major.view(-1, *([1] * (x.ndim - 1))), x_adv, x), y, y, torch.ones(len(y), device=x.device)


def instance_stats(x: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-instance, per-channel statistics of images: (normalised x, mean μ, std σ), μ and σ of shape (B, C, 1, 1).

    σ = sqrt(var + ε) with the unbiased variance over H×W, as TALLY's (and AdaIN's) code computes it.
    """
    mu = x.mean(dim=(2, 3), keepdim=True)
    sigma = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    return (x - mu) / sigma, mu, sigma


@MIXING.register(
    "tally_mix",
    paper=TALLY,
    traits=("domains", "images"),
    constraints={"alpha": Interval(0, None, closed="neither"), "momentum": Interval(0, 1, closed="left"), "warmup": Interval(0, 1)},
    eager="draws its style donors outside the graph",
)
class TallyMix(Mixing):
    """TALLY: re-style each image's domain-free content (mixed with its class prototype) with another domain's statistics.

    Per image and channel, μ and σ over H×W are the domain-associated nuisance and the normalised
    image n = (x − μ)/σ the semantics. With λ₁, λ₂ ~ Beta(α, α) per sample, folded to max(λ, 1 − λ):

        n' = λ₁·n_i + (1 − λ₁)·P_(y_i)             (class prototype: mixing stays within class y_i)
        μ' = λ₂·μ_j + (1 − λ₂)·M_(d_j),  σ' = λ₂·σ_j + (1 − λ₂)·S_(d_j)
        x' = σ'·n' + μ',  label y_i

    where j is a style donor drawn domain-balanced (a domain uniformly among the batch's domains,
    then one of its images), P_c the momentum mean of n over class c (TALLY's domain-invariant class
    prototype, averaging out domain effects), M_d, S_d the momentum means of μ, σ over domain d,
    each updated as P ← m·P + (1 − m)·batch mean with m = ``momentum``, from the batch before it is
    mixed (the official code updates after the step; here every prototype a batch needs exists).
    Paper/official defaults: α = 0.5, m = 0.8, plain training (with prototype updates) for the
    first 7 of 15 epochs (``warmup`` = 7/15 of the epochs).

    Differences from the official code, at ltlib's scale: the statistics are taken on the input
    image (channel-wise), not on ResNet-50's layer-2 feature maps, so the method works with any
    backbone; donors come from the same batch instead of a second, domain-balanced batch;
    prototypes start at their first batch mean instead of random normals. The official code also
    swaps its domain μ and σ prototypes between the warm-up and main loops (argument order); here
    μ is mixed with μ and σ with σ.
    """

    def __init__(self, class_counts: np.ndarray, alpha: float = 0.5, momentum: float = 0.8, warmup: float = 7 / 15) -> None:
        super().__init__(class_counts)
        self.alpha, self.momentum, self.warmup = alpha, momentum, warmup
        self.prototypes: dict[str, torch.Tensor] = {}

    def update(
        self, norm: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor, domains: torch.Tensor, num_domains: int
    ) -> None:
        """Momentum-update the class prototypes from ``norm`` and the domain μ/σ prototypes from ``mu``, ``sigma``."""
        if not self.prototypes:
            c, dev = norm.shape[1], norm.device
            self.prototypes = {
                "class": torch.zeros(len(self.class_counts), *norm.shape[1:], device=dev),
                "mu": torch.zeros(num_domains, c, 1, 1, device=dev),
                "sigma": torch.zeros(num_domains, c, 1, 1, device=dev),
                "class_seen": torch.zeros(len(self.class_counts), dtype=torch.bool, device=dev),
                "domain_seen": torch.zeros(num_domains, dtype=torch.bool, device=dev),
            }
        p = self.prototypes
        p["class_seen"] |= momentum_update(p["class"], p["class_seen"], norm, y, self.momentum)
        momentum_update(p["mu"], p["domain_seen"], mu, domains, self.momentum)
        p["domain_seen"] |= momentum_update(p["sigma"], p["domain_seen"], sigma, domains, self.momentum)

    def __call__(self, x, y, ctx):
        if ctx.domains is None:
            raise ValueError("tally_mix needs a dataset with domains, e.g. digits-domains")
        if x.dim() != 4:
            raise ValueError(f"tally_mix needs images (B, C, H, W); got inputs of shape {tuple(x.shape)}")
        domains = ctx.domains.to(x.device)
        norm, mu, sigma = instance_stats(x)
        self.update(norm, mu, sigma, y, domains, ctx.num_domains or int(domains.max()) + 1)
        ones = torch.ones(len(y), device=x.device)
        if ctx.epoch < self.warmup * ctx.epochs:
            return x, y, y, ones
        p = self.prototypes
        # Style donors, domain-balanced within the batch: weight 1/(images of its domain in the batch).
        donor = torch.multinomial(1.0 / torch.bincount(domains)[domains].float(), len(y), replacement=True, generator=ctx.generator)
        lam = sample_beta(self.alpha, ctx.generator, x.device, (2, len(y)))
        lam = torch.maximum(lam, 1 - lam).reshape(2, -1, 1, 1, 1)
        d = domains[donor]
        n_mix = lam[0] * norm + (1 - lam[0]) * p["class"][y]
        mu_mix = lam[1] * mu[donor] + (1 - lam[1]) * p["mu"][d]
        sigma_mix = lam[1] * sigma[donor] + (1 - lam[1]) * p["sigma"][d]
        return sigma_mix * n_mix + mu_mix, y, y, ones


@MIXING.register(
    "bbn",
    paper="Zhou, Cui, Wei & Chen, BBN: Bilateral-Branch Network with Cumulative Learning, CVPR 2020",
    traits=("bbn model", "second batch"),
    eager="draws its reversed-sampler batch outside the graph",
)
class BilateralSampling(Mixing):
    """BBN's input pairing: the batch feeds the conventional branch, a reversed-sampler batch the re-balancing branch.

    The reversed batch is drawn with the ``reverse`` sampler, p_c ∝ 1/n_c (the official w_c = n_max/n_c,
    normalised); the pair goes to ``--model bbn`` as one (B, 2, …) tensor and the loss is
    α·ℓ(z, y_c) + (1 − α)·ℓ(z, y_r) with the cumulative-learning α = 1 − (t/T)² of the epoch.
    """

    def __call__(self, x, y, ctx):
        if not getattr(ctx.model, "bilateral", False):
            raise ValueError("mixing 'bbn' feeds the two branches of a BBN model; use it with --model bbn")
        x_r, y_r = draw_from(ctx, "reverse", len(y))
        lam = torch.full((len(y),), cumulative_alpha(ctx.epoch, ctx.epochs), device=x.device)
        return torch.stack([x, x_r], dim=1), y, y_r, lam
