"""Model-stacks (ltlib.stack): K models in one network compute exactly what the K models compute."""

import pytest
import torch
import torch.nn.functional as F

from ltlib.models import BasicBlock, build_model
from ltlib.stack import BlockDiagonalConv2d, copy_pairs, stack_backbones, stack_channels, stack_reason


@pytest.mark.parametrize("channels_last", [False, True])
def test_stacked_shortcut_pads_each_model_on_its_own(channels_last):
    block = stack_backbones([BasicBlock(16, 32, 2, "batchnorm") for _ in range(3)])
    x = torch.randn(4, 48, 8, 8)
    expected = torch.cat([F.pad(part[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)) for part in x.chunk(3, dim=1)], dim=1)
    if channels_last:
        block, x = block.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    out = block.shortcut(x)
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("name", ["resnet8", "cnn"])
@pytest.mark.parametrize("training", [False, True])
def test_a_stack_computes_each_model(name, training):
    torch.manual_seed(0)
    models = [build_model(name, (3, 32, 32), 10) for _ in range(3)]
    with torch.no_grad():  # distinct running statistics, so eval mode tests them too
        for i, m in enumerate(models):
            for bn in (b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)):
                bn.running_mean.normal_(0, 0.1 * (i + 1))
                bn.running_var.uniform_(0.5, 2.0)
    stacked = stack_backbones([m.backbone for m in models])
    xs = [torch.randn(5, 3, 32, 32) for _ in models]
    for m in (*models, stacked):
        m.train(training)
    feats = stacked(stack_channels(xs)).unflatten(1, (3, -1))
    for k, (m, x) in enumerate(zip(models, xs)):
        assert torch.allclose(feats[:, k], m.backbone(x), atol=1e-5)


def test_copy_pairs_return_each_models_share_of_the_stack():
    models = [build_model("resnet8", (3, 32, 32), 10) for _ in range(2)]
    stacked = stack_backbones([m.backbone for m in models])
    with torch.no_grad():
        for p in stacked.parameters():
            p.add_(1.0)
        torch._foreach_copy_(*reversed(copy_pairs(stacked, [m.backbone for m in models])))
    assert torch.equal(models[1].backbone.conv.weight, stacked.conv.weight[16:, 3:])  # the stem: block-diagonal
    assert torch.equal(models[1].backbone.blocks[0].conv1.weight, stacked.blocks[0].conv1.weight[16:])  # grouped
    assert torch.equal(models[0].backbone.bn.bias, stacked.bn.bias[:16])


def test_block_diagonal_weights_stay_zero_off_the_diagonal():
    stacked = stack_backbones([build_model("resnet8", (3, 32, 32), 10).backbone for _ in range(3)])
    stem = stacked.conv
    assert isinstance(stem, BlockDiagonalConv2d) and isinstance(stacked.blocks[1].conv1, BlockDiagonalConv2d)  # stem, stride 2
    stacked(torch.randn(4, 9, 32, 32)).square().sum().backward()
    off = stem.mask == 0
    assert off.any() and not stem.weight[off.expand_as(stem.weight)].any()
    assert not stem.weight.grad[off.expand_as(stem.weight)].any() and stem.weight.grad.abs().sum() > 0


def test_models_without_a_stacked_form_are_named():
    assert "Linear" in stack_reason(build_model("mlp", (8,), 3).backbone)
    with pytest.raises(ValueError, match="cannot stack these models: layer 1 \\(Linear\\)"):
        stack_backbones([build_model("mlp", (8,), 3).backbone for _ in range(2)])
    assert stack_reason(build_model("resnet20", (3, 32, 32), 10).backbone) is None
