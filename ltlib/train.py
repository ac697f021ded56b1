"""The training loop, readable top to bottom.

    config → data (long-tailed, on the device) → the run's parts (model, loss, optimiser, schedule,
    mixer, sampler) → for each epoch: schedule hooks, draw the epoch's indices with the sampler, run
    the epoch (for each batch: augment, mix, forward, loss, backward, optimiser step), evaluate
    → events to callbacks → a run folder.

The epoch itself is an *epoch runner*: :class:`EagerEpoch` below is the reference a student reads;
on a GPU the same steps replay from CUDA graphs (:class:`ltlib.fast.GraphEpoch`, or a model-stack
of several runs in ``ltlib.sweep``). The loop calls either the same way and never branches on it;
the tests compare the graph runner with this one step by step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ltlib import losses, mixing, optim, samplers
from ltlib.calibration import Outputs, adjust
from ltlib.config import Config
from ltlib.data import Dataset, load_dataset, make_long_tailed
from ltlib.determinism import BackendFlags
from ltlib.families import check_data_needs, eager_reason
from ltlib.fast import BackgroundEvaluation, Member, graph_epoch
from ltlib.inputs import Inputs, predict
from ltlib.metrics import evaluate
from ltlib.models import Classifier
from ltlib.parts import Parts, build_model_and_loss, build_parts
from ltlib.provenance import provenance
from ltlib.runs import check_store, new_run_id, save_run
from ltlib.state import TrainState

__all__ = ["Cancelled", "Config", "EagerEpoch", "Event", "Result", "TrainingDiverged", "train"]


@dataclass
class Event:
    """What the loop reports: ``kind`` is start, step, epoch, eval or end.

    ``data``: at start the run's info (what meta.json records) and its ``config``; at epoch and eval
    the epoch's record (a line of metrics.jsonl); at end the ``run_id`` and the final metrics (eval.json).
    """

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
class Result:
    run_id: str
    path: Path | None
    eval: dict[str, Any]
    history: list[dict[str, Any]]
    model: torch.nn.Module


class EpochRunner(Protocol):
    """Trains one epoch over a device tensor of training indices at a learning rate."""

    warm_up_seconds: float  # set-up before the first epoch (graph capture, compilation)
    note: str  # added to the run's engine note

    @property
    def loss_sum(self) -> torch.Tensor:
        """The epoch's summed batch losses (a device scalar), zeroed by the runner."""
        ...

    def __call__(self, order: torch.Tensor, lr: float) -> None: ...


# How a run gets its graph runner: (model, member, cfg, use_bf16) → runner. A sweep passes its
# model-stack's; alone, a run has a graph epoch of its own.
GraphEpochFactory = Callable[[Classifier, Member, Config, bool], EpochRunner]


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("training was cancelled")


def choose_engine(cfg: Config, device: torch.device) -> tuple[str, str]:
    """The engine a run of ``cfg`` uses on ``device`` and why (the reason is stored in the run's meta)."""
    if cfg.engine == "eager":
        return "eager", "asked for"
    reason = eager_reason(cfg)
    if reason is not None:
        return "eager", reason
    if cfg.engine == "auto" and device.type != "cuda":
        return "eager", "no CUDA device (graphs only pay off on a GPU)"
    return "graph", "CUDA graph" if device.type == "cuda" else "graph step, uncaptured on CPU"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} is not available on this machine; allowed: auto, cpu")
    return torch.device(name)


log = logging.getLogger("ltlib")


def with_validation_split(cfg: Config) -> tuple[Config, str]:
    """The config with the validation split its loss needs, and a note saying so.

    A loss with the "validation split" trait (AutoBalance) declares ``default_val_fraction``; when
    ``cfg.val_fraction`` is 0 that much of the long-tailed training set is held out instead.
    """
    entry = losses.LOSSES.get(cfg.loss)
    if cfg.val_fraction > 0 or "validation split" not in entry.traits:
        return cfg, ""
    default = typing.cast(type[losses.Loss], entry.obj).default_val_fraction  # LOSSES holds Loss classes
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
    check_needs(cfg, data)
    return data


def check_needs(cfg: Config, data: Dataset) -> None:
    """Raise ``ValueError`` when a chosen method needs images or domains that ``data`` lacks.

    ``Config.validate`` checks the same against the dataset's registry entry before loading; this
    checks the data itself (a dataset passed in by the caller).
    """
    offers = {t for t, has in (("images", data.is_image), ("domains", data.domains_train is not None)) if has}
    check_data_needs(cfg, offers)


def evaluation_logits(model: Classifier, inputs: Inputs, x: torch.Tensor, cfg: Config, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Test logits with the config's post-hoc adjustments (τ-norm, logit adjustment), and features."""
    # Only the training step is compiled: an eval-mode compile would add its warm-up to the run.
    eager = torch.compiler.set_stance("force_eager") if cfg.compile and inputs.device.type == "cuda" else contextlib.nullcontext()
    with eager:
        logits, feats = predict(model, inputs, x)
    weight = losses.head_weight(model).detach().float().cpu().numpy() if cfg.tau_norm is not None else None
    return adjusted_logits(logits.cpu().numpy(), feats.cpu().numpy(), weight, cfg, counts)


def adjusted_logits(
    logits: np.ndarray, feats: np.ndarray, head_weight: np.ndarray | None, cfg: Config, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the config's post-hoc adjustments (τ-norm needs the head's weight) to test logits."""
    outputs = Outputs(logits, np.empty(0), counts, feats, head_weight)
    return adjust(outputs, tau_norm=cfg.tau_norm, logit_tau=cfg.posthoc_tau).astype(np.float32), feats


def batch_loss(
    model: Classifier,
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
    """Forward a batch and return its loss (:func:`ltlib.losses.batch_objective`: mixed labels, sample
    weights, the optimiser's reduction), plus the model's own ``extra_loss`` terms, if any.

    Every loss is called the same way, with the penultimate ``features=`` and the batch's ``domains=``
    (a loss uses them only if its traits say so).
    """
    # No autocast weight cache: it would hold tensors across CUDA-graph replays.
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16, cache_enabled=False):
        feats = model.features(x)
        logits = model.head(feats)
        # A model may add its own terms (dual-path compound BN's auxiliary pass); None for most.
        model_terms = model.extra_loss(x, y, logits)
    loss = losses.batch_objective(loss_fn, logits, y, y_b, lam, features=feats.float(), domains=domains, weight=weight, reduce=reduce)
    return loss if model_terms is None else loss + model_terms


def optimizer_step(optimizer: torch.optim.Optimizer, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One optimiser step through a closure (zero grads, loss, backward), so SAM-like optimisers fit."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss()
        loss.backward()
        return loss

    # torch types a closure (and so step's result) as float; the loop's closures return the loss tensor, and step returns it.
    return optimizer.step(closure)  # type: ignore[arg-type, return-value]


class EagerEpoch:
    """The reference epoch: for each batch, augment, mix, forward, loss, backward and optimiser step."""

    note = ""
    warm_up_seconds = 0.0

    def __init__(
        self,
        state: TrainState,
        parts: Parts,
        train_tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
        ctx: mixing.MixContext,
        use_bf16: bool,
        on_step: Callable[[int, int], None],
    ) -> None:
        """``train_tensors``: the training images, labels and domains (or None) on the device;
        ``ctx``: the mixing method's context, which the loop keeps at the current epoch."""
        self.state, self.parts, self.ctx, self.use_bf16, self.on_step = state, parts, ctx, use_bf16, on_step
        self.x_train, self.y_train, self.d_train = train_tensors
        self.loss_sum = torch.zeros((), device=state.device)

    def __call__(self, order: torch.Tensor, lr: float) -> None:
        s, p, cfg, ctx = self.state, self.parts, self.state.cfg, self.ctx
        self.loss_sum.zero_()
        steps = math.ceil(len(order) / cfg.batch_size)
        for step in range(steps):
            self.on_step(step, steps)
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x, y = s.inputs(self.x_train[idx], s.generator), self.y_train[idx]
            ctx.domains = None if self.d_train is None else self.d_train[idx]
            x, y_a, y_b, lam = p.mixer(x, y, ctx)

            mixed_with = None if cfg.mixing == "none" else y_b
            weight = p.mixer.batch_weight  # per-sample loss weights of this batch, or None
            compute = partial(batch_loss, p.model, p.loss, x, y_a, mixed_with, lam, self.use_bf16, weight, p.reduce, ctx.domains)
            self.loss_sum += optimizer_step(s.optimizer, compute).detach()


def train(
    cfg: Config,
    callbacks: Iterable[Callable[[Event], None]] = (),
    cancel: threading.Event | None = None,
    dataset: Dataset | None = None,
    save: bool = True,
    root: str | Path | None = None,
    graph_epoch_factory: GraphEpochFactory | None = None,
) -> Result:
    """Train one run of ``cfg`` and save it as a run folder (unless ``save=False``).

    ``graph_epoch_factory``: how the run gets its graph runner when its engine is the graph (a
    sweep's model-stack seat); by default a graph epoch of its own. The process-wide backend flags the
    run sets (``ltlib.determinism``) are restored when it ends, by an error too.
    """
    with BackendFlags() as flags:
        return _train(cfg, callbacks, cancel, dataset, save, root, graph_epoch_factory, flags)


def _train(
    cfg: Config,
    callbacks: Iterable[Callable[[Event], None]],
    cancel: threading.Event | None,
    dataset: Dataset | None,
    save: bool,
    root: str | Path | None,
    graph_epoch_factory: GraphEpochFactory | None,
    flags: BackendFlags,
) -> Result:
    cfg.validate()
    if save:
        check_store(root)  # a store path that cannot hold runs fails now, not after the training
    cfg, val_note = with_validation_split(cfg)
    callbacks = list(callbacks)

    def emit(event: Event) -> None:
        for cb in callbacks:
            cb(event)

    # --- set up: device, data, parts
    started = time.time()
    device = resolve_device(cfg.device)
    flags.apply(cfg.deterministic, device)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    data = prepare_data(cfg, dataset)
    counts = data.class_counts()
    inputs = Inputs(data, device)

    model, model_name, loss_fn = build_model_and_loss(cfg, data, device)
    if cfg.tau_norm is not None and not isinstance(model.head, torch.nn.Linear):
        raise ValueError(f"tau_norm={cfg.tau_norm} needs a linear classifier head; loss {cfg.loss!r} uses the {loss_fn.head} head")
    engine, engine_note = choose_engine(cfg, device)
    if device.type == "cuda" and data.is_image and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs.channels_last = True
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
    parts = build_parts(cfg, data, device, (model, model_name, loss_fn))
    state = TrainState(cfg, data, model, loss_fn, parts.optimizer, counts, device, generator, parts.sampler, inputs)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    d_train = None if data.domains_train is None else data.domains_train.to(device)

    drawer = samplers.Drawer(y_train, data.num_classes)

    def draw_batch(class_probs: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """An augmented batch of ``n`` images drawn by class probabilities (mixing methods' second batch)."""
        idx = drawer(class_probs, n, generator)
        return inputs(x_train[idx], generator), y_train[idx]

    ctx = mixing.MixContext(counts, generator, 0, cfg.epochs, draw_batch, model, loss_fn, data.num_domains)

    def on_step(step: int, steps: int) -> None:
        _check_cancel(cancel)
        emit(Event("step", state.epoch, cfg.epochs, step, steps))

    # --- the epoch runner: the reference loop, or the same steps replayed from CUDA graphs
    def make_runner() -> EpochRunner:
        if engine == "eager":
            return EagerEpoch(state, parts, (x_train, y_train, d_train), ctx, use_bf16, on_step)
        mixer = None if cfg.mixing == "none" else parts.mixer
        sharpness = parts.optimizer.rho if isinstance(parts.optimizer, optim.SAM) and parts.optimizer.active else 0.0
        member = Member(
            loss_fn, model.head, inputs, x_train, y_train, generator, d_train, mixer, ctx, sharpness, parts.optimizer, parts.reduce
        )
        return (graph_epoch_factory or graph_epoch)(model, member, cfg, use_bf16)

    setup_started = time.time()
    runner = make_runner()
    engine_note += runner.note
    # A GPU run that falls back to the eager loop is several times slower: say so, not only in meta.json.
    log.log(
        logging.WARNING if engine == "eager" and device.type == "cuda" else logging.INFO,
        "%s engine on %s%s",
        engine,
        device,
        f": {engine_note}" if engine_note else "",
    )
    steps = math.ceil(len(y_train) / cfg.batch_size)
    history: list[dict[str, Any]] = []
    test_domains = None if data.domains_test is None else data.domains_test.numpy()
    test_domain_names = None if data.domains_test is None else data.domain_names
    info = {"class_counts": counts.tolist(), "model": model_name, "device": str(device), "engine": engine, "engine_note": engine_note}
    # What ltlib.runs.load_model needs to rebuild the model and take raw inputs (with input_mean/input_std in the arrays).
    info["input_shape"], info["input_dtype"] = list(data.input_shape), str(data.x_train.dtype).removeprefix("torch.")
    if val_note:
        info["val_note"] = val_note
    if data.domain_names:
        info["domain_names"] = data.domain_names
        info["domain_class_counts"] = data.domain_class_counts().tolist()
    # Graph capture (and compilation, if asked for) happens once, before the first epoch.
    info["setup_seconds"] = time.time() - setup_started
    info["warm_up_seconds"] = runner.warm_up_seconds
    emit(Event("start", 0, cfg.epochs, 0, steps, {**info, "config": cfg.to_dict()}))

    def publish(record: dict[str, Any], outputs: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
        """Add an epoch's test metrics (if it was evaluated) to its record, keep it and tell the callbacks."""
        epoch = record["epoch"] - 1
        summary: dict[str, Any] = {}
        if outputs is not None:
            summary = evaluate(outputs[0], data.y_test.numpy(), counts, domains=test_domains, domain_names=test_domain_names)
            record.update({k: summary[k] for k in ("accuracy", "balanced_accuracy", "many", "medium", "few", "ece", "nll")})
            if "per_domain_accuracy" in summary:
                record["per_domain_accuracy"] = summary["per_domain_accuracy"]
            record["per_class_accuracy"] = summary["per_class_accuracy"]
            emit(Event("eval", epoch, cfg.epochs, steps, steps, record))
        history.append(record)
        emit(Event("epoch", epoch, cfg.epochs, steps, steps, record))
        return summary

    # --- the loop
    waiting: dict[str, Any] | None = None  # an evaluated epoch's record, while its test pass runs
    for epoch in range(cfg.epochs):
        state.epoch = ctx.epoch = epoch
        lr = cfg.learning_rate(epoch)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        state.class_probs = state.sampler.probabilities(epoch)
        state.log = {}
        for part in parts.hooks:  # DRW, staged losses, two-stage schedules …
            part.on_epoch_start(epoch, state)
        state.sampler.on_epoch_start(epoch, state)  # meta-learned rates; after a stage switch, the new sampler's
        if state.rebuild:  # a hook changed what a step does (a stage switch, SAM or a mixing method switching on)
            if waiting is not None:  # the pending test pass belongs to the model as it was
                assert background is not None, "only a background pass leaves a record waiting"
                publish(waiting, adjusted_logits(*background.result(), cfg, counts))
                waiting = None
            runner, state.rebuild = make_runner(), False
            if background is not None:
                background = BackgroundEvaluation(model, inputs, data.x_test)
        lr = state.optimizer.param_groups[0]["lr"]  # a hook may set it (two-stage schemes restart the lr)
        within = state.sampler.within_class(y_train, d_train)
        order = samplers.draw_indices(y_train, state.class_probs, len(y_train), generator, state.sampler.instance, within)

        _check_cancel(cancel)
        runner(order, lr)

        if waiting is not None:  # the previous epoch's test pass ran beside this epoch's training
            assert background is not None, "only a background pass leaves a record waiting"
            publish(waiting, adjusted_logits(*background.result(), cfg, counts))
            waiting = None
        # One host synchronisation per epoch: the mean loss, which also catches NaN/inf.
        mean_loss = float(runner.loss_sum) / steps
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
        # The input normalisation, per channel (images) or feature, so a saved model takes raw inputs.
        "input_mean": inputs.mean.flatten().cpu().numpy(),
        "input_std": inputs.std.flatten().cpu().numpy(),
    }
    head_arrays = getattr(model.head, "test_arrays", None)  # e.g. each expert's test logits (BalPoE)
    if head_arrays is not None:
        with torch.no_grad():
            arrays.update({k: v.float().cpu().numpy() for k, v in head_arrays(torch.from_numpy(feats_np).to(device)).items()})
    if data.domains_test is not None:  # per-domain metrics can be recomputed from a saved run
        arrays["test_domains"] = data.domains_test.numpy().astype(np.int64)
    if data.x_val is not None and data.y_val is not None:  # post-hoc calibration (temperature scaling) is fitted on these
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


def _save(
    cfg: Config,
    data: Dataset,
    counts: np.ndarray,
    history: list[dict[str, Any]],
    info: dict[str, Any],
    started: float,
    root: str | Path | None,
    status: str,
    error: str | None = None,
    final: dict[str, Any] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    model: torch.nn.Module | None = None,
) -> Path:
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
        **provenance(cfg, info["device"]),
    }
    state_dict = model.state_dict() if model is not None else None
    return save_run(new_run_id(cfg.dataset, cfg.loss), cfg.to_dict(), meta, history, final, arrays, state_dict, root)
