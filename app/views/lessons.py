"""Lessons page: guided presets that set the Lab's controls and say what to look for."""

import common
import streamlit as st

from ltlib.families import METHOD_FAMILIES

# Each step sets the Lab controls; steps whose methods are not registered are left out.
LESSONS = [
    (
        "1. The problem",
        "Train plain cross-entropy on balanced digits, then on a 100:1 long tail.",
        [
            dict(loss="ce", sampler="instance", mixing="none", imbalance=1.0),
            dict(loss="ce", sampler="instance", mixing="none", imbalance=100.0),
        ],
        "On the long tail the head classes stay near 100 % while the few-shot classes collapse: the per-class bars "
        "fall from left to right, and the confusion matrix sends tail images to head classes.",
    ),
    (
        "2. Re-weighting vs re-sampling",
        "Keep the 100:1 tail; change how much each class counts — by sampling classes equally, or by weighting the loss.",
        [
            dict(loss="ce", sampler="instance", mixing="none", imbalance=100.0),
            dict(loss="ce", sampler="class_balanced", mixing="none", imbalance=100.0),
            dict(loss="class_balanced", sampler="instance", mixing="none", imbalance=100.0),
        ],
        "Class-balanced sampling lifts the tail but repeats the same few images (watch the head lose a little); "
        "the class-balanced loss (Cui et al. 2019) re-weights the gradients instead. Compare the few-shot bars and the Δ chart.",
    ),
    (
        "3. Logit adjustment",
        "Add the label prior to the logits inside the loss (logit-adjusted loss, Menon et al. 2021; balanced softmax, "
        "Ren et al. 2020), or subtract it after training with the Calibration page's logit-adjustment slider.",
        [
            dict(loss="ce", sampler="instance", mixing="none", imbalance=100.0),
            dict(loss="logit_adjusted", sampler="instance", mixing="none", imbalance=100.0),
            dict(loss="balanced_softmax", sampler="instance", mixing="none", imbalance=100.0),
        ],
        "The decision boundary moves towards the head classes: the tail gains most. On the Margins page, tail margins "
        "grow; on the Calibration page, τ = 1 on the plain CE run gets much of the same gain without retraining.",
    ),
    (
        "4. Calibration and experts",
        "Mixup on the long tail, then a balanced product of experts (BalPoE, Sanchez Aimar et al. 2023) trained "
        "with Mixup; open the Calibration and Per-class pages.",
        [
            dict(loss="ce", sampler="instance", mixing="none", imbalance=100.0),
            dict(loss="ce", sampler="instance", mixing="mixup", imbalance=100.0),
            dict(loss="balpoe", sampler="instance", mixing="mixup", imbalance=100.0),
        ],
        "Long-tailed models are over-confident on the head; mixup softens confidence. Look at the reliability diagram "
        "and the per-class over/under-confidence bars, then try the post-hoc sliders. For BalPoE, the Per-class page "
        "shows each expert (head-, balanced- and tail-leaning) beside their average.",
    ),
]


def available(step: dict) -> bool:
    return all(step[f.name] in f.registry for f in METHOD_FAMILIES if f.name in step)


st.title("Lessons")
st.caption("Each lesson sets the Lab's controls; press a step to train it there, then step back and forth.")
for i, (title, what, steps, look_for) in enumerate(LESSONS):
    steps = [s for s in steps if available(s)]
    with st.container(border=True):
        st.subheader(title)
        st.write(what)
        st.markdown(f"**What to look for:** {look_for}")
        row = st.container(horizontal=True)
        for j, step in enumerate(steps):
            mix = "on" if step["mixing"] != "none" else "off"
            text = f"step {j + 1}: loss {step['loss']} · sampler {step['sampler']} · mixup {mix} · ×{step['imbalance']:g}"
            if row.button(text, key=f"lesson_{i}_{j}"):
                common.set_settings(**step)
                st.session_state[common.LAB_TRAIN] = True
                st.switch_page("views/lab.py")
