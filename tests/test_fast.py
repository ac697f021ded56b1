"""The fast path (ltlib.fast, a CUDA graph on GPUs) computes the same training as the eager loop.

On the CPU the graph epoch runs uncaptured: same batches, same augmentation draws, its own
foreach SGD with a learning-rate tensor. torch.optim.SGD rounds ``p − lr·d`` slightly differently,
so the first epoch's mean loss agrees to 1e-5 (relative) and later epochs, where rounding has
compounded through a few dozen steps, to 2e-3.
"""

import pytest

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
    cfg = dict(epochs=3, imbalance=10, lr=0.02, **kw)
    eager = train(preset("digits-quick", engine="eager", **cfg), save=False)
    fast = train(preset("digits-quick", engine="graph", **cfg), save=False)
    losses_eager = [h["loss"] for h in eager.history]
    losses_fast = [h["loss"] for h in fast.history]
    assert losses_fast[0] == pytest.approx(losses_eager[0], rel=1e-5)
    assert losses_fast == pytest.approx(losses_eager, rel=2e-3)


def test_engine_falls_back_with_a_reason():
    result = train(preset("digits-quick", engine="graph", epochs=1, mixing="mixup"))
    from ltlib.runs import load_run

    meta = load_run(result.run_id).meta
    assert meta["engine"] == "eager" and "mixup" in meta["engine_note"]
    assert load_run(train(preset("digits-quick", epochs=1)).run_id).meta["engine"] == "eager"  # auto on CPU


def test_bad_engine_is_rejected():
    with pytest.raises(ValueError, match="engine='warp' is not allowed; allowed: auto, eager, graph"):
        train(preset("digits-quick", engine="warp"))
