"""``ltlib.runs.load_model``: a saved run's model, for every model × head × norm and the schedules that
change the model, reproduces the run's saved test logits from raw test inputs; and it exports to ONNX.

Tolerance: rtol = atol = 1e-5 (float32). On a CPU the reloaded model runs the same float32 operations
as the run's evaluation and is bit-identical there (measured: 0 difference in every case below without post-hoc adjustments);
the slack covers what may legitimately differ: the evaluation ran in batches of at most 256 images
(``ltlib.inputs.predict``) and a BLAS or oneDNN kernel may block another batch size differently, and
the post-hoc adjustments (τ-norm, logit adjustment) ran in NumPy with a float64 prior where the
model runs them in torch float32 (measured: at most 1e-6 on logits of size 4). A run trained on a GPU
(TF32 convolutions) would need more slack; these runs are trained on the CPU.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from ltlib import losses
from ltlib.calibration import Outputs, adjust
from ltlib.config import Config
from ltlib.models import HEADS, MODELS, NORMS
from ltlib.presets import preset
from ltlib.runs import ARRAYS, MODEL, CorruptRun, Run, load_model, load_run
from ltlib.schedules import SCHEDULES
from ltlib.train import prepare_data, train

RTOL = ATOL = 1e-5


def _loss_for(head: str) -> str:
    """The first loss (registry order) that trains with ``head`` and needs nothing special of the data."""
    counts = np.full(10, 10)
    for entry in losses.LOSSES.entries():
        if not entry.traits & {"domains", "validation split"} and losses.build(entry.name, counts).head == head:
            return entry.name
    raise AssertionError(f"no loss trains the {head} head")


def _config(**kw) -> Config:
    """A tiny digits-LT run (one epoch; two for the two-stage schedules), with what its model needs."""
    cfg = preset("digits-quick", epochs=1, imbalance=10, device="cpu", eval_every=1, feature_samples=100, **kw)
    if "changes model" in SCHEDULES.get(cfg.schedule).traits:
        cfg = replace(cfg, epochs=2)
    return replace(cfg, mixing="bbn") if cfg.model == "bbn" else cfg


CASES = [
    *(pytest.param(_config(model=m, loss=_loss_for(h)), id=f"{m}-{h}") for m in MODELS.available() for h in HEADS.available()),
    pytest.param(_config(dataset="toy2d", model="mlp"), id="mlp-toy2d-features"),
    *(pytest.param(_config(model="cnn", norm=n), id=f"cnn-{n}") for n in NORMS.available() if n != "batchnorm"),
    *(
        pytest.param(_config(model="cnn", schedule=s, loss=_loss_for(h)), id=f"cnn-{h}-{s}")
        for s in SCHEDULES.available()
        if "changes model" in SCHEDULES.get(s).traits
        for h in ("linear", "cosine")  # these schedules need one weight row per class: not the experts head
    ),
    pytest.param(_config(model="mlp", tau_norm=1.0, posthoc_tau=1.0), id="mlp-tau_norm-posthoc_tau"),
    pytest.param(_config(model="cnn", schedule="lws", posthoc_tau=0.5), id="cnn-lws-posthoc_tau"),
]


def _reloaded(cfg: Config, root) -> tuple[Run, torch.Tensor]:
    """A trained, saved and reloaded run, and its raw test inputs as the dataset gives them."""
    run = load_run(train(cfg, root=root).run_id, root)
    return run, prepare_data(run.checked_config()).x_test


@pytest.mark.slow
@pytest.mark.parametrize("cfg", CASES)
def test_loaded_model_reproduces_the_saved_test_logits(cfg: Config, tmp_path):
    run, x = _reloaded(cfg, tmp_path)
    model = load_model(run)
    assert not model.training
    assert str(x.dtype) == f"torch.{model.input_dtype}" and tuple(x.shape[1:]) == model.input_shape
    with torch.no_grad():
        logits, features = model(x), model.features(x)
    assert logits.dtype == torch.float32
    np.testing.assert_allclose(logits.numpy(), run.arrays["test_logits"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(features.numpy(), run.arrays["test_features"], rtol=RTOL, atol=ATOL)


def test_posthoc_false_gives_the_classifier_logits_that_the_evaluation_adjusted(tmp_path):
    run, x = _reloaded(_config(model="mlp", tau_norm=1.0, posthoc_tau=1.0), tmp_path)
    model = load_model(run, posthoc=False)
    with torch.no_grad():
        raw, features = model(x).numpy(), model.features(x).numpy()
    a = run.arrays
    adjusted = adjust(Outputs(raw, a["test_labels"], a["class_counts"], features, a["head_weight"]), tau_norm=1.0, logit_tau=1.0)
    assert not np.allclose(raw, a["test_logits"], atol=1e-3)
    np.testing.assert_allclose(adjusted, a["test_logits"], rtol=RTOL, atol=ATOL)


def test_load_model_takes_a_run_id_and_leaves_the_random_state_alone(tmp_path):
    run, x = _reloaded(_config(model="cnn"), tmp_path)
    state = torch.get_rng_state()
    model = load_model(run.id, tmp_path)
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        assert torch.equal(model(x[:7]), model(x)[:7])  # eval mode: each row depends on its own input alone


def test_run_saved_before_the_normalisation_was_stored_is_rebuilt_from_its_data(tmp_path):
    run, x = _reloaded(_config(model="cnn"), tmp_path)
    arrays = {k: v for k, v in run.arrays.items() if k not in ("input_mean", "input_std")}
    (run.path / ARRAYS).unlink()
    save_numpy(arrays, str(run.path / ARRAYS))
    meta = {k: v for k, v in run.meta.items() if k not in ("input_shape", "input_dtype")}
    (run.path / "meta.json").write_text(json.dumps(meta))
    with torch.no_grad():
        logits = load_model(run.path).forward(x)
    np.testing.assert_allclose(logits.numpy(), arrays["test_logits"], rtol=RTOL, atol=ATOL)


def test_files_that_do_not_rebuild_the_model_raise_corrupt_run(tmp_path):
    run, _ = _reloaded(_config(model="cnn", schedule="lws"), tmp_path)
    state = run.state_dict()
    save_torch({k: v for k, v in state.items() if k != "head.scales"}, str(run.path / MODEL))
    with pytest.raises(CorruptRun, match=r"model\.safetensors: does not fit the model that config.json builds \(.*head\.scales"):
        load_model(run.path)
    save_torch(state, str(run.path / MODEL))
    (run.path / "meta.json").write_text(json.dumps({**run.meta, "input_shape": "8x8"}))
    with pytest.raises(CorruptRun, match=r"meta\.json: input_shape is \"8x8\""):
        load_model(run.path)
    (run.path / "meta.json").write_text(json.dumps({**run.meta, "input_shape": [3, 8, 8]}))
    with pytest.raises(CorruptRun, match=r"arrays\.safetensors: input_mean and input_std have shapes \[1\] and \[1\], expected \[3\]"):
        load_model(run.path)
    (run.path / "meta.json").write_text(json.dumps({**run.meta, "status": "failed"}))
    with pytest.raises(ValueError, match="is failed; only a finished run has a saved model"):
        load_model(run.path)


def test_loaded_model_exports_to_onnx(tmp_path):
    """The docs/reuse.md example: a digits model with its normalisation and post-hoc adjustment, uint8 in, logits out."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")  # torch.onnx.export's exporter
    ort = pytest.importorskip("onnxruntime")
    run, x = _reloaded(_config(model="cnn", posthoc_tau=1.0), tmp_path)
    model = load_model(run)
    path = tmp_path / "digits.onnx"
    torch.onnx.export(
        model, (x[:2],), path, input_names=["images"], output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    (logits,) = session.run(None, {"images": x.numpy()})
    # ONNX Runtime's own float32 kernels round differently from torch's: a little more slack.
    np.testing.assert_allclose(logits, run.arrays["test_logits"], rtol=1e-4, atol=1e-4)
