import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ltlib.presets import preset
from ltlib.runs import abandoned_temporaries, clean_temporaries, list_runs, load_run, save_run
from ltlib.train import train


def test_run_folder_has_plain_files_and_reloads():
    result = train(preset("digits-quick", epochs=3))
    names = sorted(p.name for p in result.path.iterdir())
    assert names == ["arrays.safetensors", "config.json", "eval.json", "meta.json", "metrics.jsonl", "model.safetensors"]
    e = json.loads((result.path / "eval.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "per_class_accuracy", "class_counts", "many", "medium", "few", "ece", "nll"):
        assert key in e
    run = load_run(result.run_id)
    assert run.config["epochs"] == 3 and run.status == "finished" and len(run.history) == 3
    assert run.arrays["test_logits"].shape == (500, 10) and run.arrays["features"].shape[0] == 500
    assert set(run.state_dict()) == set(result.model.state_dict())
    # The saved logits reproduce the saved metrics.
    assert np.mean(run.arrays["test_logits"].argmax(1) == run.arrays["test_labels"]) == pytest.approx(run.eval["accuracy"])


def test_run_ids_are_path_safe():
    with pytest.raises(ValueError, match="not allowed"):
        save_run("../escape", {}, {}, [])
    with pytest.raises(ValueError, match="not a valid run id"):
        load_run("../etc")
    with pytest.raises(FileNotFoundError, match="no run 'missing'"):
        load_run("missing")


def test_killed_mid_save_leaves_no_partial_folder(tmp_path, isolated_home):
    """A process killed while writing a large run leaves only a hidden temp folder, never a run."""
    script = textwrap.dedent(
        f"""
        import os, numpy as np, sys
        os.environ["LTLIB_HOME"] = {str(isolated_home)!r}
        from ltlib.runs import save_run
        big = {{f"a{{i}}": np.zeros((2000, 2000), np.float32) for i in range(40)}}
        print("ready", flush=True)
        save_run("run-1", {{"x": 1}}, {{"status": "finished"}}, [], {{"accuracy": 1.0}}, big)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    import time

    deadline = time.time() + 20
    while time.time() < deadline and not (isolated_home.exists() and any(p.name.startswith(".tmp-") for p in isolated_home.iterdir())):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (isolated_home / "run-1").exists()
    assert list_runs() == []
    # The temporary names its writer, which is gone: it is abandoned, and cleaning removes it.
    (tmp,) = abandoned_temporaries()
    assert tmp.name.startswith(f".tmp-{proc.pid}.") and clean_temporaries() == 1 and list(isolated_home.iterdir()) == []
