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
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.scale = scale
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.uniform_(-1, 1)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(f, dim=1), F.normalize(self.weight, dim=1))


@HEADS.register("experts", paper="Sanchez Aimar, Jonnarth, Felsberg & Kuhlmann, Balanced Product of Calibrated Experts, CVPR 2023")
class ExpertsHead(nn.Module):
    """K expert classifiers on shared features; in training the stacked expert logits, at test their mean.

    Training mode returns shape (B, K, C) so a loss can treat each expert separately (BalPoE asks for
    this head); eval mode returns the product of experts' logits, the mean over experts, (B, C).
    Each expert is a cosine classifier with scale s (``normed``, as the official CIFAR configs) or linear.
    """

    def __init__(self, in_features: int, num_classes: int, num_experts: int = 3, normed: bool = True, scale: float = 30.0) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts={num_experts} is out of range; allowed: >= 1")
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
        if self.backbone_frozen:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    backbone_frozen: bool = False
    backbone_eval: bool = False

    def freeze_backbone(self, freeze_norm_stats: bool = True) -> None:
        """Stop training the backbone: no gradients; with ``freeze_norm_stats`` its norm layers also keep
        their running statistics (``train()`` then leaves the backbone in eval mode, so batch norm
        normalises with, and never updates, its running mean and variance).

        Two-stage methods (cRT, LWS, MARC) call this when stage 2 starts.
        """
        self.backbone.requires_grad_(False)
        self.backbone_frozen = True
        self.backbone_eval = freeze_norm_stats
        self.train(self.training)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.backbone_eval:
            self.backbone.eval()
        return self


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
