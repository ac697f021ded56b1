"""Mixing and data-side augmentation applied to a training batch on the device.

A mixing method maps a batch ``(x, y)`` to ``(x', y_a, y_b, lam)``: the loss is
``lam·ℓ(z, y_a) + (1 − lam)·ℓ(z, y_b)`` per sample, so label mass always sums to one.
``lam`` is a tensor of shape (B,). ``none`` returns the batch unchanged with lam = 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ltlib.losses import momentum_update
from ltlib.registry import Registry, check_range

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

    def __init__(self, class_counts: np.ndarray) -> None:
        self.class_counts = np.asarray(class_counts)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, ctx: MixContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError


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


@MIXING.register("mixup", paper="Zhang, Cisse, Dauphin & Lopez-Paz, mixup, ICLR 2018")
class Mixup(Mixing):
    """Mixup: x' = λx_i + (1−λ)x_j, label λ·y_i + (1−λ)·y_j, λ ~ Beta(α, α), one λ per batch."""

    def __init__(self, class_counts: np.ndarray, alpha: float = 1.0) -> None:
        super().__init__(class_counts)
        check_range("alpha", alpha, 1e-6, float("inf"))
        self.alpha = alpha

    def __call__(self, x, y, ctx):
        lam = sample_beta(self.alpha, ctx.generator, x.device)
        perm = torch.randperm(len(y), generator=ctx.generator, device=x.device)
        return lam * x + (1 - lam) * x[perm], y, y[perm], lam.expand(len(y))


TALLY = "Yang, Yao, Zhou & Finn, Multi-Domain Long-Tailed Learning by Augmenting Disentangled Representations, TMLR 2023"


def instance_stats(x: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-instance, per-channel statistics of images: (normalised x, mean μ, std σ), μ and σ of shape (B, C, 1, 1).

    σ = sqrt(var + ε) with the unbiased variance over H×W, as TALLY's (and AdaIN's) code computes it.
    """
    mu = x.mean(dim=(2, 3), keepdim=True)
    sigma = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    return (x - mu) / sigma, mu, sigma


@MIXING.register("tally_mix", paper=TALLY, needs=("domains",))
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
        check_range("alpha", alpha, 1e-6, float("inf"))
        check_range("momentum", momentum, 0.0, 1.0)
        check_range("warmup", warmup, 0.0, 1.0, closed_high=True)
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
