"""The built wheel is a package a researcher installs: in a fresh venv outside the repository, `medjax --version`,
`python -m medjax` and `medjax train --config quickstart:tiny` (a config shipped inside the wheel) work, and the
wheel carries the configs, the bench harness and py.typed."""

import os
import pathlib
import site
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from medjax import __version__

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    repo = pathlib.Path(__file__).resolve().parents[1]
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp / "dist"), str(repo)], check=True, capture_output=True, timeout=600,
                   cwd=tmp)
    (wheel,) = (tmp / "dist").glob("medjax-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    # The fresh venv sees this environment's third-party packages (jax, flax, ...; no network in tests) through a
    # plain path entry, which does not run this environment's .pth files, so the editable medjax stays out of it.
    purelib = pathlib.Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return wheel, venv, tmp


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return dict(env, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")


def test_the_wheel_carries_configs_bench_and_types(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"medjax/configs/quickstart.py", "medjax/configs/__init__.py", "medjax/bench/bench.py",
            "medjax/bench/gpu.sh", "medjax/py.typed", "medjax/__main__.py", "medjax/privacy/annex_e.csv"} <= names
    assert not any(n.startswith(("experiments/", "tests/")) for n in names)


def test_installed_medjax_trains_a_shipped_config_outside_the_repo(installed):
    _, venv, tmp = installed
    run = tmp / "run"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import medjax; print(medjax.__file__)"],
                           cwd=tmp, env=_env(), capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(venv))  # the wheel's copy, not the checkout
    version = subprocess.run([str(venv / "bin" / "medjax"), "--version"], cwd=tmp, env=_env(), capture_output=True,
                             text=True, timeout=120)
    assert version.stdout.strip() == f"medjax {__version__}", version.stderr
    r = subprocess.run([str(venv / "bin" / "medjax"), "train", "--config", "quickstart:tiny", "--workdir", str(run)],
                       cwd=tmp, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "config.json").is_file() and (run / "checkpoints").is_dir()
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "medjax", "evaluate", "--config", "quickstart:tiny",
                        "--workdir", str(run)], cwd=tmp, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "eval.json").is_file()
