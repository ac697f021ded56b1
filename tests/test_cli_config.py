"""Configs from files and saved runs, the flags' help, shell completion and the log line of the engine."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from ltlib.cli import main, parser
from ltlib.config import Config
from ltlib.families import FAMILIES
from ltlib.runs import list_runs, load_run


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code
    out = capsys.readouterr()
    return status, out.out, out.err


def test_every_config_flag_has_help_with_its_default_and_choices():
    actions = {a.dest: a for a in parser()._subparsers._group_actions[0].choices["train"]._actions}
    helps = Config.help()
    for f in fields(Config):
        if f.name.endswith("_params"):
            continue
        assert f.name in helps, f"Config.{f.name} has no comment to serve as its help"
        shown = actions[f.name].help.replace("%%", "%")  # argparse's escaping
        assert helps[f.name] in shown and "(default: " in shown, f.name
    for fam in FAMILIES:
        assert all(name in actions[fam.name].help for name in fam.registry.available()), fam.name


@pytest.mark.parametrize(
    "name, text",
    [
        ("c.toml", 'loss = "focal"\nepochs = 3\n[loss_params]\ngamma = 1.5\n'),
        ("c.yaml", "loss: focal\nepochs: 3\nloss_params:\n  gamma: 1.5\n"),
    ],
)
def test_a_config_file_sits_between_the_preset_and_the_flags(name, text, tmp_path, capsys):
    path = tmp_path / name
    path.write_text(text)
    status, out, _ = run(["train", "--preset", "digits-quick", "--config", str(path), "--seed", "4", "--print-config"], capsys)
    assert status == 0
    cfg = Config.from_dict(json.loads(out))
    assert (cfg.loss, cfg.loss_params, cfg.epochs, cfg.seed, cfg.model) == ("focal", {"gamma": 1.5}, 3, 4, "mlp")


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("c.json", "{}", "unknown file type '.json'; allowed: .toml, .yaml, .yml"),
        ("c.toml", "epochs = [\n", "is not valid TOML"),
        ("c.yaml", "- 1\n- 2\n", "must hold a table of config fields, not list"),
        ("c.yaml", "x: !!python/object/apply:os.system ['touch PWNED']\n", "is not valid YAML"),
        ("c.toml", "lossy = 1\n", "unknown config field(s) lossy"),
        ("c.toml", "epochs = 0\n", "epochs=0 is out of range"),
    ],
)
def test_a_bad_config_file_is_one_line(name, text, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text)
    status, _, err = run(["train", "--preset", "digits-quick", "--config", name, "--out", str(tmp_path / "store")], capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "store").exists()


def test_from_run_reruns_a_saved_run_exactly_and_flags_override(capsys):
    assert run(["train", "--preset", "digits-quick", "--epochs", "3", "--loss", "focal", "-q"], capsys)[0] == 0
    (first,) = list_runs()
    assert run(["train", "--from-run", first.id, "-q"], capsys)[0] == 0
    again = next(r for r in list_runs() if r.id != first.id)
    assert again.config == first.config and again.eval == first.eval
    status, out, _ = run(["train", "--from-run", first.id, "--seed", "9", "--print-config"], capsys)
    assert status == 0 and json.loads(out) == {**first.config, "seed": 9}
    status, _, err = run(["train", "--from-run", first.id, "--preset", "digits-quick"], capsys)
    assert status == 2 and "choose one" in err
    assert load_run(first.id).config == first.config  # untouched


def test_bash_completion_is_static_and_knows_the_registries(capsys):
    status, out, _ = run(["completion", "bash"], capsys)
    assert status == 0 and "complete" in out
    assert "python" not in out and "$(ltlib" not in out  # TAB never starts Python
    for fam in FAMILIES:
        assert fam.registry.available()[-1] in out, fam.name
    status, _, err = run(["completion", "fish"], capsys)
    assert status == 2 and "invalid choice: 'fish'" in err


def test_the_engine_is_logged_when_asked_and_quiet_means_errors_only(capsys):
    _, _, err = run(["train", "--preset", "digits-quick", "--epochs", "1", "-v"], capsys)
    assert "INFO: eager engine on cpu" in err
    _, _, err = run(["train", "--preset", "digits-quick", "--epochs", "1", "-q"], capsys)
    assert err == ""
