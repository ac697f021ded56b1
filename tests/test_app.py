"""Every page of the app under streamlit.testing's AppTest: renders, key widgets, a digits run end to end."""

import os
import sys

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "app"))  # the app's shared helpers (common.py)
os.environ["LTLIB_UMAP_WARM_UP"] = "0"  # no background UMAP compilation in tests

PAGES = ["data", "train", "per_class", "margins", "embeddings", "calibration", "compare", "lab", "lessons"]


def new_app() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=60)
    at.run()
    assert not at.exception
    return at


def open_page(at: AppTest, name: str) -> AppTest:
    at.switch_page(f"views/{name}.py").run()
    assert not at.exception, at.exception
    return at


def finish_job(at: AppTest) -> None:
    """Wait for the session's training thread, then rerun as the page's poll would."""
    job = at.session_state["job"]
    job.thread.join(timeout=120)
    assert job.status == "finished", job.error
    at.run()


def train_digits(at: AppTest) -> None:
    open_page(at, "train")
    at.button(key="start").click().run()
    assert not at.exception and not at.error
    finish_job(at)


@pytest.fixture
def trained():
    """An app session with one finished digits run."""
    at = new_app()
    train_digits(at)
    return at


def test_train_page_defaults_and_widgets():
    at = new_app()  # the default page is Train
    assert at.title[0].value == "Train"
    labels = [s.label for s in at.selectbox]
    for family in ("dataset", "model", "loss", "sampler", "mixing", "schedule", "optimizer"):
        assert family in labels
    assert at.selectbox(key="w_loss").value == "ce" and at.selectbox(key="w_dataset").value == "digits"
    assert not at.button(key="start").disabled and at.button(key="stop").disabled


def test_digits_run_from_train_page_finishes_and_shows_metrics(trained):
    at = trained
    assert [m.label for m in at.metric][:2] == ["balanced accuracy", "accuracy"]
    assert 0 <= float(at.metric[0].value) <= 1
    assert at.query_params["runs"] == at.session_state["job"].run_id


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_runs(page):
    at = open_page(new_app(), page)
    assert at.title[0].value.replace("-", "_").lower() == page


@pytest.mark.parametrize("page", ["per_class", "margins", "embeddings", "calibration"])
def test_run_pages_show_figures_of_the_run(trained, page):
    at = open_page(trained, page)
    assert at.selectbox(key="w_run").value == at.session_state["job"].run_id
    assert len(at.get("plotly_chart")) >= 1
    assert not at.error


def test_bad_setting_shows_error_and_app_stays_usable():
    at = new_app()  # (imbalance 0.5 cannot be typed: the widget has the config's range, see test_hostile_app.py)
    at.number_input(key="w_cfg_digits-quick_lr").set_value(-1.0).run()
    at.button(key="start").click().run()
    assert "lr=-1" in at.error[0].value
    at.number_input(key="w_cfg_digits-quick_lr").set_value(0.05).run()
    assert not at.exception and not at.button(key="start").disabled


def test_bad_method_parameter_fails_in_validation_with_one_line():
    """A method parameter of the wrong type is refused before any training starts, in the contract's words."""
    at = new_app()
    at.selectbox(key="w_loss").set_value("balpoe").run()
    at.text_input(key="p_loss_balpoe_lambdas").input("1, abc").run()
    at.button(key="start").click().run()
    message = at.error[0].value
    assert message == "loss 'balpoe': lambdas=[1, 'abc'] must be a list of numbers; allowed: " + (
        "a list of numbers with one test-prior exponent per expert (at least one)"
    )
    assert "job" not in at.session_state and not at.exception


def test_method_widgets_take_their_bounds_from_the_constraints():
    at = new_app()
    at.selectbox(key="w_loss").set_value("focal").run()
    gamma = at.number_input(key="p_loss_focal_gamma")
    assert gamma.min == 0.0 and gamma.max is None and "allowed: a number in [0, inf)" in gamma.help


def test_batch_larger_than_data_reports_the_reason():
    at = new_app()
    at.number_input(key="w_cfg_digits-quick_batch_size").set_value(100000).run()
    at.button(key="start").click().run()
    job = at.session_state["job"]
    job.thread.join(timeout=60)
    at.run()
    assert job.status == "error" and "batch_size=100000" in at.error[0].value


def test_image_folder_outside_data_roots_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LTLIB_DATA_ROOTS", str(tmp_path / "allowed"))
    at = open_page(new_app(), "data")
    at.selectbox(key="w_dataset").set_value("imagefolder").run()
    at.text_input(key="w_data_path").input("/etc").run()
    assert "outside the allowed data roots" in at.error[0].value
    (tmp_path / "allowed").mkdir()
    at.text_input(key="w_data_path").input(str(tmp_path / "allowed" / "missing")).run()
    assert "does not exist" in at.error[0].value


def test_url_parameters_set_the_controls():
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=60)
    at.query_params.update({"loss": "focal", "imbalance": "50", "mixing": "mixup"})
    at.run()
    assert at.selectbox(key="w_loss").value == "focal"
    assert at.number_input(key="w_imbalance").value == 50.0
    assert at.selectbox(key="w_mixing").value == "mixup"
    at.selectbox(key="w_sampler").set_value("class_balanced").run()
    assert at.query_params["sampler"] == "class_balanced" and at.query_params["loss"] == "focal"


def test_unknown_url_value_is_ignored_with_a_warning():
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=60)
    at.query_params["loss"] = "no-such-loss"
    at.run()
    assert not at.exception and at.selectbox(key="w_loss").value == "ce"
    assert "no-such-loss" in at.warning[0].value


def test_lab_toggle_retrains_and_steps_back():
    at = open_page(new_app(), "lab")
    at.button(key="lab_train").click().run()  # opening the Lab trains nothing; later changes retrain
    finish_job(at)
    assert len(at.get("plotly_chart")) == 1  # the first result only
    at.toggle(key="w_mixing_lab").set_value(True).run()
    assert at.session_state["job"].cfg.mixing == "mixup"
    finish_job(at)
    assert len(at.get("plotly_chart")) == 4  # before, after, groups, delta
    at.button(key="lab_back").click().run()
    assert not at.toggle(key="w_mixing_lab").value  # controls follow the result shown
    assert at.session_state["lab"].pos == 0


def test_lesson_sets_lab_controls():
    at = open_page(new_app(), "lessons")
    at.button(key="lesson_2_2").click().run()
    assert not at.exception
    assert at.session_state["cfg"]["loss"] == "balanced_softmax"
    at.session_state["job"].thread.join(timeout=120)


def test_compare_names_the_single_toggle(trained):
    at = trained
    at.selectbox(key="w_loss").set_value("balanced_softmax").run()
    at.button(key="start").click().run()
    finish_job(at)
    open_page(at, "compare")
    text = " ".join(m.value for m in at.markdown)
    assert "differ in one setting: **loss**" in text
    assert len(at.get("plotly_chart")) == 3


def test_diverged_run_shows_its_error_and_is_marked_failed():
    at = new_app()
    at.number_input(key="w_cfg_digits-quick_lr").set_value(1e12).run()
    at.number_input(key="w_cfg_digits-quick_epochs").set_value(3).run()
    at.button(key="start").click().run()
    job = at.session_state["job"]
    job.thread.join(timeout=60)
    at.run()
    assert job.status == "failed"
    assert any("training diverged" in e.value for e in at.error)
    from ltlib.runs import list_runs

    assert [r.status for r in list_runs()] == ["failed"]


def test_url_round_trip_and_data_roots(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import common

    monkeypatch.setattr(common, "list_runs", lambda: [SimpleNamespace(id="a"), SimpleNamespace(id="b")])  # a link names saved runs
    cfg = dict(common.DEFAULTS, loss="focal", imbalance=50.0, runs=["a", "b"])
    params = common.url_params(cfg)
    assert params == {"imbalance": "50", "loss": "focal", "runs": "a,b"}
    back = dict(common.DEFAULTS, runs=[])
    assert common.load_url(back, params) == [] and back == cfg
    assert "profile" in common.load_url(back, {"profile": "zigzag"})[0]
    monkeypatch.setenv("LTLIB_DATA_ROOTS", str(tmp_path))
    (tmp_path / "imgs").mkdir()
    assert common.check_data_path(str(tmp_path / "imgs")) == (tmp_path / "imgs").resolve()
    with pytest.raises(ValueError, match="outside the allowed data roots"):
        common.check_data_path(str(tmp_path / ".." / "elsewhere"))


def test_calibration_sliders_recompute_metrics_without_retraining(trained):
    from ltlib import calibration, metrics
    from ltlib.runs import load_run

    at = open_page(trained, "calibration")
    assert not at.slider(key="w_cal_tau_norm").disabled
    assert at.metric[0].value == f"{load_run(at.session_state['job'].run_id).eval['balanced_accuracy']:.3f}"
    at.slider(key="w_cal_logit_tau").set_value(1.0).run()
    at.slider(key="w_cal_temperature").set_value(2.0).run()
    assert not at.exception and not at.error
    out = calibration.Outputs.from_run(load_run(at.session_state["job"].run_id))
    want = metrics.evaluate(calibration.adjust(out, 2.0, None, 1.0), out.labels, out.class_counts)
    shown = {m.label: m.value for m in at.metric}
    assert shown["balanced accuracy"] == f"{want['balanced_accuracy']:.3f}" and shown["ECE"] == f"{want['ece']:.3f}"


def test_train_page_offers_every_config_field():
    from dataclasses import fields

    from ltlib.train import Config

    at = new_app()
    keys = {w.key for w in [*at.number_input, *at.text_input, *at.checkbox, *at.selectbox] if w.key}
    family_fields = {f"{f}_params" for f in ("loss", "sampler", "mixing", "schedule", "optimizer")} | {
        "dataset_params",
        "model_params",
        "norm_params",
    }
    for f in fields(Config):
        if f.name in family_fields:
            continue  # typed per method in each method's "parameters" expander
        assert f"w_{f.name}" in keys or f"w_cfg_digits-quick_{f.name}" in keys, f.name


def test_embeddings_page_shows_decision_regions_for_toy2d():
    from ltlib.train import Config, train

    train(Config(dataset="toy2d", model="mlp", epochs=2, batch_size=64, warmup_epochs=0, eval_every=2))
    at = open_page(new_app(), "embeddings")
    assert not at.error and len(at.get("plotly_chart")) == 1
    assert "decision regions" in at.caption[0].value


def test_job_of_a_closed_tab_stops_itself():
    """A job nobody polls (its tab was closed) cancels at its next event; nothing is saved."""
    import common

    from ltlib.presets import preset
    from ltlib.runs import list_runs

    job = common.Job(preset("digits-quick", epochs=2))
    job.last_seen -= common.ORPHAN_SECONDS + 1
    job.run()
    assert job.status == "cancelled" and list_runs() == []


def test_lab_waits_for_a_train_page_run_instead_of_cancelling_it():
    at = new_app()
    at.number_input(key="w_cfg_digits-quick_epochs").set_value(200).run()
    at.button(key="start").click().run()
    job = at.session_state["job"]
    open_page(at, "lab")
    assert at.session_state["job"] is job and not job.cancel.is_set()
    assert "still training" in at.info[0].value
    job.cancel.set()
    job.thread.join(timeout=60)


def test_stop_cancels_the_run_and_saves_nothing():
    from ltlib.runs import list_runs

    at = new_app()
    at.number_input(key="w_cfg_digits-quick_epochs").set_value(500).run()
    at.button(key="start").click().run()
    assert not at.button(key="stop").disabled
    at.button(key="stop").click().run()
    job = at.session_state["job"]
    job.thread.join(timeout=60)
    at.run()
    assert job.status == "cancelled" and list_runs() == []
    assert any("stopped" in i.value for i in at.info)


def test_lab_dataset_choice_picks_its_quick_preset():
    at = open_page(new_app(), "lab")
    at.button(key="lab_train").click().run()
    first = at.session_state["job"]
    assert first.cfg.dataset == "digits" and first.cfg.model == "mlp"
    at.selectbox(key="w_dataset_lab").set_value("fashion-mnist").run()
    job = at.session_state["job"]
    assert job.cfg.dataset == "fashion-mnist" and job.cfg.model == "cnn"
    assert first.cancel.is_set() or not first.running  # one training per session
    assert at.query_params["dataset"] == "fashion-mnist"
    job.cancel.set()
    job.thread.join(timeout=120)


def test_method_needing_domains_is_marked_and_blocked_on_single_domain_data():
    from ltlib import samplers

    needy = [n for n in samplers.SAMPLERS.available() if "domains" in samplers.SAMPLERS.get(n).needs]
    if not needy:
        pytest.skip("no registered sampler declares needs=('domains',)")
    at = new_app()
    at.selectbox(key="w_sampler").set_value(needy[0]).run()
    assert at.button(key="start").disabled
    assert any("needs domains" in e.value for e in at.error)
    at.selectbox(key="w_dataset").set_value("digits-domains").run()
    assert not at.button(key="start").disabled and not at.error


def test_per_class_page_shows_each_balpoe_expert_beside_the_product():
    from ltlib.presets import preset
    from ltlib.train import train

    train(preset("digits-quick", loss="balpoe", epochs=3))
    at = open_page(new_app(), "per_class")
    assert "fig_expert_accuracy" in {c.key for c in at.get("plotly_chart")}
