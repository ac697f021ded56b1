"""Class-level samplers: which classes a training batch is drawn from.

``class_probabilities(name, class_counts, epoch, epochs, **params)`` gives the probability of
drawing each class; images are then drawn uniformly within a class, with replacement, as the
papers' samplers do. ``instance`` is the ordinary shuffled epoch (each image once).

A sampler may also spread its class's probability unevenly over the class's images (decorator
:func:`within_class`, e.g. equally over the domains of a class); :func:`within_class_weights`
returns those per-image weights and :func:`draw_indices` uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ltlib.registry import Registry

SAMPLERS = Registry("sampler", fixed=("class_counts", "epoch", "epochs"))
TALLY = "Yang, Yao, Zhou & Finn, Multi-Domain Long-Tailed Learning by Augmenting Disentangled Representations, TMLR 2023"
# within_class(labels, domains) -> per-image weights; the library passes these, never the user.
WithinClass = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def available() -> list[str]:
    return SAMPLERS.available()


def class_probabilities(name: str, class_counts: np.ndarray | list[int], epoch: int = 0, epochs: int = 1, **params: Any) -> np.ndarray:
    """Per-class sampling probabilities (sum to 1) of sampler ``name`` at ``epoch`` of ``epochs``."""
    counts = np.asarray(class_counts, dtype=np.float64)
    p = np.asarray(SAMPLERS.build(name, counts, epoch, epochs, **params), dtype=np.float64)
    return p / p.sum()


def power_law(counts: np.ndarray, q: float) -> np.ndarray:
    """p_c ∝ n_c^q over the classes present (q=1 instance, q=0 class-balanced, q=½ square-root)."""
    present = counts > 0
    p = np.zeros_like(counts)
    p[present] = counts[present] ** q
    return p / p.sum()


@SAMPLERS.register("instance", paper="the standard shuffled epoch")
def instance(class_counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
    """Instance-balanced: every image equally likely, so p_c ∝ n_c."""
    return power_law(class_counts, 1.0)


@SAMPLERS.register("class_balanced", paper="Kang et al., Decoupling Representation and Classifier, ICLR 2020")
def class_balanced(class_counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
    """Class-balanced: every class equally likely, p_c = 1/C."""
    return power_law(class_counts, 0.0)


def within_class(weights: WithinClass) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the sampler spreads class c's probability over its images ∝ ``weights(labels, domains)``."""

    def attach(sampler: Callable[..., Any]) -> Callable[..., Any]:
        sampler.within_class = weights
        return sampler

    return attach


def within_class_weights(name: str, labels: torch.Tensor, domains: torch.Tensor | None = None) -> torch.Tensor | None:
    """Per-image weights of sampler ``name`` within each class, or None for uniform within a class."""
    weights = getattr(SAMPLERS.get(name).obj, "within_class", None)
    return None if weights is None else weights(labels, domains)


def draw_indices(
    labels: torch.Tensor,
    class_probs: np.ndarray,
    n: int,
    generator: torch.Generator,
    shuffle_epoch: bool = False,
    within: torch.Tensor | None = None,
) -> torch.Tensor:
    """``n`` training indices: a random permutation when ``shuffle_epoch``, else class-probability draws.

    Image i of class c is drawn with probability p_c / n_c (with replacement), on ``labels``' device;
    with per-image weights ``within`` it is p_c · w_i / Σ_{j in c} w_j instead.
    """
    if shuffle_epoch:
        return torch.randperm(len(labels), generator=generator, device=labels.device)[:n]
    p = torch.as_tensor(class_probs, dtype=torch.float32, device=labels.device)
    if within is None:
        weights = (p / torch.bincount(labels, minlength=len(class_probs)).clamp_min(1))[labels]
    else:
        mass = torch.bincount(labels, weights=within.float(), minlength=len(class_probs))
        weights = (p / mass.clamp_min(1e-12))[labels] * within
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def domain_balanced_within_class(labels: torch.Tensor, domains: torch.Tensor | None) -> torch.Tensor:
    """w_i = 1 / n_(d_i, c_i): every domain that has images of a class gets an equal share of it."""
    if domains is None:
        raise ValueError("selective_balanced needs a dataset with domains, e.g. digits-domains")
    num_classes = int(labels.max()) + 1
    pair = domains * num_classes + labels
    return 1.0 / torch.bincount(pair)[pair].float()


@SAMPLERS.register("selective_balanced", paper=TALLY, needs=("domains",))
@within_class(domain_balanced_within_class)
def selective_balanced(class_counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
    """TALLY's selective balanced sampling: a class uniformly, then one of its domains uniformly, then an image.

    P(d, c) = 1/C · 1/|D_c| with D_c the domains that have images of class c: balanced over the
    (domain, class) pairs that exist, without inventing the missing ones. The official code draws
    the semantic half of each batch class-balanced (class uniform, image uniform within the class, so
    a class's domains in proportion to their images) and the style half domain-balanced (domain
    uniform, then an image). ltlib balances the domains within each class as well, so a rare
    (domain, class) pair is not drowned by the same class's common pairs; ``tally_mix`` draws its
    style donors domain-balanced, as the official style half is.
    """
    return power_law(class_counts, 0.0)
