"""Every test process sees 4 fake CPU devices, so data parallelism is exercised without accelerators."""

import os
import tempfile

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA cache for the session: the CLI tests' subprocesses reuse what earlier runs compiled.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "medjax-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pathlib  # noqa: E402

import pytest  # noqa: E402

import medjax  # noqa: E402

medjax.configure_cpu()  # before any JAX computation, as the CLI does: medjax's XLA:CPU defaults in XLA_FLAGS

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def repo() -> pathlib.Path:
    return REPO
