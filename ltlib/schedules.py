"""Training schedules: the learning rate over epochs, and hooks that change the method mid-run.

A schedule hook (registry ``SCHEDULES``) is called at the start of every epoch with the training
state and may change the loss's class weights, the sampler, … (DRW, two-stage schemes). Schedules
that swap the trained parameters mid-run declare the trait "changes model" and run eagerly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ltlib import samplers
from ltlib.losses import effective_number_weights
from ltlib.registry import Interval, Registry

if TYPE_CHECKING:
    from ltlib.models import Classifier
    from ltlib.state import TrainState

SCHEDULES = Registry("schedule", fixed=("epochs",))


def available() -> list[str]:
    return SCHEDULES.available()


def learning_rate(
    epoch: int,
    base_lr: float,
    epochs: int,
    warmup_epochs: int = 0,
    milestones: tuple[int, ...] = (),
    gamma: float = 0.1,
    cosine: bool = False,
) -> float:
    """Learning rate of (0-based) ``epoch``: linear warm-up, then step decay at ``milestones`` or cosine.

    Warm-up follows the LDAM-DRW code: epoch e < w uses base_lr·(e+1)/w.
    """
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    if cosine:
        t = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
        return 0.5 * base_lr * (1 + math.cos(math.pi * t))
    return base_lr * gamma ** sum(epoch >= m for m in milestones)


class Schedule:
    """Base hook: ``on_epoch_start(epoch, state)``; ``state`` has ``loss``, ``model``, ``class_counts``…

    A schedule that swaps trainable parameters mid-run declares the trait "changes model" (and an
    ``eager`` reason): the CUDA-graph engine, captured once before the first epoch, cannot follow it.
    """

    traits: frozenset[str] = frozenset()

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_start(self, epoch: int, state: TrainState) -> None:
        pass

    def restructure(self, model: Classifier) -> None:
        """Give a newly built model the layers this schedule adds during training (LWS and MARC wrap the
        head), so a finished run's saved weights load back into the model its config builds."""


@SCHEDULES.register("none", paper="no schedule")
class NoSchedule(Schedule):
    """No change during training."""


@SCHEDULES.register(
    "drw",
    paper="Cao, Wei, Gaidon, Arechiga & Ma, LDAM-DRW, NeurIPS 2019",
    traits=("epoch hook",),
    constraints={"start_epoch": Interval(0, None), "beta": Interval(0, 1, closed="left")},
)
class DeferredReweighting(Schedule):
    """Deferred re-weighting: from ``start_epoch`` the loss weights classes by effective number.

    w_c ∝ (1−β)/(1−β^n_c), normalised to sum to C, β = 0.9999 (Cui et al. 2019). The paper starts at
    epoch 160 of 200; by default start = 0.8 · epochs so shorter runs keep the same proportion.
    """

    def __init__(self, epochs: int, start_epoch: int | None = None, beta: float = 0.9999) -> None:
        super().__init__(epochs)
        self.start_epoch = int(0.8 * epochs) if start_epoch is None else start_epoch
        self.beta = beta

    def on_epoch_start(self, epoch: int, state: TrainState) -> None:
        if epoch == self.start_epoch:
            state.loss.set_class_weight(effective_number_weights(state.class_counts, self.beta))


class TwoStage(Schedule):
    """Decoupled training (Kang et al. 2020): stage 1 trains everything as configured; from
    ``start_epoch`` the backbone is frozen and only a few classifier parameters are trained, with
    class-balanced sampling and a fresh cosine learning rate from the base lr down to 0.

    Subclasses choose what stage 2 trains (:meth:`stage2_parameters`). ``stage2_fraction`` sets the
    default start: the last fraction of the epochs, as the paper's stage 2 is a fixed share of the
    stage-1 length (official ImageNet-LT configs: 90 epochs, then 10 for cRT, 5 for LWS, lr 0.2
    with cosine decay to 0, the stage-1 lr).
    """

    stage2_fraction = 0.1

    def __init__(self, epochs: int, start_epoch: int | None = None, freeze_norm_stats: bool = True) -> None:
        super().__init__(epochs)
        if epochs < 2:
            raise ValueError(f"epochs={epochs} is too few for a two-stage schedule; allowed: >= 2")
        default = min(epochs - 1, max(1, round((1 - self.stage2_fraction) * epochs)))
        self.start_epoch = default if start_epoch is None else start_epoch
        if not 1 <= self.start_epoch < epochs:
            raise ValueError(f"start_epoch={start_epoch} is out of range; allowed: [1, {epochs - 1}]")
        self.freeze_norm_stats = freeze_norm_stats

    def stage2_parameters(self, model: Classifier) -> list[nn.Parameter]:
        """Prepare the model for stage 2 and return the parameters stage 2 trains."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, state: TrainState) -> None:
        if epoch < self.start_epoch:
            return
        if epoch == self.start_epoch:
            state.rebuild = True  # stage 2 trains other parameters: a fresh epoch runner
            state.model.freeze_backbone(self.freeze_norm_stats)
            state.model.requires_grad_(False)
            params = self.stage2_parameters(state.model)
            for p in params:
                p.requires_grad_(True)
            known = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
            new = [p for p in params if id(p) not in known]
            if new:
                state.optimizer.add_param_group({"params": new})
            # Stage 2 starts its own optimisation: no momentum carried over from stage 1.
            state.optimizer.state.clear()
        # The stage-2 sampler is plain class-balanced: none of the run's sampler parameters apply to it.
        state.sampler = samplers.build("class_balanced", state.class_counts, self.epochs)
        state.class_probs = state.sampler.probabilities(epoch)
        t, length = epoch - self.start_epoch, self.epochs - self.start_epoch
        for group in state.optimizer.param_groups:
            group["lr"] = 0.5 * state.cfg.lr * (1 + math.cos(math.pi * t / length))
        state.log["stage"] = 2


@SCHEDULES.register(
    "crt",
    paper="Kang, Xie, Rohrbach, Yan, Gordo, Feng & Kalantidis, Decoupling Representation and Classifier, ICLR 2020",
    traits=("epoch hook", "changes model", "changes step"),
    constraints={"start_epoch": Interval(1, None)},
)
class ClassifierRetraining(TwoStage):
    """cRT: after stage 1, re-initialise the classifier and re-train only it with class-balanced sampling.

    The backbone is frozen; by default its batch-norm statistics are frozen too (``freeze_norm_stats``).
    The official code leaves batch norm in training mode, so its running statistics keep adapting to
    the class-balanced batches (noted by the MiSLAS authors, issue #2 of their repository); pass
    ``freeze_norm_stats=false`` for that behaviour. Stage 2 is the last 10 % of the epochs by default
    (10 epochs after 90 on ImageNet-LT in the official configs), with a cosine lr restarted at the base lr.
    """

    def stage2_parameters(self, model: Classifier) -> list[nn.Parameter]:
        for m in model.head.modules():
            reset = getattr(m, "reset_parameters", None)
            if reset is not None:
                reset()
        return list(model.head.parameters())


class ScaledHead(nn.Module):
    """LWS classifier: z_c = f_c · (w_c·x + b_c), the learnable scales f start at 1.

    ``weight`` and ``bias`` are the effective f_c·w_c and f_c·b_c (exact for a linear classifier), so a
    saved run's classifier and post-hoc τ-norm see what the model computes.
    """

    def __init__(self, inner: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.inner = inner
        self.scales = nn.Parameter(torch.ones(num_classes, device=_head_weight(inner).device))

    @property
    def weight(self) -> torch.Tensor:
        return self.scales[:, None] * _head_weight(self.inner)

    @property
    def bias(self) -> torch.Tensor | None:
        b = getattr(self.inner, "bias", None)
        return None if b is None else self.scales * b

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.inner(f) * self.scales


class MarginCalibratedHead(nn.Module):
    """MARC classifier: z'_c = ω_c · z_c + β_c · ‖w_c‖, with ω = 1 and β = 0 at the start.

    For a linear classifier z_c = w_c·x + b_c this is again linear: ``weight`` ω_c·w_c and ``bias``
    ω_c·b_c + β_c·‖w_c‖ are the effective classifier a saved run stores.
    """

    def __init__(self, inner: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.inner = inner
        device = _head_weight(inner).device
        self.omega = nn.Parameter(torch.ones(num_classes, device=device))
        self.beta = nn.Parameter(torch.zeros(num_classes, device=device))

    @property
    def weight(self) -> torch.Tensor:
        return self.omega[:, None] * _head_weight(self.inner)

    @property
    def bias(self) -> torch.Tensor:
        b = getattr(self.inner, "bias", None)
        return self.omega * (0.0 if b is None else b) + self.beta * _head_weight(self.inner).norm(dim=1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.omega * self.inner(f) + self.beta * _head_weight(self.inner).norm(dim=1)


def _head_weight(head: nn.Module) -> torch.Tensor:
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError(f"this schedule needs a classifier with one weight row per class; {type(head).__name__} has none")
    return weight


@SCHEDULES.register(
    "lws",
    paper="Kang, Xie, Rohrbach, Yan, Gordo, Feng & Kalantidis, Decoupling Representation and Classifier, ICLR 2020",
    traits=("epoch hook", "changes model", "changes step"),
    constraints={"start_epoch": Interval(1, None)},
)
class LearnableWeightScaling(TwoStage):
    """LWS: after stage 1, learn only a per-class scale f_c of the classifier, z_c = f_c·(w_c·x + b_c).

    Everything else is frozen (backbone, its batch-norm statistics by default, and the classifier's
    w and b, as in the official TauNormClassifier.py); class-balanced sampling. Stage 2 is the last
    5 % of the epochs by default (5 epochs after 90 on ImageNet-LT in the official config), with a
    cosine lr restarted at the base lr. The saved ``head_weight`` is the effective f_c·w_c.
    """

    stage2_fraction = 0.05

    def restructure(self, model: Classifier) -> None:
        model.head = ScaledHead(model.head, model.num_classes)

    def stage2_parameters(self, model: Classifier) -> list[nn.Parameter]:
        self.restructure(model)
        assert isinstance(model.head, ScaledHead)
        return [model.head.scales]


@SCHEDULES.register(
    "marc",
    paper="Wang, Zhang, Hou, Wu, Wang & Shinozaki, Margin Calibration for Long-Tailed Visual Recognition, ACML 2022",
    traits=("epoch hook", "changes model", "changes step"),
    constraints={"start_epoch": Interval(1, None)},
)
class MarginCalibration(TwoStage):
    """MARC: after stage 1, learn per-class ω_c, β_c with z'_c = ω_c·z_c + β_c·‖w_c‖, all else frozen.

    The margin of a sample to class c's boundary is z_c/‖w_c‖; MARC calibrates it as ω_c·margin + β_c,
    i.e. the logit above. ω starts at 1 and β at 0 (stage 2 starts from the stage-1 predictions),
    trained with class-balanced sampling and the configured loss over the last 10 % of the epochs
    with a cosine lr restarted at the base lr. (No official code was available to check; this
    follows the paper's formula.)
    """

    def restructure(self, model: Classifier) -> None:
        model.head = MarginCalibratedHead(model.head, model.num_classes)

    def stage2_parameters(self, model: Classifier) -> list[nn.Parameter]:
        self.restructure(model)
        assert isinstance(model.head, MarginCalibratedHead)
        return [model.head.omega, model.head.beta]


def build(name: str, epochs: int, **params: Any) -> Schedule:
    return SCHEDULES.build(name, epochs, **params)
