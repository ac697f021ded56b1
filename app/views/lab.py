"""Lab page: a compact control strip; each change retrains the quick preset and shows before / after
(opening the page, from a link or not, trains nothing until a click)."""

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import common
import streamlit as st
import torch

from ltlib import losses, mixing, plots, samplers
from ltlib.presets import preset
from ltlib.runs import load_run

IMBALANCES = [1.0, 10.0, 20.0, 50.0, 100.0, 200.0]
KEEP = 8  # results kept for stepping back and forth


@dataclass
class LabState:
    """The session's Lab results, oldest first; ``pos`` is the one shown as "after"."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    pos: int = -1
    key: tuple | None = None

    def add(self, controls: dict[str, Any], job: common.Job) -> None:
        # Called from the training thread: plain Python only.
        if job.status == "finished" and job.run_id:
            self.entries = [*self.entries, {"controls": controls, "run_id": job.run_id}][-KEEP:]
            self.pos = len(self.entries) - 1


# The Lab's quick presets by dataset: seconds on a CPU (digits), tens of seconds (Fashion-MNIST), a short
# CIFAR-10-LT run where there is a GPU.
LAB_PRESETS = {
    "digits": ("digits-quick", {}),
    "fashion-mnist": ("fashion-mnist-lt", {}),
    "cifar10": ("cifar10-lt", {"epochs": 30, "eval_every": 10}),
}
LAB_DATASETS = ["cifar10", "fashion-mnist"] if torch.cuda.is_available() else ["digits", "fashion-mnist"]


def lab_config(controls: dict[str, Any], seed: int):
    name, overrides = LAB_PRESETS[controls["dataset"]]
    return preset(name, seed=seed, **overrides, **controls)


def describe(c: dict[str, Any]) -> str:
    return f"{c['dataset']} · {c['loss']} · {c['sampler']} · mixup {'on' if c['mixing'] != 'none' else 'off'} · ×{c['imbalance']:g}"


def retrain() -> None:
    """A Lab control was changed (or a lesson step pressed): train the new controls."""
    st.session_state[common.LAB_TRAIN] = True


st.title("Lab")
cfg = common.settings()
lab: LabState = st.session_state.setdefault("lab", LabState())

strip = st.columns([2, 2, 2, 1, 3])
common.choose("data", "dataset", LAB_DATASETS, strip[0], widget="w_dataset_lab", on_change=retrain)
common.choose("loss", "loss", losses.LOSSES.available(), strip[1], help=common.method_help(losses.LOSSES), on_change=retrain)
common.choose("sampler", "sampler", samplers.SAMPLERS.available(), strip[2], help=common.method_help(samplers.SAMPLERS), on_change=retrain)
has_mixup = "mixup" in mixing.MIXING
on = strip[3].toggle("Mixup", value=cfg["mixing"] != "none", key="w_mixing_lab", disabled=not has_mixup, on_change=retrain)
cfg["mixing"] = "mixup" if on and has_mixup else "none"
options = sorted({*IMBALANCES, float(cfg["imbalance"])})
cfg["imbalance"] = float(
    strip[4].select_slider("imbalance", options, value=float(cfg["imbalance"]), key="w_imbalance_lab", on_change=retrain)
)
controls = {k: cfg[k] for k in ("dataset", "loss", "sampler", "mixing", "imbalance")}
key = tuple(controls.values())

job = common.current_job()
if job is not None and job.running and job.tag != "lab":
    # One training per session: a Train-page run is not cancelled behind the user's back (a pending request waits).
    st.info("A run started on the **Train** page is still training; the Lab trains when it ends (or stop it there).")
elif key != lab.key:
    known = [i for i, e in enumerate(lab.entries) if tuple(e["controls"].values()) == key]
    # Training starts on a click only: opening the page (a link, a visit) shows the controls and a button.
    asked = st.session_state.pop(common.LAB_TRAIN, False)
    if known:
        lab.key, lab.pos = key, known[-1]  # trained before: show it again instead of retraining
    elif asked or st.button("Train these controls", key="lab_train", type="primary"):
        lab.key = key
        try:
            job = common.start_job(lab_config(controls, int(cfg["seed"])), tag="lab", on_done=partial(lab.add, controls))
        except ValueError as e:
            st.error(str(e))
else:
    st.session_state.pop(common.LAB_TRAIN, None)  # nothing to train: a later visit must not start one
if job is not None and job.tag == "lab":
    common.job_status(job)

if lab.entries:
    nav = st.columns([1, 1, 6])
    if nav[0].button("◀ earlier", key="lab_back", disabled=lab.pos <= 0):
        lab.pos -= 1
    if nav[1].button("later ▶", key="lab_forward", disabled=lab.pos >= len(lab.entries) - 1):
        lab.pos += 1
    shown = lab.entries[lab.pos]
    if tuple(shown["controls"].values()) != lab.key:
        lab.key = tuple(shown["controls"].values())
        common.set_settings(**shown["controls"])
        st.rerun()  # move the controls to the result shown
    nav[2].caption(f"result {lab.pos + 1} of {len(lab.entries)} (the last {KEEP} are kept)")
    try:
        after = load_run(shown["run_id"])
        before = load_run(lab.entries[lab.pos - 1]["run_id"]) if lab.pos > 0 else None
    except (ValueError, FileNotFoundError) as e:  # deleted or broken since it was trained
        st.error(f"Cannot show this result: {e}")
        st.stop()
    left, right = st.columns(2)
    with left:
        if before is not None:
            b = lab.entries[lab.pos - 1]["controls"]
            common.figure(
                plots.per_class_accuracy(before, f"before: {describe(b)} — balanced {before.eval['balanced_accuracy']:.3f}"), "lab_before"
            )
        else:
            st.info("Change a control: the next result appears on the right, this one moves here.")
    with right:
        common.figure(
            plots.per_class_accuracy(after, f"after: {describe(shown['controls'])} — balanced {after.eval['balanced_accuracy']:.3f}"),
            "lab_after",
        )
    if before is not None:
        left, right = st.columns(2)
        with left:
            common.figure(plots.group_accuracy([before.eval, after.eval], ["before", "after"]), "lab_groups")
        with right:
            common.figure(plots.delta(before, after, "before", "after"), "lab_delta")
