"""Models: MLP, a small CNN and CIFAR-style ResNet-8/20/32, each with a swappable head.

Every model exposes ``features(x)`` (the penultimate vector) and ``head`` (linear or
cosine-normalised), so ``model(x) == model.head(model.features(x))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ltlib.registry import Check, Interval, Registry

if TYPE_CHECKING:
    from ltlib.state import TrainState

MODELS = Registry("model", fixed=("input_shape", "num_classes", "head", "norm"))
HEADS = Registry("head", fixed=("in_features", "num_classes"))
NORMS = Registry("norm layer", fixed=("channels",))
# What a model's ``norm`` argument may be: a NORMS name, or a factory channels -> layer.
Norm = str | Callable[[int], nn.Module]


class _ConvSideStreamWeightGrad(torch.autograd.Function):
    """A bias-free convolution whose backward computes the weight gradient on a side stream.

    In a ResNet's backward pass each layer's weight gradient (a reduction over the batch) is needed
    only by the optimiser, while the input gradient feeds the next layer down. Putting the former
    on its own stream lets the GPU run it beside the chain of input gradients (13 % off a captured
    ResNet-32 step on an H100). The caller must make its stream wait for ``stream`` before reading
    the weight gradients (``ltlib.fast`` does, before the SGD update).
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding, groups, stream, weight_lp):
        # Same casts as autocast would make; the convolution then runs on the cast tensors.
        # ``weight_lp`` is a low-precision copy the optimiser keeps current (one cast kernel fewer).
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        xc = x.to(dtype)
        wc = weight_lp if weight_lp is not None and weight_lp.dtype == dtype else weight.to(dtype)
        ctx.save_for_backward(xc, wc)
        ctx.conf = (stride, padding, groups, stream, x.dtype, weight.dtype)
        with torch.autocast("cuda", enabled=False):
            return F.conv2d(xc, wc, None, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad):
        xc, wc = ctx.saved_tensors
        stride, padding, groups, stream, x_dtype, w_dtype = ctx.conf
        args = (None, stride, padding, (1, 1), False, (0, 0), groups)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            grad_w = torch.ops.aten.convolution_backward(grad, xc, wc, *args, (False, True, False))[1].to(w_dtype)
        # The allocator must not hand these to another kernel before the side stream has read them.
        grad.record_stream(stream)
        xc.record_stream(stream)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, xc, wc, *args, (True, False, False))[0].to(x_dtype)
        return grad_x, grad_w, None, None, None, None, None


# torch.compile cannot trace the stream switch: this call stays outside the compiled regions
# (torch._disable_dynamo imports dynamo only when first called, i.e. only on this GPU path).
@torch._disable_dynamo
def _conv_side_stream_weight_grad(x, weight, stride, padding, groups, stream, weight_lp):
    return _ConvSideStreamWeightGrad.apply(x, weight, stride, padding, groups, stream, weight_lp)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that can compute its weight gradient on ``grad_stream`` (set by ``ltlib.fast`` on a GPU).

    ``weight_lp``, if set, is a bf16 copy of the weight that the caller refreshes after every update.
    """

    grad_stream: torch.cuda.Stream | None = None
    weight_lp: torch.Tensor | None = None

    def _plain(self) -> bool:
        """The side-stream function covers plain and grouped convolutions (no bias, dilation, padding mode or string padding)."""
        return self.bias is None and self.dilation == (1, 1) and self.padding_mode == "zeros" and not isinstance(self.padding, str)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_stream is None or not torch.is_grad_enabled() or not self._plain():
            return super().forward(x)
        return _conv_side_stream_weight_grad(x, self.weight, self.stride, self.padding, self.groups, self.grad_stream, self.weight_lp)


@HEADS.register("linear", paper="the usual fully-connected classifier")
class LinearHead(nn.Linear):
    """Linear classifier z = W f + b."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes)


@HEADS.register(
    "cosine",
    paper="Cao et al., LDAM, NeurIPS 2019 (NormedLinear in the official code)",
    constraints={"scale": Interval(0, None, closed="neither")},
)
class CosineHead(nn.Module):
    """Cosine classifier z_c = s · cos(f, w_c), no bias; LDAM's normed head.

    The official LDAM code returns plain cosines and multiplies by s inside the loss; here the
    head owns s (set by the loss that asks for this head) so evaluation sees the same logits.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 1.0) -> None:
        super().__init__()
        # Same initialisation as the official NormedLinear: uniform, then unit-norm columns.
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.scale = scale
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.uniform_(-1, 1)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(f, dim=1), F.normalize(self.weight, dim=1))


@HEADS.register(
    "experts",
    paper="Sanchez Aimar, Jonnarth, Felsberg & Kuhlmann, Balanced Product of Calibrated Experts, CVPR 2023",
    constraints={"num_experts": Interval(1, None), "scale": Interval(0, None, closed="neither")},
)
class ExpertsHead(nn.Module):
    """K expert classifiers on shared features; in training the stacked expert logits, at test their mean.

    Training mode returns shape (B, K, C) so a loss can treat each expert separately (BalPoE asks for
    this head); eval mode returns the product of experts' logits, the mean over experts, (B, C).
    Each expert is a cosine classifier with scale s (``normed``, as the official CIFAR configs) or linear.
    """

    def __init__(self, in_features: int, num_classes: int, num_experts: int = 3, normed: bool = True, scale: float = 30.0) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            CosineHead(in_features, num_classes, scale) if normed else LinearHead(in_features, num_classes) for _ in range(num_experts)
        )

    def expert_logits(self, f: torch.Tensor) -> torch.Tensor:
        """Logits of every expert, shape (B, K, C)."""
        return torch.stack([e(f) for e in self.experts], dim=1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = self.expert_logits(f)
        return z if self.training else z.mean(dim=1)

    def test_arrays(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        """Arrays saved with a run: each expert's test logits, (K, N, C)."""
        return {"test_expert_logits": self.expert_logits(f).transpose(0, 1)}


@NORMS.register("batchnorm", paper="Ioffe & Szegedy, ICML 2015")
def batchnorm(channels: int) -> nn.Module:
    """Standard batch normalisation."""
    return nn.BatchNorm2d(channels)


@NORMS.register(
    "compound_bn",
    paper="Cheng, Fang, Zhang, Li & Huang, Compound Batch Normalization for Long-tailed Image Classification, ACM MM 2022",
    constraints={"components": Interval(1, None), "momentum": Interval(0, 1), "eps": Interval(0, None, closed="neither")},
    # The graph engine's warm-up steps are undone by restoring the state dict, which would reset the
    # mixture's first-batch initialisation after the layer has marked itself initialised.
    eager="initialises its mixture from the first training batch, which the graph warm-up would undo",
)
class CompoundBatchNorm(nn.Module):
    """Compound batch norm: a K-component Gaussian mixture of feature statistics, fitted by moving-average EM.

    Each feature vector x (a pixel's C channels, or a sample's features) gets responsibilities
    r_k ∝ π_k·N(x; μ_k, diag σ²_k) under the running mixture (E-step), and is normalised as
    x̂ = Σ_k r_k·(x − μ_k)/√(σ²_k + ε), then scaled and shifted per channel (γ, β) as in batch norm.
    In training, μ_k and σ²_k are the batch's responsibility-weighted statistics (the M-step, with
    gradients, as batch norm uses batch statistics), and the running mixture moves towards them:
    θ ← (1 − m)·θ + m·θ_batch for means, variances and weights π (m = 0.1, batch norm's momentum).
    At test the running mixture is used. EM needs distinct starts: the components start at K mutually
    far feature vectors of the first training batch (greedy farthest points), with the batch variance
    and π_k = 1/K.
    K = 1 is batch norm (biased batch variance). K defaults to 3: the paper's default could not be
    checked here (no official code was found), so treat it as a tunable choice.
    """

    running_means: torch.Tensor
    running_vars: torch.Tensor
    running_priors: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, channels: int, components: int = 3, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.components, self.momentum, self.eps = components, momentum, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_means", torch.zeros(components, channels))
        self.register_buffer("running_vars", torch.ones(components, channels))
        self.register_buffer("running_priors", torch.full((components,), 1.0 / components))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready = False

    def responsibilities(self, x: torch.Tensor, components: torch.Tensor | None = None) -> torch.Tensor:
        """E-step: posterior of each component for rows of x (N, C), under the running mixture: (N, K),
        or (N, len(components)) over only the given components (renormalised among them)."""
        means, var = self.running_means, self.running_vars + self.eps
        log_prior = self.running_priors.clamp_min(1e-12).log()
        if components is not None:
            means, var, log_prior = means[components], var[components], log_prior[components]
        sq = ((x[:, None, :] - means[None]) ** 2 / var[None]).sum(-1)
        return torch.softmax(log_prior[None] - 0.5 * (sq + var.log().sum(-1)[None]), dim=1)

    def _batch_statistics(self, rows: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """M-step on a batch: responsibility-weighted means and variances (with gradients), and each component's mass."""
        mass = r.sum(0).clamp_min(1e-6)
        means = (r.T @ rows) / mass[:, None]
        variances = ((r.T @ rows.pow(2)) / mass[:, None] - means.pow(2)).clamp_min(0.0)
        return means, variances, mass

    def _normalize(self, rows: torch.Tensor, r: torch.Tensor, means: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
        """x̂ = Σ_k r_k·(x − μ_k)/√(σ²_k + ε), before the affine γ, β."""
        return torch.einsum("nk,nkc->nc", r, (rows[:, None, :] - means[None]) / (variances[None] + self.eps).sqrt())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Mixture statistics (E[x²] − E[x]², softmax over log-densities) need fp32, as batch norm keeps
        # under autocast; the matrix products below would otherwise run in bf16.
        with torch.autocast(x.device.type, enabled=False):
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.movedim(1, -1).reshape(-1, shape[1]).float()  # (N, C): one feature vector per pixel/sample
        if self.training:
            if not self._ready:  # one host check per layer, then a Python flag
                if not bool(self.initialized):
                    self._initialize(rows.detach())
                self._ready = True
            normalized = self._train_normalize(rows, len(x))
        else:
            normalized = self._normalize(rows, self.responsibilities(rows), self.running_means, self.running_vars)
        out = normalized * self.weight + self.bias
        return out.reshape(*shape[:1], *shape[2:], shape[1]).movedim(-1, 1).to(x.dtype)

    def _train_normalize(self, rows: torch.Tensor, batch: int) -> torch.Tensor:
        """Training: one moving-average EM step over all rows of the batch, and the normalised rows."""
        r = self.responsibilities(rows.detach())
        means, variances, mass = self._batch_statistics(rows, r)
        with torch.no_grad():
            m = self.momentum
            self.running_means.lerp_(means.detach(), m)
            self.running_vars.lerp_(variances.detach(), m)
            self.running_priors.lerp_(mass / mass.sum(), m)
        return self._normalize(rows, r, means, variances)

    @torch.no_grad()
    def _initialize(self, rows: torch.Tensor) -> None:
        # Greedy farthest-point starts: the batch mean's farthest vector, then each next one farthest from those chosen.
        chosen = [rows.mean(0)]
        for _ in range(self.components):
            dist = torch.cdist(rows, torch.stack(chosen)).min(dim=1).values
            chosen.append(rows[dist.argmax()])
        self.running_means.copy_(torch.stack(chosen[1:]) if self.components > 1 else rows.mean(0, keepdim=True))
        self.running_vars.copy_(rows.var(0, unbiased=False).expand_as(self.running_vars))
        self.running_priors.fill_(1.0 / self.components)
        self.initialized.fill_(True)


def frequency_groups(class_counts: Any, splits: int) -> torch.Tensor:
    """Group of each class: classes sorted by training count (most frequent first), cut into ``splits``
    groups of near-equal size; group 0 holds the head classes, the last group the tail."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    order = torch.argsort(-counts, stable=True)
    groups = torch.empty(len(counts), dtype=torch.long)
    for g, chunk in enumerate(torch.tensor_split(order, splits)):
        groups[chunk] = g
    return groups


def component_owners(components: int, splits: int) -> torch.Tensor:
    """Group that owns each mixture component: contiguous blocks of near-equal size, the larger blocks
    going to the less frequent groups (K = 3, two groups: head {0}, tail {1, 2})."""
    sizes = [components // splits + (g >= splits - components % splits) for g in range(splits)]
    return torch.repeat_interleave(torch.arange(splits), torch.tensor(sizes))


@NORMS.register(
    "compound_bn_dual",
    paper="Cheng, Fang, Zhang, Li & Huang, Compound Batch Normalization for Long-tailed Image Classification, ACM MM 2022",
    traits=("second pass",),
    constraints={
        "components": Interval(1, None),
        "momentum": Interval(0, 1),
        "eps": Interval(0, None, closed="neither"),
        "splits": Interval(2, None),
        "consistency": Interval(0, None),
    },
    eager="runs a second, class-aware forward pass per training step (dual-path learning)",
)
class DualPathCompoundBatchNorm(CompoundBatchNorm):
    """Compound batch norm trained dual-path: an auxiliary pass with class-aware split normalisation diversifies the mixture.

    Mainstream path: ordinary compound BN (see ``compound_bn``); it alone is used at test. Auxiliary
    path, in training only: the same network (shared weights) sees the batch again, and each compound
    BN layer splits the batch by class frequency: classes are sorted by training count and cut into
    ``splits`` groups (2: head, tail), each group owns its own block of mixture components (K = 3, two
    groups: head {0}, tail {1, 2}), and a sample of group g is normalised only by g's components —
    responsibilities renormalised over them, means and variances from g's samples alone — and moves
    only those components' running means and variances (momentum m). So components are fitted to
    the less frequent classes instead of following the head. Mixture weights π move in the
    mainstream path only (they must stay one distribution over all K).
    Training objective: ℓ(z_main, y) + CE(z_aux, y) + λ·(1/B)·Σ_i ‖softmax(z_main,i) − sg(softmax(z_aux,i))‖²,
    where ℓ is the run's loss and sg stops the gradient: the mainstream is pulled towards the
    auxiliary prediction, never the other way round (λ = ``consistency``).
    Not recoverable here (the paper's method section and code could not be read; only its abstract
    and summaries): the number of groups, how components are assigned to groups, the consistency
    distance, its direction and weight; the choices above are this library's. The auxiliary term
    uses plain cross-entropy (no class weights) on the first labels of a mixed batch.
    """

    # Per-batch information set by :func:`set_batch_context`: the batch's labels (None: mainstream
    # path) and each class's frequency group (set once per epoch by the classifier).
    batch_context = ("labels", "class_group")
    labels: torch.Tensor | None = None
    class_group: torch.Tensor | None = None
    owner: torch.Tensor  # buffer: the frequency group that owns each mixture component

    def __init__(
        self, channels: int, components: int = 3, momentum: float = 0.1, eps: float = 1e-5, splits: int = 2, consistency: float = 1.0
    ) -> None:
        super().__init__(channels, components, momentum, eps)
        if not 2 <= splits <= components:
            raise ValueError(f"splits={splits} is out of range; allowed: 2 <= splits <= components ({components})")
        self.splits, self.consistency = splits, consistency
        self.register_buffer("owner", component_owners(components, splits), persistent=False)

    def _train_normalize(self, rows: torch.Tensor, batch: int) -> torch.Tensor:
        if self.labels is None or self.class_group is None:
            return super()._train_normalize(rows, batch)
        # Each sample contributes len(rows) / batch rows (its pixels), in sample order.
        row_group = self.class_group.to(rows.device)[self.labels].repeat_interleave(len(rows) // batch)
        out = torch.zeros_like(rows)
        for g in range(self.splits):
            own, chosen = (self.owner == g).nonzero().squeeze(1), row_group == g
            part = rows[chosen]
            if len(part) == 0:
                continue
            r = self.responsibilities(part.detach(), own)
            means, variances, _ = self._batch_statistics(part, r)
            with torch.no_grad():
                self.running_means[own] = self.running_means[own].lerp(means.detach(), self.momentum)
                self.running_vars[own] = self.running_vars[own].lerp(variances.detach(), self.momentum)
            out[chosen] = self._normalize(part, r, means, variances)
        return out

    def dual_objective(self, main_logits: torch.Tensor, aux_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The auxiliary path's terms: CE(z_aux, y) + λ·mean_i ‖softmax(z_main,i) − sg(softmax(z_aux,i))‖²."""
        main_logits, aux_logits = main_logits.float(), aux_logits.float()
        gap = (main_logits.softmax(1) - aux_logits.softmax(1).detach()).pow(2).sum(1).mean()
        return F.cross_entropy(aux_logits, y) + self.consistency * gap


def set_batch_context(model: nn.Module | None, **values: Any) -> None:
    """Hand per-batch information to the layers of ``model`` that ask for it (``batch_context`` names the keys
    a layer takes: DAR-BN's ``noise_mask``, dual-path compound BN's ``labels`` and ``class_group``).

    A value stays until the next call; layers that do not list a key are unaffected.
    """
    if model is None:
        return
    for m in model.modules():
        for key in getattr(m, "batch_context", ()):
            if key in values:
                setattr(m, key, values[key])


def make_norm(norm: Norm, channels: int) -> nn.Module:
    """A norm layer for ``channels``: a NORMS name, or a factory (``build_model`` binds ``norm_params``)."""
    return norm(channels) if callable(norm) else NORMS.build(norm, channels)


class DarBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that routes noise images to their own statistics (DAR-BN, Zada et al. 2022).

    In training, natural images go through ordinary batch norm (and update the running statistics);
    images flagged in ``noise_mask`` are normalised with the mean and variance of the noise images
    alone, then scaled by the same affine γ, β (gradients flow through both paths). In eval mode, or
    with no mask, it is plain batch norm. The mask is set per batch by :func:`set_noise_mask`.
    """

    batch_context = ("noise_mask",)
    noise_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.noise_mask
        if not self.training or mask is None or len(mask) != len(x) or not bool(mask.any()):
            return super().forward(x)
        natural = ~mask
        noise = x[mask]
        mean = noise.mean((0, 2, 3), keepdim=True)
        var = noise.var((0, 2, 3), unbiased=False, keepdim=True)
        shape = (1, -1, 1, 1)
        parts = [super().forward(x[natural])] if bool(natural.any()) else []
        parts.append((noise - mean) / torch.sqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape))
        order = torch.cat([natural.nonzero().squeeze(1), mask.nonzero().squeeze(1)])
        return torch.cat(parts)[torch.argsort(order)]


@NORMS.register("dar_bn", paper="Zada, Benou & Irani, Pure Noise to the Rescue of Insufficient Data, ICML 2022")
def dar_bn(channels: int) -> nn.Module:
    """DAR-BN: separate batch statistics for pure-noise and natural images, shared affine."""
    return DarBatchNorm2d(channels)


def set_noise_mask(model: nn.Module | None, mask: torch.Tensor | None) -> None:
    """Tell every DAR-BN layer of ``model`` which samples of the coming batch are noise (None: none).

    The mask stays until the next call; layers ignore it in eval mode or when its length differs
    from the batch they see. Models without DAR-BN layers are unaffected.
    """
    set_batch_context(model, noise_mask=mask)


class Classifier(nn.Module):
    """A backbone producing features plus a head producing logits."""

    backbone: nn.Module
    head: nn.Module
    feature_dim: int

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, head: str | nn.Module = "linear") -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.head = HEADS.build(head, feature_dim, num_classes) if isinstance(head, str) else head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def on_epoch_start(self, epoch: int, state: TrainState) -> None:
        """Tell layers that split a batch by class frequency (dual-path compound BN) each class's group."""
        for m in self.modules():
            if isinstance(m, DualPathCompoundBatchNorm):
                m.class_group = frequency_groups(state.class_counts, m.splits).to(m.owner.device)

    def extra_loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """Terms the model adds to a training batch's loss (None: none), given the batch and its logits.

        Dual-path compound BN: a second, label-aware pass through the network (the auxiliary path)
        and its objective, :meth:`DualPathCompoundBatchNorm.dual_objective`.
        """
        dual = next((m for m in self.modules() if isinstance(m, DualPathCompoundBatchNorm)), None)
        if dual is None or not self.training or dual.class_group is None:
            return None
        set_batch_context(self, labels=y)
        try:
            aux_logits = self(x)
        finally:
            set_batch_context(self, labels=None)
        return dual.dual_objective(logits, aux_logits, y)

    backbone_eval: bool = False

    def freeze_backbone(self, freeze_norm_stats: bool = True) -> None:
        """Stop training the backbone: no gradients; with ``freeze_norm_stats`` its norm layers also keep
        their running statistics (``train()`` then leaves the backbone in eval mode, so batch norm
        normalises with, and never updates, its running mean and variance).

        Two-stage methods (cRT, LWS, MARC) call this when stage 2 starts.
        """
        # No gradients reach frozen parameters (autograd records nothing for them unless the input
        # itself needs a gradient, as adversarial augmentation does).
        self.backbone.requires_grad_(False)
        self.backbone_eval = freeze_norm_stats
        self.train(self.training)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.backbone_eval:
            self.backbone.eval()
        return self


# Every model is a Classifier, whose on_epoch_start hands dual-path compound BN layers the class groups.
@MODELS.register(
    "mlp", paper="multi-layer perceptron", traits=("epoch hook",), constraints={"hidden": Interval(1, None), "depth": Interval(0, None)}
)
def mlp(
    input_shape: tuple[int, ...], num_classes: int, head: str = "linear", norm: Norm = "batchnorm", hidden: int = 128, depth: int = 2
) -> Classifier:
    """Multi-layer perceptron on flattened inputs (features, or small images such as digits)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    return Classifier(nn.Sequential(*layers), width, num_classes, head)


@MODELS.register("cnn", paper="a small two-block convolutional network", traits=("epoch hook",), constraints={"width": Interval(1, None)})
def cnn(input_shape: tuple[int, ...], num_classes: int, head: str = "linear", norm: Norm = "batchnorm", width: int = 32) -> Classifier:
    """Small CNN: two conv–norm–ReLU–pool blocks, global average pooling."""
    c = input_shape[0]
    backbone = nn.Sequential(
        Conv2d(c, width, 3, padding=1, bias=False),
        make_norm(norm, width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        Conv2d(width, 2 * width, 3, padding=1, bias=False),
        make_norm(norm, 2 * width),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Classifier(backbone, 2 * width, num_classes, head)


class BasicBlock(nn.Module):
    """He et al. 2016 CIFAR block; shortcut option A (subsample + zero-pad channels), as in LDAM's code.

    In a model-stack (``ltlib.stack``) the buffer ``embed`` holds the shortcut as a fixed 1×1
    convolution that subsamples and pads each model's block of channels on its own.
    """

    def __init__(self, cin: int, cout: int, stride: int, norm: Norm) -> None:
        super().__init__()
        self.conv1 = Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, cout)
        self.conv2 = Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, cout)
        self.stride, self.pad = stride, cout - cin
        self.embed: torch.Tensor | None
        self.register_buffer("embed", None, persistent=False)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        if self.embed is not None:
            return F.conv2d(x, self.embed, stride=self.stride)
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32×32 inputs: 3 stages of 16/32/64 channels, n blocks each (depth = 6n + 2)."""

    def __init__(self, depth: int, in_channels: int, norm: Norm) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth={depth} is not allowed; CIFAR ResNets have depth 6n+2 (8, 20, 32, 44, 56, 110)")
        n = (depth - 2) // 6
        self.conv = Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = make_norm(norm, 16)
        blocks, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1, norm))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _resnet(depth: int) -> Callable[..., Classifier]:
    def build(input_shape: tuple[int, ...], num_classes: int, head: str = "linear", norm: Norm = "batchnorm") -> Classifier:
        model = Classifier(CifarResNet(depth, input_shape[0], norm), 64, num_classes, head)
        if isinstance(model.head, nn.Linear):
            nn.init.kaiming_normal_(model.head.weight)
        return model

    build.__doc__ = f"CIFAR ResNet-{depth} (He et al., CVPR 2016): 3 stages of 16/32/64 channels, {(depth - 2) // 6} blocks each."
    return build


for _depth in (8, 20, 32):
    MODELS.register(f"resnet{_depth}", paper="He, Zhang, Ren & Sun, Deep Residual Learning, CVPR 2016", traits=("epoch hook",))(
        _resnet(_depth)
    )


def auto_model(input_shape: tuple[int, ...]) -> str:
    """The model ``"auto"`` picks: an MLP for features and images under 16 px, a small CNN under 32 px, else ResNet-32."""
    if len(input_shape) == 1 or input_shape[-1] < 16:
        return "mlp"
    return "cnn" if input_shape[-1] < 32 else "resnet32"


def cumulative_alpha(epoch: int, epochs: int) -> float:
    """BBN's cumulative-learning weight of the conventional branch, α = 1 − (t/T)², t the 0-based epoch.

    The official code writes 1 − ((epoch − 1)/T)² with 1-based epochs (and T = 100/200 for 90/180-epoch runs).
    """
    return 1.0 - (epoch / epochs) ** 2


def _split_backbone(backbone: nn.Module, branch_layers: int) -> tuple[nn.Module, nn.Module]:
    """Split a backbone into a shared trunk and its last ``branch_layers`` residual blocks (ResNets) or
    weight layers (MLP/CNN, with what follows them), returned as (trunk, branch)."""
    if isinstance(backbone, CifarResNet):
        blocks = list(backbone.blocks)
        if not 1 <= branch_layers < len(blocks):
            raise ValueError(f"branch_layers={branch_layers} is out of range; allowed: [1, {len(blocks) - 1}] for this ResNet")
        trunk = nn.Sequential(backbone.conv, backbone.bn, nn.ReLU(), *blocks[:-branch_layers])
        return trunk, nn.Sequential(*blocks[-branch_layers:], nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if isinstance(backbone, nn.Sequential):
        layers = list(backbone)
        weighted = [i for i, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv2d))]
        if not 1 <= branch_layers < len(weighted):
            raise ValueError(f"branch_layers={branch_layers} is out of range; allowed: [1, {len(weighted) - 1}] for this model")
        cut = weighted[-branch_layers]
        return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:])
    raise ValueError(f"cannot split a {type(backbone).__name__} into BBN branches; use an mlp, cnn or resnet backbone")


class BilateralBackbone(nn.Module):
    """BBN's feature extractor: a shared trunk, then a conventional and a re-balancing branch.

    Training input is a pair batch (B, 2, …) from the ``bbn`` mixing: item 0 goes through the
    conventional branch, item 1 through the re-balancing branch, and the features are
    2·[α·f_c, (1 − α)·f_r], so a linear head gives 2·(α·W_c f_c + (1 − α)·W_r f_r). At test both branches
    see the same image with α = ½, i.e. W_c f_c + W_r f_r (the official code's factor 2 keeps the
    training and test logit scales equal).
    """

    def __init__(self, trunk: nn.Module, conventional: nn.Module, rebalancing: nn.Module, input_ndim: int) -> None:
        super().__init__()
        self.trunk, self.conventional, self.rebalancing = trunk, conventional, rebalancing
        self.input_ndim = input_ndim
        self.alpha = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == self.input_ndim + 2:
            f_c, f_r = self.conventional(self.trunk(x[:, 0])), self.rebalancing(self.trunk(x[:, 1]))
            alpha = self.alpha
        elif self.training:
            raise ValueError("model 'bbn' trains on pairs of batches; use it with --mixing bbn")
        else:
            h = self.trunk(x)
            f_c, f_r, alpha = self.conventional(h), self.rebalancing(h), 0.5
        return 2 * torch.cat([alpha * f_c, (1 - alpha) * f_r], dim=1)


class BBNClassifier(Classifier):
    """A :class:`Classifier` whose bilateral backbone follows BBN's cumulative-learning α over epochs."""

    bilateral = True
    backbone: BilateralBackbone

    def on_epoch_start(self, epoch: int, state: TrainState) -> None:
        super().on_epoch_start(epoch, state)
        self.backbone.alpha = cumulative_alpha(epoch, state.cfg.epochs)
        state.log["bbn_alpha"] = self.backbone.alpha


@MODELS.register(
    "bbn",
    paper="Zhou, Cui, Wei & Chen, BBN: Bilateral-Branch Network with Cumulative Learning, CVPR 2020",
    traits=("epoch hook",),
    constraints={
        "backbone": Check(lambda name: name == "auto" or (name in MODELS and name != "bbn"), "that names a model other than bbn, or auto"),
        "branch_layers": Interval(1, None),
    },
)
def bbn(
    input_shape: tuple[int, ...],
    num_classes: int,
    head: str = "linear",
    norm: Norm = "batchnorm",
    backbone: str = "auto",
    branch_layers: int = 1,
) -> Classifier:
    """BBN: two branches sharing early layers, mixed by cumulative learning α = 1 − (t/T)²; train with ``--mixing bbn``.

    ``backbone`` is any mlp/cnn/resnet model ("auto" as for ``--model auto``); each branch owns its last
    ``branch_layers`` residual blocks (ResNets) or weight layers (MLP/CNN): 1 as in the paper ("all
    weights shared except the last residual block"). The two branches are initialised independently.
    The classifier sees the concatenated features (one linear layer on [f_c, f_r], as the official code).
    """
    name = auto_model(input_shape) if backbone == "auto" else backbone
    first, second = (MODELS.build(name, input_shape, num_classes, head="linear", norm=norm) for _ in range(2))
    trunk, conventional = _split_backbone(first.backbone, branch_layers)
    _, rebalancing = _split_backbone(second.backbone, branch_layers)
    features = BilateralBackbone(trunk, conventional, rebalancing, len(input_shape))
    return BBNClassifier(features, 2 * first.feature_dim, num_classes, head)


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    head: str = "linear",
    head_params: dict[str, Any] | None = None,
    norm: str = "batchnorm",
    norm_params: dict[str, Any] | None = None,
    **params: Any,
) -> Classifier:
    """Build a registered model; ``head_params`` go to the head (e.g. the cosine head's scale),
    ``norm_params`` to every norm layer (e.g. compound batch norm's number of components)."""
    HEADS.check_params(head, head_params or {})
    NORMS.check_params(norm, norm_params or {})
    norm_arg = partial(NORMS.build, norm, **norm_params) if norm_params else norm
    model = MODELS.build(name, input_shape, num_classes, head=head, norm=norm_arg, **params)
    if head_params:
        model.head = HEADS.build(head, model.feature_dim, num_classes, **head_params)
    return model
