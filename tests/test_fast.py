"""The fast path (ltlib.fast, a CUDA graph on GPUs) computes the same training as the eager loop.

On the CPU the graph epoch runs uncaptured: same batches, same augmentation draws, its own
foreach SGD with a learning-rate tensor. torch.optim.SGD rounds ``p − lr·d`` slightly differently,
so the first epoch's mean loss agrees to 1e-5 (relative) and later epochs, where rounding has
compounded through a few dozen steps, to 2e-3.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from ltlib.presets import preset
from ltlib.train import train


@pytest.mark.parametrize(
    "kw",
    [
        dict(model="mlp"),
        dict(model="cnn", loss="balanced_softmax", nesterov=True),
        dict(model="resnet8", loss="ldam", schedule="drw", schedule_params={"start_epoch": 1}, batch_size=40),
    ],
)
def test_graph_engine_matches_eager_losses(kw):
    cfg = dict(epochs=3, imbalance=10, lr=0.02, device="cpu", **kw)  # the uncaptured graph step
    eager = train(preset("digits-quick", engine="eager", **cfg), save=False)
    fast = train(preset("digits-quick", engine="graph", **cfg), save=False)
    losses_eager = [h["loss"] for h in eager.history]
    losses_fast = [h["loss"] for h in fast.history]
    assert losses_fast[0] == pytest.approx(losses_eager[0], rel=1e-5)
    assert losses_fast == pytest.approx(losses_eager, rel=2e-3)


def test_engine_falls_back_with_a_reason():
    result = train(preset("digits-quick", engine="graph", epochs=1, norm="compound_bn", device="cpu"))
    from ltlib.runs import load_run

    meta = load_run(result.run_id).meta
    assert meta["engine"] == "eager" and "norm 'compound_bn'" in meta["engine_note"]
    assert load_run(train(preset("digits-quick", epochs=1, device="cpu")).run_id).meta["engine"] == "eager"  # auto on CPU


def test_bad_engine_is_rejected():
    with pytest.raises(ValueError, match="engine='warp' is not allowed; allowed: auto, eager, graph"):
        train(preset("digits-quick", engine="warp"))


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_side_stream_weight_gradients_match_a_plain_convolution(dtype):
    from ltlib.models import Conv2d

    torch.manual_seed(0)
    conv = Conv2d(16, 32, 3, 2, 1, bias=False).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(64, 16, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last).requires_grad_()
    stream = torch.cuda.Stream()
    out = []
    for side in (None, stream):
        conv.grad_stream = side
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = conv(x)
        grads = torch.autograd.grad(y.float().square().sum(), (x, conv.weight))
        torch.cuda.current_stream().wait_stream(stream)
        out.append((y, *grads))
    for plain, split in zip(*out):
        assert split.dtype == plain.dtype
        assert ((split - plain).norm() / plain.norm()).item() < 1e-3


@gpu
@pytest.mark.parametrize("bf16", [False, True])
def test_captured_graphs_with_side_stream_weight_gradients_train_like_one_stream(bf16, monkeypatch):
    """A race between the two streams would show as diverging losses; the eager loop draws its crops
    in another order on the GPU, so only its first epoch is comparable."""
    from ltlib import fast

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 means float32 here: TF32 noise compounds
    cfg = preset("digits-quick", epochs=3, imbalance=10, lr=0.02, model="resnet8", batch_size=40, bf16=bf16, device="cuda")
    eager = train(replace(cfg, engine="eager"), save=False)
    side = train(replace(cfg, engine="graph"), save=False)
    monkeypatch.setattr(fast, "SIDE_STREAM_WEIGHT_GRADS", False)
    one = train(replace(cfg, engine="graph"), save=False)
    losses_side, losses_one = [h["loss"] for h in side.history], [h["loss"] for h in one.history]
    assert losses_side[0] == pytest.approx(eager.history[0]["loss"], rel=5e-3)
    assert losses_side == pytest.approx(losses_one, rel=1e-3 if not bf16 else 1e-2)


@gpu
def test_background_evaluation_sees_the_weights_of_its_epoch():
    from ltlib.data import load_dataset
    from ltlib.fast import BackgroundEvaluation
    from ltlib.models import build_model
    from ltlib.train import Inputs, predict

    data = load_dataset("digits")
    inputs = Inputs(data, torch.device("cuda"))
    model = build_model("resnet8", data.input_shape, data.num_classes).cuda()
    background = BackgroundEvaluation(model, inputs, data.x_test)
    expected = [t.cpu().numpy() for t in predict(model, inputs, data.x_test)]
    background.start()
    with torch.no_grad():  # the next epoch changes the weights while the test pass runs
        for p in model.parameters():
            p.mul_(-3.0)
    logits, feats, weight = background.result()
    assert np.allclose(logits, expected[0], atol=1e-4) and np.allclose(feats, expected[1], atol=1e-4)
    assert np.allclose(weight, -model.head.weight.detach().cpu().numpy() / 3, atol=1e-6)
    assert not np.allclose(predict(model, inputs, data.x_test)[0].cpu().numpy(), logits, atol=1e-3)
