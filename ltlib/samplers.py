"""Class-level samplers: which classes a training batch is drawn from.

``class_probabilities(name, class_counts, epoch, epochs, **params)`` gives the probability of
drawing each class; images are then drawn uniformly within a class, with replacement, as the
papers' samplers do. ``instance`` is the ordinary shuffled epoch (each image once).

A run uses one :class:`Sampler`, made by :func:`build` with its name, parameters and the class
counts fixed at build time: ``probabilities(epoch)`` gives the class probabilities of an epoch,
``within_class(labels, domains)`` any per-image weights and ``on_epoch_start`` its hook.

A sampler is usually a function of the counts and the epoch. A sampler that *learns* (``meta``,
trait "epoch hook") is a class: :func:`build` makes it once and its ``on_epoch_start(epoch, state)``
hook replaces ``state.class_probs`` for that epoch; ``class_probabilities`` gives its starting rates.

A sampler may also spread its class's probability unevenly over the class's images (decorator
:func:`within_class`, e.g. equally over the domains of a class); :meth:`Sampler.within_class`
returns those per-image weights and :func:`draw_indices` uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from ltlib.registry import Interval, MethodT, Registry

if TYPE_CHECKING:
    from ltlib.state import TrainState

SAMPLERS = Registry("sampler", fixed=("class_counts", "epoch", "epochs"))
TALLY = "Yang, Yao, Zhou & Finn, Multi-Domain Long-Tailed Learning by Augmenting Disentangled Representations, TMLR 2023"
# within_class(labels, domains) -> per-image weights; the library passes these, never the user.
WithinClass = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def available() -> list[str]:
    return SAMPLERS.available()


class Sampler:
    """The sampler a run uses: its name, parameters and class counts, fixed at build time.

    ``instance`` is True only for ``instance``, the ordinary shuffled epoch (each image once:
    ``draw_indices(shuffle_epoch=True)``). A learning sampler (trait "epoch hook") is built once as
    ``learner``; its hook learns the rates that ``probabilities`` then returns.
    """

    def __init__(self, name: str, class_counts: np.ndarray | list[int], epochs: int, params: dict[str, Any]) -> None:
        entry = SAMPLERS.get(name)
        self.name, self.params, self.traits = name, dict(params), entry.traits
        self.class_counts = np.asarray(class_counts, dtype=np.float64)
        self.epochs = epochs
        self.instance = name == "instance"
        self._fn = entry.obj
        self._within = _within_of(name)
        self.learner = entry.obj(self.class_counts, 0, epochs, **self.params) if "epoch hook" in self.traits else None

    def probabilities(self, epoch: int) -> np.ndarray:
        """Per-class probabilities at ``epoch`` (sum to 1); a learning sampler's current rates."""
        if self.learner is not None:
            p = self.learner.probabilities()
        else:
            p = self._fn(self.class_counts, epoch, self.epochs, **self.params)
        p = np.asarray(p, dtype=np.float64)
        return p / p.sum()

    def within_class(self, labels: torch.Tensor, domains: torch.Tensor | None) -> torch.Tensor | None:
        """Per-image weights within each class (``selective_balanced``), or None for uniform within a class."""
        return None if self._within is None else self._within(labels, domains)

    def on_epoch_start(self, epoch: int, state: TrainState) -> None:
        """A learning sampler's hook (it sets ``state.class_probs``); nothing for a fixed sampler."""
        if self.learner is not None:
            self.learner.on_epoch_start(epoch, state)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Sampler({self.name!r}{', ' + params if params else ''})"


def build(name: str, class_counts: np.ndarray | list[int], epochs: int, **params: Any) -> Sampler:
    """The sampler ``name`` with ``params`` (validated by ``SAMPLERS.check_params``) for a run of ``epochs``."""
    SAMPLERS.check_params(name, params)
    return Sampler(name, class_counts, epochs, params)


def class_probabilities(name: str, class_counts: np.ndarray | list[int], epoch: int = 0, epochs: int = 1, **params: Any) -> np.ndarray:
    """Per-class sampling probabilities (sum to 1) of sampler ``name`` at ``epoch`` of ``epochs``."""
    return build(name, class_counts, epochs, **params).probabilities(epoch)


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


@SAMPLERS.register("sqrt", paper="Mahajan et al., Exploring the Limits of Weakly Supervised Pretraining, ECCV 2018")
def sqrt(class_counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
    """Square-root sampling: p_c ∝ √n_c, between instance and class-balanced (Kang et al. 2020 compare it)."""
    return power_law(class_counts, 0.5)


@SAMPLERS.register("power", paper="Kang et al., Decoupling Representation and Classifier, ICLR 2020", constraints={"q": Interval(-1, 1)})
def power(class_counts: np.ndarray, epoch: int, epochs: int, q: float = 0.5) -> np.ndarray:
    """Power-law sampling: p_c ∝ n_c^q (q = 1 instance, ½ square-root, 0 class-balanced, −1 reversed).

    Kang et al. write every sampler as this family with q ∈ [0, 1]; q is allowed down to −1 here.
    """
    return power_law(class_counts, q)


@SAMPLERS.register("progressive", paper="Kang et al., Decoupling Representation and Classifier, ICLR 2020")
def progressive(class_counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
    """Progressively-balanced: p = (1 − t/T)·p_instance + (t/T)·p_balanced at epoch t of T.

    t is the 0-based epoch, so the first epoch samples by instance and the last is (T−1)/T of the way
    to class-balanced, as in the paper's p_PB(t) with t counted from 0.
    """
    t = epoch / max(1, epochs)
    return (1 - t) * power_law(class_counts, 1.0) + t * power_law(class_counts, 0.0)


@SAMPLERS.register("reverse", paper="Zhou, Cui, Wei & Chen, BBN: Bilateral-Branch Network, CVPR 2020")
def reverse(class_counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
    """Reversed sampling (BBN's re-balancing branch): p_c ∝ 1/n_c, the tail drawn most.

    BBN's code computes w_c = n_max / n_c and normalises by Σ w; that is p_c ∝ n_c^(−1).
    """
    return power_law(class_counts, -1.0)


def _invert_sigmoid(p: torch.Tensor) -> torch.Tensor:
    return p.log() - (1 - p).log()


@SAMPLERS.register(
    "meta",
    paper="Ren et al., Balanced Meta-Softmax for Long-Tailed Visual Recognition, NeurIPS 2020",
    traits=("epoch hook",),
    constraints={"lr": Interval(0, None, closed="neither"), "meta_per_class": Interval(1, None), "meta_steps": Interval(0, None)},
)
class MetaSampler:
    """Meta sampler (BALMS): per-class sampling rates learned by a bilevel step on a balanced meta set.

    Each image of class c is drawn with weight σ(w_c), so p_c ∝ n_c·σ(w_c). A meta step draws a batch
    of B classes with a straight-through Gumbel-softmax over log p (one-hot forward, soft gradient),
    takes one SGD look-ahead step θ' = θ − η·∇θ mean_i ℓ_i·s_i of the classifier head on those
    images (s_i: the straight-through one-hot weight, 1 in value; η: the current learning rate;
    features detached, as the official code does), then updates w with Adam (lr 0.01, the official
    default) to lower the cross-entropy of the look-ahead head on the meta set.
    w starts at logit(r_c / (min r + max r)) with r_c = π_c^(−init_pow) as in the official code
    (init_pow = 0: every σ(w_c) = ½, i.e. instance sampling).

    The meta set holds up to ``meta_per_class`` (10, a choice of this library) images of every class,
    taken from the training set (the tail has too few images to hold any out). Where the official code runs one meta step per
    training step, here ``meta_steps`` steps run at the start of each epoch (default: as many as
    the epoch has batches) and the learned rates then hold for that epoch; features are computed in
    eval mode so the meta step leaves the BN statistics alone. Each epoch logs p_c as
    ``sampler_rates``.
    """

    def __init__(
        self,
        class_counts: np.ndarray,
        epoch: int,
        epochs: int,
        lr: float = 0.01,
        meta_per_class: int = 10,
        meta_steps: int | None = None,
        init_pow: float = 0.0,
    ) -> None:
        counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
        prior = counts.clamp_min(1) / counts.clamp_min(1).sum()
        r = prior ** (-init_pow)
        self.w = _invert_sigmoid(r / (r.min() + r.max())).float().requires_grad_(True)
        self.counts = counts.float()
        self.lr, self.meta_per_class, self.meta_steps = lr, meta_per_class, meta_steps
        self.optimizer = torch.optim.Adam([self.w], lr=lr)
        self.meta_idx: torch.Tensor | None = None  # carved at the first epoch, when the data is known

    def probabilities(self) -> np.ndarray:
        """p_c ∝ n_c·σ(w_c), normalised."""
        with torch.no_grad():
            p = self.counts * torch.sigmoid(self.w.detach().cpu())
        return (p / p.sum()).double().numpy()

    def meta_step(self, state: TrainState, batch_size: int) -> float:
        """One bilevel update of w; returns the meta (balanced) loss before the update."""
        model, loss_fn, dev = state.model, state.loss, state.device
        x_train, y_train = state.data.x_train, state.data.y_train
        logits = torch.where(self.counts > 0, self.counts.clamp_min(1).log() + F.logsigmoid(self.w), -torch.inf)
        # Straight-through Gumbel-softmax: one-hot class draws whose gradient flows to w.
        u = torch.rand(batch_size, len(self.w), generator=state.generator, device=dev).cpu().clamp(1e-9, 1 - 1e-9)
        soft = F.softmax(logits - (-u.log()).log(), dim=1)
        hard = F.one_hot(soft.argmax(1), len(self.w)).float()
        picked = (hard - soft.detach() + soft) * hard  # value 1 at the drawn class, gradient of soft
        classes = hard.argmax(1)
        idx = _uniform_within(y_train, classes, torch.rand(batch_size, generator=state.generator, device=dev).cpu())
        was_training = model.training
        model.eval()
        with torch.no_grad():
            feats = model.features(state.inputs(x_train[idx])).float()
            meta_feats = model.features(state.inputs(x_train[self.meta_idx])).float()
        model.train(was_training)
        domains = None if state.data.domains_train is None else state.data.domains_train[idx].to(dev)
        per_image = loss_fn(model.head(feats).float(), classes.to(dev), reduction="none", features=feats, domains=domains).cpu()
        train_loss = (per_image * picked.sum(1)).mean()
        head = dict(model.head.named_parameters())
        grads = torch.autograd.grad(train_loss, list(head.values()), create_graph=True)
        lr = state.optimizer.param_groups[0]["lr"]
        look_ahead = {k: v - lr * g for (k, v), g in zip(head.items(), grads)}
        meta_logits = torch.func.functional_call(model.head, look_ahead, (meta_feats,)).float()
        meta_loss = F.cross_entropy(meta_logits, y_train[self.meta_idx].to(dev))
        self.optimizer.zero_grad()
        (self.w.grad,) = torch.autograd.grad(meta_loss, [self.w])
        self.optimizer.step()
        return float(meta_loss.detach())

    def on_epoch_start(self, epoch: int, state: TrainState) -> None:
        labels = state.data.y_train
        if self.meta_idx is None:
            perm = torch.randperm(len(labels), generator=state.generator, device=state.device).cpu()
            self.meta_idx = torch.cat([perm[labels[perm] == c][: self.meta_per_class] for c in range(len(self.counts))])
        batch = min(state.cfg.batch_size, len(labels))
        steps = -(-len(labels) // batch) if self.meta_steps is None else self.meta_steps
        for _ in range(steps):
            state.log["meta_loss"] = self.meta_step(state, batch)
        state.class_probs = self.probabilities()
        state.log["sampler_rates"] = state.class_probs.tolist()


def _uniform_within(labels: torch.Tensor, classes: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """For each entry of ``classes``, an index i with labels[i] == that class, picked by u ∈ [0, 1)."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=int(classes.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    offset = (u * counts[classes]).long().clamp_max(counts[classes] - 1)
    return order[starts[classes] + offset]


def _within_of(name: str) -> WithinClass | None:
    """The per-image weights a sampler's :func:`within_class` decorator attached, or None."""
    return getattr(SAMPLERS.get(name).obj, "within_class", None)


def within_class(weights: WithinClass) -> Callable[[MethodT], MethodT]:
    """Decorator: the sampler spreads class c's probability over its images ∝ ``weights(labels, domains)``."""

    def attach(sampler: MethodT) -> MethodT:
        cast(Any, sampler).within_class = weights  # an attribute on the function, read back by _within_of
        return sampler

    return attach


class Drawer:
    """Draws ``n`` training indices by class probabilities, as :func:`draw_indices` does, without a
    host synchronisation: the per-class counts are counted once and each probability vector is
    copied to the device once, so a draw can run inside a captured CUDA graph (mixing methods that
    draw a second batch every step)."""

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        self.labels = labels
        self.counts = torch.bincount(labels, minlength=num_classes).clamp_min(1)
        self._weights: dict[bytes, torch.Tensor] = {}

    def __call__(self, class_probs: np.ndarray, n: int, generator: torch.Generator) -> torch.Tensor:
        key = np.asarray(class_probs, dtype=np.float32).tobytes()
        if key not in self._weights:
            p = torch.as_tensor(class_probs, dtype=torch.float32, device=self.labels.device)
            self._weights[key] = (p / self.counts)[self.labels]
        return torch.multinomial(self._weights[key], n, replacement=True, generator=generator)


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


@SAMPLERS.register("selective_balanced", paper=TALLY, traits=("domains",))
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
