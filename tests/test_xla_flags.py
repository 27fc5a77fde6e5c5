"""medjax's XLA:CPU defaults: merged into XLA_FLAGS by `medjax.configure_cpu()` and the CLI (never by the import),
the user's settings win, opt-out, too-late warning, and the flags change no numbers."""

import json
import os
import subprocess
import sys

import pytest

from medjax import xla_flags

XNN = "xla_cpu_experimental_xnn_fusion_type"
YNN = "xla_cpu_experimental_ynn_fusion_type"


def test_merged_flags_adds_every_default_to_empty_flags():
    assert xla_flags.merged_flags("") == f"--{XNN}=individual_convolution --{YNN}=individual_dot"


def test_merged_flags_keeps_the_users_flags_and_values():
    current = f"--xla_force_host_platform_device_count=4 --{XNN}=  "
    merged = xla_flags.merged_flags(current)
    assert merged == f"--xla_force_host_platform_device_count=4 --{XNN}= --{YNN}=individual_dot"


def test_apply_sets_the_environment(monkeypatch):
    monkeypatch.setattr(xla_flags, "_backends_started", lambda: False)
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert xla_flags.apply_cpu_defaults(env) == env["XLA_FLAGS"]
    assert env["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", f"--{XNN}=individual_convolution",
                                        f"--{YNN}=individual_dot"]


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_opt_out_leaves_the_environment_alone(monkeypatch, value):
    monkeypatch.setattr(xla_flags, "_backends_started", lambda: False)
    env = {xla_flags.OPT_OUT_VAR: value}
    assert xla_flags.apply_cpu_defaults(env) is None
    assert "XLA_FLAGS" not in env


def test_too_late_warns_and_changes_nothing(monkeypatch):
    monkeypatch.setattr(xla_flags, "_backends_started", lambda: True)
    env = {}
    with pytest.warns(UserWarning, match=r"call it before any JAX computation"):
        assert xla_flags.apply_cpu_defaults(env) is None
    assert env == {}


def _python(code: str, **env_changes) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.OPT_OUT_VAR)}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=True)


def test_importing_medjax_changes_nothing_in_a_fresh_process():
    code = "import os, medjax, medjax.train.loop, medjax.cli; print(repr(os.environ.get('XLA_FLAGS')))"
    assert _python(code).stdout.strip() == "None"


def test_configure_cpu_sets_the_flags_in_a_fresh_process():
    show = "import os, medjax; medjax.configure_cpu(); print(os.environ['XLA_FLAGS'])"
    assert _python(show).stdout.split() == [f"--{XNN}=individual_convolution", f"--{YNN}=individual_dot"]
    kept = _python(show, XLA_FLAGS=f"--{YNN}=").stdout.split()
    assert kept == [f"--{YNN}=", f"--{XNN}=individual_convolution"]


def test_the_cli_configures_cpu_before_it_runs(monkeypatch):
    from medjax import cli

    seen = []
    monkeypatch.setattr(xla_flags, "apply_cpu_defaults", lambda environ=None: seen.append("configured"))
    monkeypatch.setattr(cli, "run", lambda argv: seen.append(argv) or 0)
    assert cli.main(["train"]) == 0
    assert seen == ["configured", ["train"]]


def test_configure_cpu_after_jax_ran_warns():
    r = _python("import jax.numpy as jnp; jnp.ones(2).block_until_ready(); import medjax; medjax.configure_cpu()")
    assert "medjax.configure_cpu() was called after JAX started its backends" in r.stderr


_CONV_GRADS = """
import json, numpy as np, medjax, jax, jax.numpy as jnp
medjax.configure_cpu()
from jax import lax
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((2, 12, 12, 8)).astype(np.float32))
w = jnp.asarray(rng.standard_normal((3, 3, 8, 16)).astype(np.float32))
f = lambda x, w: jnp.sum(jnp.sin(lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2,
                                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))))
m = jnp.asarray(rng.standard_normal((64, 48)).astype(np.float32))
gx, gw = jax.jit(jax.grad(f, (0, 1)))(x, w)
print(json.dumps({"gx": np.asarray(gx).tolist(), "gw": np.asarray(gw).tolist(),
                  "mm": np.asarray(jax.jit(lambda a: a @ a.T)(m)).tolist()}))
"""


def test_the_defaults_change_no_numbers_beyond_float_rounding():
    """XNNPACK convolutions and YNNPACK matmuls against XLA's own kernels on a conv's gradients and a matmul."""
    import numpy as np

    fast = json.loads(_python(_CONV_GRADS).stdout)
    plain = json.loads(_python(_CONV_GRADS, **{xla_flags.OPT_OUT_VAR: "0"}).stdout)
    for key in ("gx", "gw", "mm"):
        a, b = np.asarray(fast[key]), np.asarray(plain[key])
        np.testing.assert_allclose(a, b, atol=2e-6 * np.abs(b).max(), rtol=0)
