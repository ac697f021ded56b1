"""Supervised-contrastive auxiliary losses for long tail, beside the classifier's loss.

ResCom (Zhong et al. 2022) adds to a (Balanced-Softmax) classifier a class-balanced supervised
contrastive term on projected features, contrasting each sample with the other samples of the batch
and with hard keys mined from a class-balanced queue (the same number of keys for every class).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltlib.losses import LOSSES, NON_NEGATIVE, POSITIVE, UNIT, Loss
from ltlib.registry import Interval

if TYPE_CHECKING:
    from ltlib.models import Classifier


def supcon_per_sample(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """SupCon per anchor: −(1/|P_i|) Σ_{p∈P_i} log softmax(logits_i)_p (``positive`` is a 0/1 mask; 0 when P_i is empty)."""
    # Candidates masked out with −inf (an anchor itself) are never positives: 0·(−inf) must not be NaN.
    log_p = F.log_softmax(logits, dim=1).masked_fill(positive == 0, 0.0)
    return -(positive * log_p).sum(1) / positive.sum(1).clamp_min(1e-9)


@LOSSES.register(
    "rescom",
    paper="Zhong, Cui, Li, Lo, Sun & Jia, Rebalanced Siamese Contrastive Mining for Long-Tailed Recognition, arXiv 2022",
    traits=("features", "own parameters"),
    constraints={
        "weight": NON_NEGATIVE,
        "temperature": POSITIVE,
        "queue_per_class": Interval(1, None),
        "hard_positives": Interval(0, None),
        "hard_negatives": Interval(0, None),
        "dim": Interval(1, None),
        "beta": UNIT,
    },
)
class ResCom(Loss):
    """Balanced-Softmax CE + λ·class-balanced SupCon with hard positives/negatives mined from a class-balanced queue.

    ℓ_i = CE(z_i + log π, y_i) + λ·w_{y_i}·SupCon_i. Features f go through a projection head
    (Linear d→d, BN, ReLU, Linear d→``dim``, L2-normalised: q_i). Each anchor's candidates are the other
    batch samples (positive if same class) plus, from a queue holding ``queue_per_class`` keys of every
    class, the ``hard_positives`` least similar same-class keys and the ``hard_negatives`` most similar
    other-class keys; SupCon_i = −mean_{p∈P_i} log softmax(q_i·k/τ)_p over those candidates. The weights
    w_c = mean_j(E_j)/E_c use effective numbers E_c = (1 − β^n_c)/(1 − β). After each batch its keys
    replace the oldest keys of their class in the queue (queues start as random unit vectors).

    Defaults from the official CIFAR-100-LT config: λ = 0.5, τ = 0.2, 10 keys per class, 1 hard positive,
    400 hard negatives (capped at the (C − 1)·K keys there are), ``dim`` = 32, β = 0.999999. Where this
    differs from the official code: the loop forwards one augmented view per image, so the "Siamese"
    batch (two views of each image, only the first enqueued) is the single batch here; the Siamese
    Balanced Softmax on the contrastive logits is off, as in the official default (``balsfx_n`` = 0).
    ``balanced = False`` uses plain CE for the classifier term. Every call enqueues its batch, so with
    Mixup-style mixing (two label sets) or SAM (two passes per step) a step enqueues twice.
    """

    contrast_weight: torch.Tensor
    slots: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(
        self,
        class_counts: np.ndarray | list[int],
        weight: float = 0.5,
        temperature: float = 0.2,
        queue_per_class: int = 10,
        hard_positives: int = 1,
        hard_negatives: int = 400,
        dim: int = 32,
        beta: float = 0.999999,
        balanced: bool = True,
    ) -> None:
        super().__init__(class_counts)
        if hard_positives > queue_per_class:
            raise ValueError(f"hard_positives={hard_positives} is out of range; allowed: <= queue_per_class={queue_per_class}")
        c = len(self.class_counts)
        self.weight, self.temperature, self.balanced = weight, temperature, balanced
        self.hard_positives = hard_positives
        self.hard_negatives = min(hard_negatives, (c - 1) * queue_per_class)
        self.queue_per_class, self.dim = queue_per_class, dim
        effective = (1.0 - beta ** self.class_counts.clamp_min(1.0).double()) / (1.0 - beta)
        self.register_buffer("contrast_weight", (effective.mean() / effective).float())
        # One row per class and a spare last row where the keys a batch does not keep are written, so
        # that enqueueing has fixed shapes (no boolean indexing: it runs inside a CUDA graph).
        queue = F.normalize(torch.randn(c, queue_per_class, dim), dim=2)
        self.register_buffer("slots", torch.cat([queue, torch.zeros(1, queue_per_class, dim)]))
        self.register_buffer("queue_ptr", torch.zeros(c, dtype=torch.long))
        self.projection: nn.Module | None = None

    @property
    def queue(self) -> torch.Tensor:
        """The keys of every class: (classes, ``queue_per_class``, ``dim``), a view of the slots."""
        return self.slots[:-1]

    def attach(self, model: Classifier) -> None:
        """Build the projection head for the backbone's feature width (called by the loop before the optimiser)."""
        d = model.feature_dim
        self.projection = nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(), nn.Linear(d, self.dim))

    def contrastive(self, q: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Unweighted SupCon_i of normalised projections ``q`` against the batch and the mined queue keys."""
        b, c = len(targets), self.queue.shape[0]
        itself = torch.eye(b, dtype=torch.bool, device=q.device)  # an anchor is not its own candidate
        sim_batch = (q @ q.T).masked_fill(itself, -torch.inf)
        pos_batch = ((targets[:, None] == targets[None, :]) & ~itself).float()
        sim_queue = torch.einsum("bd,ckd->bck", q, self.queue.clone())  # a copy: enqueue writes in place
        own = F.one_hot(targets, c).bool()
        # Hard positives: the least similar keys of the own class; hard negatives: the most similar others
        # (the own class masked out; hard_negatives ≤ (C − 1)·K, so no masked key is picked).
        pos = sim_queue[torch.arange(b, device=q.device), targets]
        neg = sim_queue.masked_fill(own[:, :, None], -torch.inf).flatten(1)
        pos = -torch.topk(-pos, self.hard_positives, dim=1).values
        neg = torch.topk(neg, self.hard_negatives, dim=1).values
        logits = torch.cat([sim_batch, pos, neg], dim=1) / self.temperature
        positive = torch.cat([pos_batch, torch.ones_like(pos), torch.zeros_like(neg)], dim=1)
        return supcon_per_sample(logits, positive)

    @torch.no_grad()
    def enqueue(self, q: torch.Tensor, targets: torch.Tensor) -> None:
        """Each key replaces the oldest key of its class (a ring buffer per class), in batch order."""
        onehot = F.one_hot(targets, self.queue.shape[0])
        rank = (onehot.cumsum(0) - 1).gather(1, targets[:, None]).squeeze(1)  # order within its class
        count = onehot.sum(0)
        keep = rank >= count[targets] - self.queue_per_class  # only the newest K keys of a class survive
        slot = (self.queue_ptr[targets] + rank) % self.queue_per_class
        row = torch.where(keep, targets, len(self.queue_ptr))  # a key not kept goes to the spare row
        self.slots.index_put_((row, slot), q.to(self.slots.dtype))
        self.queue_ptr.copy_((self.queue_ptr + count) % self.queue_per_class)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor, *, features: torch.Tensor | None = None) -> torch.Tensor:
        assert features is not None, "forward passes features= (the loss's 'features' trait)"
        if self.projection is None:
            raise ValueError("rescom needs its projection head: call attach(model) first (ltlib.train does)")
        cls = F.cross_entropy(logits + self.log_prior if self.balanced else logits, targets, reduction="none")
        q = F.normalize(self.projection(features), dim=1)
        con = self.contrast_weight[targets] * self.contrastive(q, targets)
        self.enqueue(q.detach(), targets)
        return cls + self.weight * con
