"""Models: MLP, a small CNN and CIFAR-style ResNet-8/20/32, each with a swappable head.

Every model exposes ``features(x)`` (the penultimate vector) and ``head`` (linear or
cosine-normalised), so ``model(x) == model.head(model.features(x))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ltlib.registry import Registry

MODELS = Registry("model", fixed=("input_shape", "num_classes", "head", "norm"))
HEADS = Registry("head", fixed=("in_features", "num_classes"))
NORMS = Registry("norm layer", fixed=("channels",))


@HEADS.register("linear", paper="the usual fully-connected classifier")
class LinearHead(nn.Linear):
    """Linear classifier z = W f + b."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes)


@HEADS.register("cosine", paper="Cao et al., LDAM, NeurIPS 2019 (NormedLinear in the official code)")
class CosineHead(nn.Module):
    """Cosine classifier z_c = s · cos(f, w_c), no bias; LDAM's normed head.

    The official LDAM code returns plain cosines and multiplies by s inside the loss; here the
    head owns s (set by the loss that asks for this head) so evaluation sees the same logits.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 1.0) -> None:
        super().__init__()
        # Same initialisation as the official NormedLinear: uniform, then unit-norm columns.
        w = torch.empty(num_classes, in_features).uniform_(-1, 1)
        self.weight = nn.Parameter(w / w.norm(dim=1, keepdim=True))
        self.scale = scale

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(f, dim=1), F.normalize(self.weight, dim=1))


@NORMS.register("batchnorm", paper="Ioffe & Szegedy, ICML 2015")
def batchnorm(channels: int) -> nn.Module:
    """Standard batch normalisation."""
    return nn.BatchNorm2d(channels)


class DarBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that routes noise images to their own statistics (DAR-BN, Zada et al. 2022).

    In training, natural images go through ordinary batch norm (and update the running statistics);
    images flagged in ``noise_mask`` are normalised with the mean and variance of the noise images
    alone, then scaled by the same affine γ, β (gradients flow through both paths). In eval mode, or
    with no mask, it is plain batch norm. The mask is set per batch by :func:`set_noise_mask`.
    """

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
    if model is None:
        return
    for m in model.modules():
        if isinstance(m, DarBatchNorm2d):
            m.noise_mask = mask


class Classifier(nn.Module):
    """A backbone producing features plus a head producing logits."""

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


@MODELS.register("mlp", paper="multi-layer perceptron")
def mlp(
    input_shape: tuple[int, ...], num_classes: int, head: str = "linear", norm: str = "batchnorm", hidden: int = 128, depth: int = 2
) -> Classifier:
    """Multi-layer perceptron on flattened inputs (features, or small images such as digits)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    return Classifier(nn.Sequential(*layers), width, num_classes, head)


@MODELS.register("cnn", paper="a small two-block convolutional network")
def cnn(input_shape: tuple[int, ...], num_classes: int, head: str = "linear", norm: str = "batchnorm", width: int = 32) -> Classifier:
    """Small CNN: two conv–norm–ReLU–pool blocks, global average pooling."""
    c = input_shape[0]
    backbone = nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1, bias=False),
        NORMS.build(norm, width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        NORMS.build(norm, 2 * width),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Classifier(backbone, 2 * width, num_classes, head)


class BasicBlock(nn.Module):
    """He et al. 2016 CIFAR block; shortcut option A (subsample + zero-pad channels), as in LDAM's code."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = NORMS.build(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = NORMS.build(norm, cout)
        self.stride, self.pad = stride, cout - cin

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32×32 inputs: 3 stages of 16/32/64 channels, n blocks each (depth = 6n + 2)."""

    def __init__(self, depth: int, in_channels: int, norm: str) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth={depth} is not allowed; CIFAR ResNets have depth 6n+2 (8, 20, 32, 44, 56, 110)")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = NORMS.build(norm, 16)
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


def _resnet(depth: int):
    def build(input_shape: tuple[int, ...], num_classes: int, head: str = "linear", norm: str = "batchnorm") -> Classifier:
        model = Classifier(CifarResNet(depth, input_shape[0], norm), 64, num_classes, head)
        if isinstance(model.head, nn.Linear):
            nn.init.kaiming_normal_(model.head.weight)
        return model

    build.__doc__ = f"CIFAR ResNet-{depth} (He et al., CVPR 2016): 3 stages of 16/32/64 channels, {(depth - 2) // 6} blocks each."
    return build


for _depth in (8, 20, 32):
    MODELS.register(f"resnet{_depth}", paper="He, Zhang, Ren & Sun, Deep Residual Learning, CVPR 2016")(_resnet(_depth))


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    head: str = "linear",
    head_params: dict | None = None,
    norm: str = "batchnorm",
    **params,
) -> Classifier:
    """Build a registered model; ``head_params`` go to the head (e.g. the cosine head's scale)."""
    HEADS.check_params(head, head_params or {})
    model = MODELS.build(name, input_shape, num_classes, head=head, norm=norm, **params)
    if head_params:
        model.head = HEADS.build(head, model.feature_dim, num_classes, **head_params)
    return model
