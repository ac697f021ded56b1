"""Command line: ``ltlib train``, ``ltlib runs``, ``ltlib show RUN``, ``ltlib compare RUN RUN …``,
``ltlib methods``, ``ltlib app`` (the explorer). Every config field is a flag; ``--preset`` loads a named preset first.
Bad input prints one ``error:`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltlib import __version__

if TYPE_CHECKING:
    from ltlib.config import Config
    from ltlib.train import Event

# The library (and torch) is imported inside main(), so that a Ctrl-C while it loads ends in one line too.

PARAM_FIELDS = ("dataset", "model", "loss", "sampler", "mixing", "schedule")


def _value(text: str) -> Any:
    """Parse a ``key=value`` value: JSON when it parses (numbers, lists, true/false), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    key, _, value = text.partition("=")
    return key.strip(), _value(value)


class _Names(list):
    """A registry's names as argparse choices: shell completion lists them, while the registry's own
    check (with its "unknown loss 'x'; choose one of …" line) stays the one that refuses a name."""

    def __contains__(self, name: object) -> bool:
        return True


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per ``Config`` field, its help from the field's comment, with the default and the choices."""
    from ltlib.config import Config
    from ltlib.families import FAMILIES

    hints = typing.get_type_hints(Config)
    helps = Config.help()
    names = {f.name: f.registry.available() for f in FAMILIES}
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = Config.__dataclass_fields__[f.name].default
        text = helps.get(f.name, "")
        if f.name in names:
            text += f" One of: {', '.join(names[f.name])}."
        if f.name.endswith("_params"):
            base = f.name[: -len("_params")]
            p.add_argument(
                f"--{base}-param",
                dest=f.name,
                type=_key_value,
                action="append",
                metavar="KEY=VALUE",
                help=f"a {base} parameter (repeatable); `ltlib methods` lists each {base}'s parameters and allowed values",
            )
            continue
        shown = json.dumps(default) if default is not MISSING else "[] = 80 % and 90 % of epochs"
        text = f"{text} (default: {shown})".replace("%", "%%")  # argparse formats help with %
        if hint is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typing.get_origin(hint) is list:
            p.add_argument(flag, dest=f.name, type=int, nargs="*", metavar="EPOCH", help=text)
        else:
            options = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
            if options is None:  # optional fields (``float | None``) parse as their non-None type
                hint = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
            kind = hint if hint in (int, float) else str
            metavar = "{" + ",".join(options) + "}" if options else f.name.upper()
            choices = _Names(names[f.name]) if f.name in names else None
            p.add_argument(flag, dest=f.name, type=kind, metavar=metavar, choices=choices, help=text)


def _config_file(path: str) -> dict[str, Any]:
    """A config file's fields: TOML (``.toml``) or YAML (``.yaml``/``.yml``), a table of ``Config`` fields."""
    file = Path(path)
    if file.suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"--config {path}: unknown file type {file.suffix!r}; allowed: .toml, .yaml, .yml")
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {path} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    try:
        if file.suffix == ".toml":
            if sys.version_info < (3, 11):  # tomllib is new in 3.11: the ImportError its import raises, for the type checker
                raise ModuleNotFoundError("No module named 'tomllib'", name="tomllib")
            else:
                import tomllib

                data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)  # plain data only: safe_load never builds Python objects
    except ImportError as e:
        hint = "Python 3.11 or later" if file.suffix == ".toml" else "pip install pyyaml"
        raise ValueError(f"--config {path}: reading it needs the {e.name} module ({hint})") from None
    except Exception as e:  # each parser has its own error types; all mean "not a valid file"
        raise ValueError(f"--config {path} is not valid {file.suffix[1:].upper()}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a table of config fields, not {type(data).__name__}")
    return data


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults ← ``--preset`` or ``--from-run`` ← ``--config FILE`` ← the flags given."""
    from ltlib import presets
    from ltlib.config import Config

    given = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name) is not None}
    for name in [k for k in given if k.endswith("_params")]:
        given[name] = dict(given[name])
    if args.preset and getattr(args, "from_run", None):
        raise ValueError("--preset and --from-run both give a starting config; choose one")
    base: dict[str, Any] = {}
    if args.preset:
        base = presets.preset(args.preset).to_dict()
    elif getattr(args, "from_run", None):
        from ltlib.runs import load_run

        base = dict(load_run(args.from_run, getattr(args, "out", None)).config)
    if getattr(args, "config", None):
        base.update(_config_file(args.config))
    return Config.from_dict({**base, **given})


def _add_start_flags(p: argparse.ArgumentParser) -> None:
    from ltlib import presets

    p.add_argument("--preset", help=f"start from a named preset ({', '.join(presets.available())})")
    p.add_argument("--from-run", metavar="RUN", help="start from a saved run's config (re-run it; flags override)")
    p.add_argument("--config", metavar="FILE", help="config fields from a TOML or YAML file (over the preset; flags override)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--out", help="runs folder (default $LTLIB_HOME)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar; only errors")
    p.add_argument("-v", "--verbose", action="store_true", help="also say how the run is trained (engine, fallbacks)")


def _set_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(format="%(levelname)s: %(message)s", level=level, force=True)
    logging.getLogger("ltlib").setLevel(level)


def _print_config(cfg: Config) -> int:
    cfg.validate()
    print(json.dumps(cfg.to_dict(), indent=1))
    return 0


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells)


class Parser(argparse.ArgumentParser):
    """argparse with the project's error contract: one ``error:`` line and exit status 2 (no usage block)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads={args.threads} is out of range; allowed: an integer >= 1")
        torch.set_num_threads(args.threads)


# Runs saved by this process so far: after an interrupt, the message says what was kept.
SAVED: list[str] = []


def _note_saved(event: Event) -> None:
    if event.kind == "end" and event.data.get("run_id"):
        SAVED.append(event.data["run_id"])


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ltlib.train import train

    cfg = config_from_args(args)
    if args.print_config:
        return _print_config(cfg)
    _set_threads(args)
    _set_logging(args)
    bars: list[tqdm] = []

    def progress(event: Event) -> None:
        _note_saved(event)
        if event.kind == "start":  # only once the config and data have been accepted
            bars.append(tqdm(total=cfg.epochs, unit="epoch", disable=args.quiet, leave=False))
        if event.kind == "epoch":
            bar = bars[0]
            bar.update(1)
            shown = {k: event.data[k] for k in ("loss", "balanced_accuracy") if k in event.data}
            bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()})

    try:
        result = train(cfg, callbacks=[progress], root=args.out)
    finally:
        for bar in bars:
            bar.close()
    e = result.eval
    print(
        f"run {result.run_id}: balanced accuracy {e['balanced_accuracy']:.4f}, accuracy {e['accuracy']:.4f}, "
        f"many {e['many']:.3f} / medium {e['medium']:.3f} / few {e['few']:.3f}, ECE {e['ece']:.4f}  ({result.path})"
    )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ltlib.config import Config
    from ltlib.sweep import grid, train_many

    axes: dict[str, list[Any]] = {}
    for key, value in args.grid or []:
        if key not in {f.name for f in fields(Config)}:
            raise ValueError(f"--grid {key}=… is not a config field; fields: {', '.join(f.name for f in fields(Config))}")
        axes[key] = [_value(v) for v in str(value).split(",")] if isinstance(value, str) else [value]
    configs = grid(config_from_args(args), axes)
    if args.print_config:
        print(json.dumps([c.to_dict() for c in configs], indent=1))
        return 0
    _set_threads(args)
    _set_logging(args)
    started: list[int] = []

    def progress(i: int, e: Event) -> None:
        _note_saved(e)
        if e.kind == "start" and not started:  # every config and its data have been accepted
            started.append(i)
            print(f"training {len(configs)} run(s)", file=sys.stderr)
        if e.kind == "end":
            print(f"  finished {i + 1}/{len(configs)}: {e.data['run_id']}", file=sys.stderr)

    results = train_many(configs, callbacks=[progress], root=args.out, stack=not args.no_stack)
    args.runs = [r.run_id for r in results]
    return cmd_compare(args)


def cmd_runs(args: argparse.Namespace) -> int:
    from ltlib.runs import clean_temporaries, runs_home, scan_runs

    if args.clean:
        removed = clean_temporaries(args.out)
        print(f"removed {removed} abandoned temporar{'y' if removed == 1 else 'ies'} of interrupted saves", file=sys.stderr)
    scan = scan_runs(args.out)
    rows = []
    for r in scan.runs:
        e = r.eval or {}
        rows.append(
            [
                r.id,
                r.status,
                r.config.get("dataset"),
                r.config.get("imbalance"),
                r.config.get("loss"),
                r.config.get("sampler"),
                r.config.get("mixing"),
                e.get("balanced_accuracy", "-"),
                e.get("few", "-"),
            ]
        )
    print(
        _table(rows, ["run", "status", "dataset", "imbalance", "loss", "sampler", "mixing", "balanced_acc", "few"]) if rows else "no runs"
    )
    for bad in scan.corrupt:  # listed, not fatal: one broken folder must not hide the others
        print(f"warning: corrupt run {bad.folder.name}: {bad}", file=sys.stderr)
    if scan.abandoned:
        print(
            f"note: {len(scan.abandoned)} abandoned temporar{'y' if len(scan.abandoned) == 1 else 'ies'} of interrupted saves "
            f"in {runs_home(args.out)}; `ltlib runs --clean` removes them",
            file=sys.stderr,
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ltlib.runs import load_run

    run = load_run(args.run, args.out)
    if run.eval is None:
        print(f"run {run.id}: {run.status}: {run.meta.get('error')}")
        return 1
    e, names = run.eval, run.meta.get("class_names") or [str(i) for i in range(len(run.eval["class_counts"]))]
    rows = [[c, names[c], e["class_counts"][c], e["per_class_accuracy"][c], e["per_class_margin"][c]] for c in range(len(names))]
    print(_table(rows, ["class", "name", "train_count", "accuracy", "mean_margin"]))
    print(
        f"balanced accuracy {e['balanced_accuracy']:.4f}  accuracy {e['accuracy']:.4f}  many {e['many']:.3f}  medium {e['medium']:.3f}  "
        f"few {e['few']:.3f}  (groups by {e['group_rule']})  ECE {e['ece']:.4f}  NLL {e['nll']:.4f}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ltlib.runs import load_run

    runs = [load_run(r, args.out) for r in args.runs]
    keys = ["balanced_accuracy", "accuracy", "many", "medium", "few", "ece", "nll", "brier"]
    rows = [
        [r.id, r.config.get("loss"), r.config.get("sampler"), r.config.get("mixing")] + [(r.eval or {}).get(k, "-") for k in keys]
        for r in runs
    ]
    print(_table(rows, ["run", "loss", "sampler", "mixing"] + keys))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ltlib.export import DEFAULT_DEST, export
    from ltlib.runs import load_run

    runs = [load_run(r, args.out) for r in args.runs]  # every run is read (and checked) before anything is written
    dest = args.dest or DEFAULT_DEST[args.to]
    written = export(runs, args.to, dest)
    skipped = [r.id for r in runs if r.id not in written]
    print(f"exported {len(written)} run(s) to {args.to} at {dest}")
    if skipped:
        print(f"note: skipped {len(skipped)} run(s) already there: {', '.join(skipped)}", file=sys.stderr)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from ltlib import presets
    from ltlib.families import FAMILIES

    for fam in FAMILIES:
        print(f"{fam.name} (--{fam.name}, parameters: --{fam.name}-param KEY=VALUE):")
        for e in fam.registry.entries():
            print(f"  {e.name:20s} {e.summary}  [{e.paper}]")
            for p in e.params.values():
                print(f"      {p.name}={json.dumps(p.default)}  ({p.allowed()})")
            if e.traits:
                print(f"      traits: {', '.join(sorted(e.traits))}")
            if e.eager:
                print(f"      engine: eager ({e.eager})")
    print("presets: " + ", ".join(presets.available()))
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    try:
        import shtab
    except ImportError:
        raise ValueError("shell completion needs the shtab package: pip install shtab") from None
    # A static script: pressing TAB runs the shell's completion, not Python (no torch import per key).
    print(shtab.complete(parser(), shell=args.shell))
    return 0


# Every launch of the app (`ltlib app`, and `./lab.sh app` through it): this machine only, tracebacks in the
# console rather than the browser, and no usage statistics sent: the settings `.streamlit/config.toml` gives
# a server started in the repo, for one started anywhere. The user's own arguments come after, so they win.
APP_FLAGS = ("--server.address", "127.0.0.1", "--client.showErrorDetails", "none", "--browser.gatherUsageStats", "false")


def app_script() -> Path:
    """The app's entry script: ``ltlib/app/Home.py`` in an installed wheel, ``app/Home.py`` beside ``ltlib/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for script in (here / "app" / "Home.py", here.parent / "app" / "Home.py"):
        if script.is_file():
            return script
    raise FileNotFoundError(f"the app's files are missing: no app/Home.py in {here} or {here.parent}")


def cmd_app(args: argparse.Namespace) -> int:
    import importlib.util
    import os

    if importlib.util.find_spec("streamlit") is None:
        raise ValueError("the app needs Streamlit: pip install 'ltlib[app]'")
    command = [sys.executable, "-m", "streamlit", "run", str(app_script()), *APP_FLAGS, *args.streamlit_args]
    os.execv(sys.executable, command)  # the server takes this process's place: signals and exit status are its own


def parser() -> argparse.ArgumentParser:
    from ltlib.export import DEFAULT_DEST, TARGETS

    p = Parser(prog="ltlib", description="Long-Tail Lab: long-tailed image classification")
    p.add_argument("--version", action="version", version=f"ltlib {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one run and save it")
    _add_start_flags(t)
    t.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); fix it for byte-identical results across machines")
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)
    w = sub.add_parser("sweep", help="train a grid of configs together (concurrently on a GPU) and compare them")
    _add_start_flags(w)
    w.add_argument("--grid", type=_key_value, action="append", metavar="FIELD=V1,V2", help="values of a config field (repeatable)")
    w.add_argument("--no-stack", action="store_true", help="on a GPU, train each run on its own stream instead of in model-stacks")
    w.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    _add_config_flags(w)
    w.set_defaults(func=cmd_sweep)
    r = sub.add_parser("runs", help="list saved runs (and corrupt ones)")
    r.add_argument("--out")
    r.add_argument("--clean", action="store_true", help="first remove temporaries left by interrupted saves")
    r.set_defaults(func=cmd_runs)
    s = sub.add_parser("show", help="per-class table of one run")
    s.add_argument("run")
    s.add_argument("--out")
    s.set_defaults(func=cmd_show)
    c = sub.add_parser("compare", help="metrics of several runs side by side")
    c.add_argument("runs", nargs="+")
    c.add_argument("--out")
    c.set_defaults(func=cmd_compare)
    x = sub.add_parser("export", help="write runs' metrics and configs to TensorBoard, MLflow or CSV")
    x.add_argument("runs", nargs="+", metavar="RUN")
    x.add_argument("--to", required=True, choices=TARGETS)
    x.add_argument(
        "--dest", help="where: " + ", ".join(f"{t}: default ./{d}" for t, d in DEFAULT_DEST.items()) + " (mlflow: or a tracking URI)"
    )
    x.add_argument("--out", help="runs folder (default $LTLIB_HOME)")
    x.set_defaults(func=cmd_export)
    k = sub.add_parser("completion", help='print a shell completion script (bash, zsh or tcsh): eval "$(ltlib completion bash)"')
    k.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    k.set_defaults(func=cmd_completion)
    m = sub.add_parser("methods", help="list every registered dataset, model and method")
    m.set_defaults(func=cmd_methods)
    # "+" as the only option prefix: every argument, --server.port 8502 or --help too, goes on to `streamlit run`.
    a = sub.add_parser("app", help="start the explorer app on this machine (further arguments go to `streamlit run`)", prefix_chars="+")
    a.add_argument("streamlit_args", nargs=argparse.REMAINDER)
    a.set_defaults(func=cmd_app)
    return p


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run as Ctrl-C does: through the same clean-up


def main(argv: list[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    SAVED.clear()
    try:
        return _run(argv)
    except KeyboardInterrupt:  # also while the library loads
        return _interrupted()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted() -> int:
    kept = f"finished runs kept: {', '.join(SAVED)}" if SAVED else "nothing was saved"
    print(f"error: interrupted; {kept}", file=sys.stderr)
    return 130


def _import_library() -> None:
    """Import torch and the library with Ctrl-C held back: torch's import calls Python from C++, where a
    KeyboardInterrupt aborts the process ("terminate called …"); a held signal arrives right after."""
    held = {signal.SIGINT, signal.SIGTERM}
    block = getattr(signal, "pthread_sigmask", None)  # POSIX only
    if block is not None:
        block(signal.SIG_BLOCK, held)
    try:
        import ltlib.train  # noqa: F401
    finally:
        if block is not None:
            block(signal.SIG_UNBLOCK, held)


def _run(argv: list[str] | None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:  # answered without importing torch
        print(f"ltlib {__version__}")
        return 0
    _import_library()
    from ltlib.train import Cancelled, TrainingDiverged

    try:
        args = parser().parse_args(argv)
        return args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Cancelled:
        return _interrupted()
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            print("error: out of memory; try a smaller --batch-size or --device cpu", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
