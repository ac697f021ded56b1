"""The training loop, readable top to bottom.

    config → data (long-tailed, on the device) → model → for each epoch: schedule hooks,
    draw indices with the sampler → for each step: augment, mix, forward, loss, backward, SGD step
    → evaluate (with the GPU graph engine: on a side stream, beside the next epoch's training)
    → events to callbacks → a run folder.

Speed features wrap this loop without forking it; this eager loop is the reference.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ltlib import losses, mixing, optim, samplers, schedules
from ltlib.calibration import Outputs, adjust
from ltlib.data import DATASETS, Dataset, load_dataset, make_long_tailed, random_crop_flip
from ltlib.fast import BackgroundEvaluation, GraphEpoch, Member, unsupported_reason
from ltlib.metrics import evaluate
from ltlib.models import MODELS, NORMS, auto_model, build_model
from ltlib.runs import new_run_id, save_run

if TYPE_CHECKING:
    from ltlib.sweep import Seat


@dataclass
class Config:
    """Everything that determines a run. Optimiser defaults are the LDAM-DRW CIFAR recipe
    (Cao et al. 2019): SGD, momentum 0.9, lr 0.1, weight decay 2e-4, batch 128, 5 warm-up epochs,
    lr ×0.1 at 80 % and ×0.01 at 90 % of training (epochs 160 and 180 of 200).
    """

    dataset: str = "digits"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    imbalance: float = 100.0
    profile: str = "exp"
    val_fraction: float = 0.0
    # "auto": an MLP for features and images under 16 px, a small CNN under 32 px, else ResNet-32.
    model: str = "auto"
    model_params: dict[str, Any] = field(default_factory=dict)
    norm: str = "batchnorm"
    norm_params: dict[str, Any] = field(default_factory=dict)
    loss: str = "ce"
    loss_params: dict[str, Any] = field(default_factory=dict)
    sampler: str = "instance"
    sampler_params: dict[str, Any] = field(default_factory=dict)
    mixing: str = "none"
    mixing_params: dict[str, Any] = field(default_factory=dict)
    schedule: str = "none"
    schedule_params: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "sgd"
    optimizer_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    warmup_epochs: int = 5
    # Epochs at which the lr is multiplied by lr_gamma; empty list = derive 80 % and 90 % of epochs.
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    cosine: bool = False
    eval_every: int = 10
    # Post-hoc logit adjustment applied at evaluation: z − τ·log π (0 = off).
    posthoc_tau: float = 0.0
    # τ-normalised classifier at evaluation, z_c = f·w_c/‖w_c‖^τ (Kang et al. 2020; None = off).
    tau_norm: float | None = None
    feature_samples: int = 2000
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    # "auto": the CUDA-graph step (ltlib.fast) on a GPU when the methods allow it, else eager;
    # "graph" forces the graph step's code (uncaptured on CPU); "eager" is the reference loop.
    engine: str = "auto"
    # GPU only: compile with Inductor (the backbone, and with the graph engine the head and loss too):
    # fused kernels for a warm-up of tens of seconds, which Inductor caches on disk. Channels-last
    # activations: bf16 convolutions prefer them.
    compile: bool = False
    channels_last: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config field(s) {', '.join(unknown)}; fields: {', '.join(sorted(names))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def milestones(self) -> list[int]:
        return list(self.lr_milestones) or [int(0.8 * self.epochs), int(0.9 * self.epochs)]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad value and what is allowed."""
        DATASETS.check_params(self.dataset, self.dataset_params)
        losses.LOSSES.check_params(self.loss, self.loss_params)
        samplers.SAMPLERS.check_params(self.sampler, self.sampler_params)
        mixing.MIXING.check_params(self.mixing, self.mixing_params)
        schedules.SCHEDULES.check_params(self.schedule, self.schedule_params)
        optim.OPTIMIZERS.check_params(self.optimizer, self.optimizer_params)
        NORMS.check_params(self.norm, self.norm_params)
        if self.model != "auto":
            MODELS.get(self.model)
        checks = [
            ("imbalance", self.imbalance >= 1, ">= 1 (1 = balanced)"),
            ("profile", self.profile in ("exp", "step"), "exp, step"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("momentum", 0 <= self.momentum < 1, "[0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
            ("eval_every", self.eval_every >= 1, ">= 1"),
            ("val_fraction", 0 <= self.val_fraction < 1, "[0, 1)"),
            ("feature_samples", self.feature_samples >= 0, ">= 0"),
            ("tau_norm", self.tau_norm is None or self.tau_norm >= 0, ">= 0, or None for off"),
            ("engine", self.engine in ("auto", "eager", "graph"), "auto, eager, graph"),
            ("device", self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "auto, cpu, cuda, cuda:N"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; allowed: {allowed}")


@dataclass
class Event:
    """What the loop reports: ``kind`` is start, step, epoch, eval or end."""

    kind: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    data: dict[str, Any] = field(default_factory=dict)


class Cancelled(Exception):
    """Raised when the cancel flag is set; no run folder is written."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run is saved with status ``failed``."""


@dataclass
class TrainState:
    """The live objects of a run, handed to every method's ``on_epoch_start(epoch, state)`` hook.

    A hook may change the method mid-run: the loss's class weights (DRW), ``sampler`` or
    ``class_probs`` (progressive or meta-learned sampling), and it may record per-epoch values in
    ``log`` (they are stored with the epoch's metrics, e.g. learned per-class rates).
    """

    cfg: Config
    data: Dataset
    model: torch.nn.Module
    loss: losses.Loss
    optimizer: torch.optim.Optimizer
    class_counts: np.ndarray
    device: torch.device
    generator: torch.Generator
    epoch: int = 0
    sampler: str = "instance"
    class_probs: np.ndarray | None = None
    inputs: Inputs | None = None
    log: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    run_id: str
    path: Path | None
    eval: dict[str, Any]
    history: list[dict[str, Any]]
    model: torch.nn.Module


_INIT_LOCK = threading.Lock()


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("training was cancelled")


def _choose_engine(cfg: Config, loss_fn: losses.Loss, device: torch.device) -> tuple[str, str]:
    """The engine this run uses and why (the reason is stored in the run's meta)."""
    if cfg.engine == "eager":
        return "eager", "asked for"
    reason = unsupported_reason(cfg, loss_fn)
    if reason is not None:
        return "eager", reason
    if cfg.engine == "auto" and device.type != "cuda":
        return "eager", "no CUDA device (graphs only pay off on a GPU)"
    return "graph", "CUDA graph" if device.type == "cuda" else "graph step, uncaptured on CPU"


def check_needs(cfg: Config, data: Dataset) -> None:
    """Raise ``ValueError`` when a chosen method needs images or domains that the dataset lacks."""
    chosen = [(samplers.SAMPLERS, cfg.sampler), (mixing.MIXING, cfg.mixing), (losses.LOSSES, cfg.loss)]
    for registry, name in chosen:
        if "images" in registry.get(name).needs and not data.is_image:
            raise ValueError(f"{registry.kind} {name!r} needs images; dataset {cfg.dataset!r} has feature vectors")
        if "domains" in registry.get(name).needs and data.domains_train is None:
            raise ValueError(f"{name} needs a dataset with domains, e.g. digits-domains (dataset {cfg.dataset!r} has none)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} is not available on this machine; allowed: auto, cpu")
    return torch.device(name)


def with_validation_split(cfg: Config) -> tuple[Config, str]:
    """The config with the validation split its loss needs, and a note saying so.

    A loss that learns on held-out data (AutoBalance) declares ``default_val_fraction``; when
    ``cfg.val_fraction`` is 0 that much of the long-tailed training set is held out instead.
    """
    default = getattr(losses.LOSSES.get(cfg.loss).obj, "default_val_fraction", 0.0)
    if cfg.val_fraction > 0 or not default:
        return cfg, ""
    note = f"loss {cfg.loss!r} learns on a validation split: val_fraction={default} of the long-tailed training set held out"
    return replace(cfg, val_fraction=default), note


def prepare_data(cfg: Config, dataset: Dataset | None = None) -> Dataset:
    """Load the dataset (or take the one given) and make it long-tailed with the config's seed."""
    base = dataset if dataset is not None else load_dataset(cfg.dataset, **cfg.dataset_params)
    data = make_long_tailed(base, cfg.imbalance, cfg.profile, cfg.seed, cfg.val_fraction)
    if cfg.batch_size > len(data.y_train):
        raise ValueError(
            f"batch_size={cfg.batch_size} is larger than the training set ({len(data.y_train)} images); allowed: <= {len(data.y_train)}"
        )
    return data


class Inputs:
    """Turns stored uint8 images (or float features) into normalised float batches on the device."""

    def __init__(self, data: Dataset, device: torch.device) -> None:
        x = data.x_train.float()
        dims = (0, 2, 3) if data.is_image else (0,)
        shape = (1, -1, 1, 1) if data.is_image else (1, -1)
        scale = 255.0 if data.is_image else 1.0
        self.mean = (x.mean(dims) / scale).reshape(shape).to(device)
        self.std = (x.std(dims) / scale).clamp_min(1e-6).reshape(shape).to(device)
        self.scale, self.data, self.device = scale, data, device
        self.channels_last = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x.to(self.device).float() / self.scale
        if generator is not None and self.data.is_image:
            x = random_crop_flip(x, self.data.crop_padding, self.data.flip, generator)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@torch.no_grad()
def predict(model: torch.nn.Module, inputs: Inputs, x: torch.Tensor, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and penultimate features of ``x`` in large batches, model in eval mode (float32)."""
    # Large batches keep a GPU busy; on a CPU, batches past ~256 images spill the caches (2× slower).
    batch_size = batch_size or (1024 if inputs.device.type == "cuda" else 256)
    # Equal batches (10,000 images: 10 × 1,000, not 9 × 1,024 + 784): one shape for cuDNN to tune.
    batch_size = math.ceil(len(x) / max(1, math.ceil(len(x) / batch_size)))
    model.eval()
    logits, feats = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(inputs(x[i : i + batch_size]))
        feats.append(f.float())
        logits.append(model.head(f).float())
    model.train()
    return torch.cat(logits), torch.cat(feats)


def evaluation_logits(
    model: torch.nn.Module, inputs: Inputs, x: torch.Tensor, cfg: Config, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Test logits with the config's post-hoc adjustments (τ-norm, logit adjustment), and features."""
    # Only the training step is compiled: an eval-mode compile would add its warm-up to the run.
    eager = torch.compiler.set_stance("force_eager") if cfg.compile and inputs.device.type == "cuda" else contextlib.nullcontext()
    with eager:
        logits, feats = predict(model, inputs, x)
    weight = model.head.weight.detach().float().cpu().numpy() if cfg.tau_norm is not None else None
    return adjusted_logits(logits.cpu().numpy(), feats.cpu().numpy(), weight, cfg, counts)


def adjusted_logits(
    logits: np.ndarray, feats: np.ndarray, head_weight: np.ndarray | None, cfg: Config, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the config's post-hoc adjustments (τ-norm needs the head's weight) to test logits."""
    outputs = Outputs(logits, np.empty(0), counts, feats, head_weight)
    return adjust(outputs, tau_norm=cfg.tau_norm, logit_tau=cfg.posthoc_tau).astype(np.float32), feats


def batch_loss(
    model: torch.nn.Module,
    loss_fn: losses.Loss,
    x: torch.Tensor,
    y: torch.Tensor,
    y_b: torch.Tensor | None,
    lam: torch.Tensor,
    use_bf16: bool,
    weight: torch.Tensor | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    domains: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward a batch and return its loss; for a mixed batch lam·ℓ(z, y) + (1 − lam)·ℓ(z, y_b) per sample.

    ``weight`` multiplies each sample's term before the mean: methods that add samples with their
    own loss weight (Open-sampling's noise images) set it. ``reduce`` (the optimiser's, if it has
    one, e.g. ABSGD's attention weights) turns the per-sample values into the batch objective
    instead of the mean. A loss that asks gets the penultimate ``features=`` and the batch's
    ``domains=`` as well. A model's ``extra_loss(x, y, logits)`` terms, if any, are added.
    """
    # No autocast weight cache: it would hold tensors across CUDA-graph replays.
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16, cache_enabled=False):
        feats = model.features(x)
        logits = model.head(feats)
        # A model may add its own terms (dual-path compound BN's auxiliary pass); None for most.
        model_terms = model.extra_loss(x, y, logits) if hasattr(model, "extra_loss") else None
    extra: dict[str, Any] = {"features": feats.float()} if loss_fn.needs_features else {}
    if loss_fn.needs_domains:
        extra["domains"] = domains
    if y_b is None and weight is None and reduce is None:
        loss = loss_fn(logits, y, **extra)
    else:
        if y_b is None:
            values = loss_fn(logits, y, reduction="none", **extra)
        else:
            values = lam * loss_fn(logits, y, reduction="none", **extra) + (1 - lam) * loss_fn(logits, y_b, reduction="none", **extra)
        if weight is not None:
            values = weight * values
        loss = values.mean() if reduce is None else reduce(values)
    return loss if model_terms is None else loss + model_terms


def optimizer_step(optimizer: torch.optim.Optimizer, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One optimiser step through a closure (zero grads, loss, backward), so SAM-like optimisers fit."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss()
        loss.backward()
        return loss

    return optimizer.step(closure)


def train(
    cfg: Config,
    callbacks: Iterable[Callable[[Event], None]] = (),
    cancel: threading.Event | None = None,
    dataset: Dataset | None = None,
    save: bool = True,
    root: str | Path | None = None,
    stack: Seat | None = None,
) -> Result:
    """Train one run of ``cfg`` and save it as a run folder (unless ``save=False``).

    ``stack``: this run's seat at an ``ltlib.sweep.Stacker``; with the graph engine the run then
    trains in a model-stack with the sweep's other runs of the same shape.
    """
    cfg.validate()
    cfg, val_note = with_validation_split(cfg)
    callbacks = list(callbacks)

    def emit(event: Event) -> None:
        for cb in callbacks:
            cb(event)

    started = time.time()
    device = resolve_device(cfg.device)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)

    data = prepare_data(cfg, dataset)
    counts = data.class_counts()
    inputs = Inputs(data, device)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    d_train = None if data.domains_train is None else data.domains_train.to(device)

    # Weights are initialised from the global RNG: the lock keeps runs trained side by side (ltlib.sweep,
    # two app sessions) from drawing from each other's seed.
    with _INIT_LOCK:
        torch.manual_seed(cfg.seed)
        loss_fn = losses.build(cfg.loss, counts, **cfg.loss_params).to(device)
        model_name = auto_model(data.input_shape) if cfg.model == "auto" else cfg.model
        model = build_model(
            model_name, data.input_shape, data.num_classes, loss_fn.head, loss_fn.head_params, cfg.norm, cfg.norm_params, **cfg.model_params
        )
    model = model.to(device)
    if cfg.tau_norm is not None and not isinstance(model.head, torch.nn.Linear):
        raise ValueError(f"tau_norm={cfg.tau_norm} needs a linear classifier head; loss {cfg.loss!r} uses the {loss_fn.head} head")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # pick the fastest convolution kernels for these fixed shapes
        if data.is_image and cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
            inputs.channels_last = True
    engine, engine_note = _choose_engine(cfg, loss_fn, device)
    # With the CUDA-graph engine, test passes run on their own stream beside the next epoch's training.
    background = BackgroundEvaluation(model, inputs, data.x_test) if engine == "graph" and device.type == "cuda" else None
    if device.type == "cuda" and cfg.compile:
        # Convolutions stay outside the compiled regions (models.Conv2d), so there is one region
        # per layer shape and batch size: more than dynamo's default of 8 recompilations.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        model.backbone.compile(dynamic=False)
        if engine == "graph":  # the head and the loss too: their small kernels fuse (e.g. LDAM's cosine head and margins)
            model.head.compile(dynamic=False)
            loss_fn.compile(dynamic=False)
    # A loss may own layers sized by the backbone (ResCom's projection head); they train with the model.
    if hasattr(loss_fn, "attach"):
        loss_fn.attach(model)
        loss_fn.to(device)
    trainable = [*model.parameters(), *loss_fn.parameters()]
    optimizer = optim.build(cfg.optimizer, trainable, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov, **cfg.optimizer_params)
    schedule = schedules.build(cfg.schedule, cfg.epochs, **cfg.schedule_params)
    mixer = mixing.build(cfg.mixing, counts, **cfg.mixing_params)
    check_needs(cfg, data)
    # A sampler that learns (meta) is an object; its hook sets state.class_probs each epoch.
    learned_sampler = samplers.build_learner(cfg.sampler, counts, cfg.epochs, **cfg.sampler_params)
    state = TrainState(cfg, data, model, loss_fn, optimizer, counts, device, generator, sampler=cfg.sampler, inputs=inputs)
    # Every method object may react to the epoch (DRW, staged losses, meta-learned samplers …).
    hooks = [h for h in (schedule, loss_fn, mixer, optimizer, learned_sampler, model) if hasattr(h, "on_epoch_start")]
    use_bf16 = cfg.bf16 and device.type == "cuda"
    reduce = getattr(optimizer, "reduce", None)

    def draw_batch(class_probs: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = samplers.draw_indices(y_train, class_probs, n, generator)
        return inputs(x_train[idx], generator), y_train[idx]

    n_train = len(y_train)
    steps = math.ceil(n_train / cfg.batch_size)
    fast_epoch = None
    setup_started = time.time()
    if engine == "graph":
        member = Member(loss_fn, model.head, inputs, x_train, y_train, generator)
        if stack is not None:
            fast_epoch = stack.join(model, member, cfg, use_bf16)
            engine_note += fast_epoch.note
        else:
            fast_epoch = GraphEpoch(model.backbone, [member], cfg.batch_size, cfg, use_bf16, capture=device.type == "cuda")
    elif stack is not None:
        stack.leave()
    history: list[dict[str, Any]] = []
    domain_args = {} if data.domains_test is None else {"domains": data.domains_test.numpy(), "domain_names": data.domain_names}
    info = {"class_counts": counts.tolist(), "model": model_name, "device": str(device), "engine": engine, "engine_note": engine_note}
    if val_note:
        info["val_note"] = val_note
    if data.domain_names:
        info["domain_names"] = data.domain_names
        info["domain_class_counts"] = data.domain_class_counts().tolist()
    # Graph capture (and compilation, if asked for) happens once, before the first epoch.
    info["setup_seconds"] = time.time() - setup_started
    if fast_epoch is not None:
        info["warm_up_seconds"] = fast_epoch.warm_up_seconds
    emit(Event("start", 0, cfg.epochs, 0, steps, info))

    def publish(record: dict[str, Any], outputs: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
        """Add an epoch's test metrics (if it was evaluated) to its record, keep it and tell the callbacks."""
        epoch = record["epoch"] - 1
        summary: dict[str, Any] = {}
        if outputs is not None:
            summary = evaluate(outputs[0], data.y_test.numpy(), counts, **domain_args)
            record.update({k: summary[k] for k in ("accuracy", "balanced_accuracy", "many", "medium", "few", "ece", "nll")})
            if "per_domain_accuracy" in summary:
                record["per_domain_accuracy"] = summary["per_domain_accuracy"]
            record["per_class_accuracy"] = summary["per_class_accuracy"]
            emit(Event("eval", epoch, cfg.epochs, steps, steps, record))
        history.append(record)
        emit(Event("epoch", epoch, cfg.epochs, steps, steps, record))
        return summary

    waiting: dict[str, Any] | None = None  # an evaluated epoch's record, while its test pass runs
    for epoch in range(cfg.epochs):
        state.epoch = epoch
        lr = schedules.learning_rate(epoch, cfg.lr, cfg.epochs, cfg.warmup_epochs, tuple(cfg.milestones()), cfg.lr_gamma, cfg.cosine)
        for group in optimizer.param_groups:
            group["lr"] = lr
        state.class_probs = samplers.class_probabilities(state.sampler, counts, epoch, cfg.epochs, **cfg.sampler_params)
        state.log = {}
        for hook in hooks:
            hook.on_epoch_start(epoch, state)
        lr = optimizer.param_groups[0]["lr"]  # a hook may set it (two-stage schemes restart the lr)

        within = samplers.within_class_weights(state.sampler, y_train, d_train)
        order = samplers.draw_indices(y_train, state.class_probs, n_train, generator, state.sampler == "instance", within)
        ctx = mixing.MixContext(counts, generator, epoch, cfg.epochs, draw_batch, model, loss_fn, data.num_domains)
        loss_sum = fast_epoch.loss_sum if fast_epoch is not None else torch.zeros((), device=device)
        loss_sum.zero_()
        if fast_epoch is not None:  # the epoch as CUDA-graph replays (ltlib.fast); the same steps as below
            _check_cancel(cancel)
            fast_epoch(order, lr)
        for step in range(0 if fast_epoch is not None else steps):
            _check_cancel(cancel)
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x, y = inputs(x_train[idx], generator), y_train[idx]
            ctx.domains = None if d_train is None else d_train[idx]
            x, y_a, y_b, lam = mixer(x, y, ctx)

            mixed_with = None if cfg.mixing == "none" else y_b
            weight = mixer.batch_weight  # per-sample loss weights of this batch, or None
            loss = optimizer_step(
                optimizer, partial(batch_loss, model, loss_fn, x, y_a, mixed_with, lam, use_bf16, weight, reduce, ctx.domains)
            )
            loss_sum += loss.detach()
            emit(Event("step", epoch, cfg.epochs, step, steps))

        if waiting is not None:  # the previous epoch's test pass ran beside this epoch's training
            publish(waiting, adjusted_logits(*background.result(), cfg, counts))
            waiting = None
        # One host synchronisation per epoch: the mean loss, which also catches NaN/inf.
        mean_loss = float(loss_sum) / steps
        record = {"epoch": epoch + 1, "lr": lr, "loss": mean_loss, "time": time.time() - started, **state.log}
        if not math.isfinite(mean_loss):
            message = f"loss became {mean_loss} in epoch {epoch + 1} (lr={lr:g}); try a lower --lr or another loss"
            history.append(record)
            if save:
                _save(cfg, data, counts, history, info, started, root, status="failed", error=message)
            raise TrainingDiverged(message)
        if epoch + 1 == cfg.epochs:
            logits_np, feats_np = evaluation_logits(model, inputs, data.x_test, cfg, counts)
            final = publish(record, (logits_np, feats_np))
        elif (epoch + 1) % cfg.eval_every == 0 and background is not None:
            background.start()  # published next epoch, once the pass is done
            waiting = record
        elif (epoch + 1) % cfg.eval_every == 0:
            publish(record, evaluation_logits(model, inputs, data.x_test, cfg, counts))
        else:
            publish(record, None)

    # The last epoch is always evaluated: its logits, features and metrics are the run's final ones.
    pick = np.sort(np.random.default_rng(cfg.seed).permutation(len(data.y_test))[: cfg.feature_samples])
    arrays = {
        "test_logits": logits_np,
        "test_labels": data.y_test.numpy().astype(np.int64),
        # All test features (post-hoc τ-norm) and a fixed subset for embeddings.
        "test_features": feats_np.astype(np.float32),
        "features": feats_np[pick].astype(np.float32),
        "feature_index": pick.astype(np.int64),
        "class_counts": counts.astype(np.int64),
    }
    head_arrays = getattr(model.head, "test_arrays", None)  # e.g. each expert's test logits (BalPoE)
    if head_arrays is not None:
        with torch.no_grad():
            arrays.update({k: v.float().cpu().numpy() for k, v in head_arrays(torch.from_numpy(feats_np).to(device)).items()})
    if data.domains_test is not None:  # per-domain metrics can be recomputed from a saved run
        arrays["test_domains"] = data.domains_test.numpy().astype(np.int64)
    if data.y_val is not None:  # post-hoc calibration (temperature scaling) is fitted on these
        val_logits, _ = evaluation_logits(model, inputs, data.x_val, cfg, counts)
        arrays.update(val_logits=val_logits, val_labels=data.y_val.numpy().astype(np.int64))
    for name in ("weight", "bias"):
        value = getattr(model.head, name, None)
        if isinstance(value, torch.Tensor):
            arrays[f"head_{name}"] = value.detach().float().cpu().numpy()
    path = None
    run_id = ""
    if save:
        path = _save(cfg, data, counts, history, info, started, root, "finished", final=final, arrays=arrays, model=model)
        run_id = path.name
    emit(Event("end", cfg.epochs, cfg.epochs, steps, steps, {"run_id": run_id, **final}))
    return Result(run_id, path, final, history, model)


def _save(cfg, data, counts, history, info, started, root, status, error=None, final=None, arrays=None, model=None) -> Path:
    meta = {
        **info,
        "status": status,
        "error": error,
        "created": time.time(),
        "seconds": time.time() - started,
        "class_names": data.class_names,
        "n_train": int(len(data.y_train)),
        "n_test": int(len(data.y_test)),
        "n_val": 0 if data.y_val is None else int(len(data.y_val)),
        "torch": torch.__version__,
    }
    state_dict = model.state_dict() if model is not None else None
    return save_run(new_run_id(cfg.dataset, cfg.loss), cfg.to_dict(), meta, history, final, arrays, state_dict, root)
