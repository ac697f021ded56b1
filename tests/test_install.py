"""ltlib as an installed tool: the wheel in a fresh virtual environment, run from an empty folder elsewhere.

The new environment borrows the test environment's third-party packages through a ``.pth`` line (nothing is
downloaded), while ltlib itself comes only from the wheel: the checkout is on no path. Every file the
commands write goes under the test's temporary folder (HOME, the caches and the run store point there).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import venv
import zipfile
from pathlib import Path

import pytest

import ltlib
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "app"))
from testing import free_port, listening, serving  # noqa: E402

pytestmark = pytest.mark.slow


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def _installed_app(bin_dir: Path, checks: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the installed app's script under AppTest in the new environment, then the Python lines ``checks`` (``at`` is the AppTest)."""
    script = (
        "from streamlit import config\n"
        "from streamlit.testing.v1 import AppTest\n"
        "from ltlib.cli import app_script\n"
        "config.set_option('server.address', '127.0.0.1')  # no config file here: the address `ltlib app` passes\n"
        "at = AppTest.from_file(str(app_script()), default_timeout=60).run()\n"
    )
    return _run([str(bin_dir / "python"), "-c", script + checks], cwd=cwd, env=env)


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    """(the wheel, the environment's bin folder, an empty working folder, the environment variables for the commands)."""
    tmp = tmp_path_factory.mktemp("install")
    # Build from a copy: setuptools writes build/ and *.egg-info beside the sources.
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("ltlib", "app"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env |= {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config")}
    env |= {"XDG_DATA_HOME": str(home / ".local"), "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
    env |= {"LTLIB_HOME": str(tmp / "runs"), "LTLIB_CACHE": str(tmp / "cache"), "LTLIB_UMAP_WARM_UP": "0"}
    pip = [sys.executable, "-m", "pip", "--no-cache-dir", "--disable-pip-version-check"]
    built = _run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist")], env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp / "dist").glob("ltlib-*.whl")

    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    # Installed before the .pth line exists, so that pip sees no other ltlib (the test environment has an editable one).
    installed = _run([*pip, "--python", str(python), "install", "--no-index", "--no-deps", str(wheel)], env=env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env=env).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_path("purelib") + "\n")

    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    empty = tmp / "elsewhere"
    empty.mkdir()
    return wheel, env_dir / "bin", empty, env


def test_wheel_ships_the_license_the_type_marker_and_the_app(tool):
    wheel = tool[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    app = {f"ltlib/app/{p.relative_to(ROOT / 'app').as_posix()}" for p in (ROOT / "app").rglob("*.py")}
    assert {"ltlib/py.typed", "ltlib/__main__.py", "ltlib/app/Home.py", "ltlib/app/views/train.py"} | app <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    meta = zipfile.ZipFile(wheel).read(f"ltlib-{ltlib.__version__}.dist-info/METADATA").decode()
    assert f"Version: {ltlib.__version__}\n" in meta and "License-Expression: MIT\n" in meta
    # POT is for the tests only: not pulled in by a plain install.
    assert [line for line in meta.splitlines() if line.lower().startswith("requires-dist: pot")] == [
        'Requires-Dist: pot>=0.9; extra == "dev"'
    ]


def test_version_and_methods_from_the_installed_package(tool):
    _, bin_dir, empty, env = tool
    version = _run(["ltlib", "--version"], cwd=empty, env=env)
    assert (version.returncode, version.stdout) == (0, f"ltlib {ltlib.__version__}\n"), version.stderr
    where = _run([str(bin_dir / "python"), "-c", "import ltlib; print(ltlib.__file__)"], cwd=empty, env=env)
    assert Path(where.stdout.strip()).is_relative_to(bin_dir.parent), where.stdout + where.stderr
    methods = _run([str(bin_dir / "python"), "-m", "ltlib", "methods"], cwd=empty, env=env)
    assert methods.returncode == 0, methods.stderr
    assert "  autobalance " in methods.stdout and "  rescom " in methods.stdout and "presets: " in methods.stdout


def test_train_from_an_empty_folder_saves_into_ltlib_home(tool):
    _, _, empty, env = tool
    done = _run(["ltlib", "train", "--preset", "digits-quick", "--epochs", "2"], cwd=empty, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("run ") and "balanced accuracy" in done.stdout
    assert len(list(Path(env["LTLIB_HOME"]).iterdir())) == 1 and not any(empty.iterdir())


def test_app_serves_on_loopback_only(tool):
    _, _, empty, env = tool
    port = free_port()
    with serving(["ltlib", "app", "--server.port", str(port), "--server.headless", "true"], port, empty, env) as url:
        assert urllib.request.urlopen(f"{url}/", timeout=10).status == 200
        assert listening(port) == {"127.0.0.1"}


def test_installed_app_pages_import_and_render(tool):
    """The served page above is only Streamlit's shell: run the installed app's script itself (its imports, the Train page)."""
    _, bin_dir, empty, env = tool
    script = (
        "assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]\nprint(app_script(), at.title[0].value)\n"
    )
    done = _installed_app(bin_dir, script, empty, env)
    assert done.returncode == 0, done.stdout + done.stderr
    script_path, _, title = done.stdout.strip().partition(" ")
    assert Path(script_path).is_relative_to(bin_dir.parent) and title == "Train"


def test_a_notebooks_runs_are_in_the_apps_store(tool):
    """Notebook kernels run in notebooks/, the app elsewhere: with no LTLIB_HOME both use the platform's store."""
    _, bin_dir, empty, env = tool
    env = {k: v for k, v in env.items() if k != "LTLIB_HOME"}
    kernel_dir = empty.parent / "notebooks"
    kernel_dir.mkdir(exist_ok=True)
    trained = _run(
        [
            str(bin_dir / "python"),
            "-c",
            "from ltlib.presets import preset\nfrom ltlib.train import train\nprint(train(preset('digits-quick', epochs=1)).run_id)",
        ],
        cwd=kernel_dir,
        env=env,
    )
    assert trained.returncode == 0, trained.stderr
    run_id = trained.stdout.strip().splitlines()[-1]
    script = (
        "at.switch_page('views/per_class.py').run()\n"
        "assert not at.exception, [e.value for e in at.exception]\n"
        "print(at.selectbox(key='w_run').value)\n"
    )
    shown = _installed_app(bin_dir, script, empty, env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert shown.stdout.strip().splitlines()[-1] == run_id
    assert not any(kernel_dir.iterdir()) and not any(empty.iterdir())  # nothing written where the kernel or the app ran
