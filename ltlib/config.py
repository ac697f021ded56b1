"""The run configuration: everything that determines a run, with the papers' defaults.

A config is plain data (JSON round-trip) and is validated in full before any data is loaded.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal

from ltlib.data import DATASETS
from ltlib.families import check_data_needs, chosen
from ltlib.registry import Check, Interval, Param, describe


@dataclass
class Config:
    """Everything that determines a run. Optimiser defaults are the LDAM-DRW CIFAR recipe
    (Cao et al. 2019): SGD, momentum 0.9, lr 0.1, weight decay 2e-4, batch 128, 5 warm-up epochs,
    step decay at 80 % and 90 % of training (epochs 160 and 180 of 200), except the decay factor:
    ×0.1 per milestone by default, where the official script uses ×0.01 (the ``cifar10-lt`` preset does).
    """

    # The dataset (`ltlib methods` lists them); its parameters, e.g. path= for a folder or archive.
    dataset: str = "digits"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    # Imbalance ratio ρ = n_max / n_min of the long-tailed training set (1 = balanced).
    imbalance: float = 100.0
    # Long-tail profile: exponential decay over the classes, or a step (half the classes rare).
    profile: Literal["exp", "step"] = "exp"
    # Fraction of the long-tailed training set held out as a validation split.
    val_fraction: float = 0.0
    # "auto": an MLP for features and images under 16 px, a small CNN under 32 px, else ResNet-32.
    model: str = "auto"
    model_params: dict[str, Any] = field(default_factory=dict)
    # Normalisation layers of the model (batch norm, or a long-tail-aware variant).
    norm: str = "batchnorm"
    norm_params: dict[str, Any] = field(default_factory=dict)
    # The training loss.
    loss: str = "ce"
    loss_params: dict[str, Any] = field(default_factory=dict)
    # How training images are drawn (instance = uniform over images).
    sampler: str = "instance"
    sampler_params: dict[str, Any] = field(default_factory=dict)
    # Batch mixing (Mixup family), applied to each training batch.
    mixing: str = "none"
    mixing_params: dict[str, Any] = field(default_factory=dict)
    # Training scheme over epochs (deferred re-weighting, two-stage classifier re-training …).
    schedule: str = "none"
    schedule_params: dict[str, Any] = field(default_factory=dict)
    # The optimiser (SGD with momentum, or a wrapper such as SAM).
    optimizer: str = "sgd"
    optimizer_params: dict[str, Any] = field(default_factory=dict)
    # Training epochs.
    epochs: int = 200
    # Images per training step.
    batch_size: int = 128
    # Peak learning rate (after warm-up).
    lr: float = 0.1
    # SGD momentum.
    momentum: float = 0.9
    # L2 weight decay.
    weight_decay: float = 2e-4
    # Nesterov momentum.
    nesterov: bool = False
    # Epochs of linear learning-rate warm-up.
    warmup_epochs: int = 5
    # Epochs at which the lr is multiplied by lr_gamma; empty list = derive 80 % and 90 % of epochs.
    lr_milestones: list[int] = field(default_factory=list)
    # Factor applied to the learning rate at each milestone.
    lr_gamma: float = 0.1
    # Cosine decay after warm-up instead of step decay.
    cosine: bool = False
    # Evaluate on the test set every this many epochs (the last epoch always).
    eval_every: int = 10
    # Post-hoc logit adjustment applied at evaluation: z − τ·log π (0 = off).
    posthoc_tau: float = 0.0
    # τ-normalised classifier at evaluation, z_c = f·w_c/‖w_c‖^τ (Kang et al. 2020; None = off).
    tau_norm: float | None = None
    # Test images whose features are kept for embeddings (UMAP/PCA).
    feature_samples: int = 2000
    # Seed of the long-tailed subsample, initialisation, batch order and augmentation.
    seed: int = 0
    # auto, cpu, cuda or cuda:N ("auto": the GPU when there is one).
    device: str = "auto"
    # GPU only: bfloat16 autocast for the forward and backward passes.
    bf16: bool = True
    # "auto": the CUDA-graph step (ltlib.fast) on a GPU when the methods allow it, else eager;
    # "graph" forces the graph step's code (uncaptured on CPU); "eager" is the reference loop.
    engine: Literal["auto", "eager", "graph"] = "auto"
    # GPU only: compile with Inductor (the backbone, and with the graph engine the head and loss too):
    # fused kernels for a warm-up of tens of seconds, which Inductor caches on disk.
    compile: bool = False
    # GPU only: channels-last activations (bf16 convolutions prefer them).
    channels_last: bool = True
    # Reproducible kernels for the run's duration (ltlib.determinism): cuDNN deterministic and not autotuned,
    # torch.use_deterministic_algorithms (warn-only), one CPU thread. Slower, especially on a GPU.
    deterministic: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config field(s) {', '.join(unknown)}; fields: {', '.join(sorted(names))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each field's comment (the ``#`` lines right above it in this class): the CLI's and the app's help text."""
        out: dict[str, str] = {}
        pending: list[str] = []
        for line in inspect.getsource(cls).splitlines():
            text = line.strip()
            if text.startswith("#"):
                pending.append(text[1:].strip())
                continue
            match = re.match(r"(\w+): ", text)
            if match and pending:
                out[match.group(1)] = " ".join(pending)
            pending = []
        return out

    def milestones(self) -> list[int]:
        return list(self.lr_milestones) or [int(0.8 * self.epochs), int(0.9 * self.epochs)]

    def learning_rate(self, epoch: int) -> float:
        """The learning rate of (0-based) ``epoch``."""
        from ltlib.schedules import learning_rate

        return learning_rate(epoch, self.lr, self.epochs, self.warmup_epochs, tuple(self.milestones()), self.lr_gamma, self.cosine)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad value and what is allowed; loads no data.

        Checks every field's type and range, every method's name and parameters (names, types and
        the ranges its registry entry declares), and that the dataset offers what the methods need.
        """
        hints = typing.get_type_hints(Config)
        for f in fields(self):
            default = f.default if f.default_factory is MISSING else f.default_factory()
            param = Param(f.name, default, hints[f.name], FIELD_RULES.get(f.name, ()))
            why = param.problem(getattr(self, f.name))
            if why is not None:
                raise ValueError(f"{f.name}={describe(getattr(self, f.name))} {why}; allowed: {param.allowed()}")
        for fam, entry, params in chosen(self):
            fam.registry.check_params(entry.name, params)
        check_data_needs(self, DATASETS.get(self.dataset).traits)
        if any(m >= self.epochs for m in self.lr_milestones):
            raise ValueError(f"lr_milestones={self.lr_milestones} is out of range; allowed: epochs in [0, {self.epochs})")


# A run longer than this is a typo, not a plan (the papers train 90-400 epochs).
MAX_EPOCHS = 100_000

# Allowed values of the config's own fields (types come from the annotations above).
FIELD_RULES: dict[str, tuple[Interval | Check, ...]] = {
    "imbalance": (Interval(1, None),),
    "val_fraction": (Interval(0, 1, closed="left"),),
    "epochs": (Interval(1, MAX_EPOCHS),),
    "batch_size": (Interval(1, None),),
    "lr": (Interval(0, None, closed="neither"),),
    "momentum": (Interval(0, 1, closed="left"),),
    "weight_decay": (Interval(0, None),),
    "warmup_epochs": (Interval(0, MAX_EPOCHS),),
    "lr_milestones": (Interval(0, MAX_EPOCHS),),
    "lr_gamma": (Interval(0, None, closed="neither"),),
    "eval_every": (Interval(1, MAX_EPOCHS),),
    "tau_norm": (Interval(0, None),),
    "feature_samples": (Interval(0, None),),
    "seed": (Interval(0, 2**63 - 1),),
    "device": (Check(lambda v: v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()), "auto, cpu, cuda or cuda:N"),),
}
