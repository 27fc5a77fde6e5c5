"""Forward + backward time of the primitives `medjax.models.ops` replaces, against XLA's own form and torch.

    python -m medjax.bench.ops [--repeats 7] [--fold-channels N] [--out DIR]

Each row times `jax.grad(sum(f(x)^2))` (median of `--repeats` after a warm-up) for XLA's primitive ("before") and
medjax's formulation ("after"), and the same forward + backward in torch eager on the same shapes, and checks that
before and after agree. Writes DIR/ops.json and DIR/ops.md when --out is given. `medjax.configure_cpu()` first, so the
XLA:CPU
defaults are on for both columns: the difference is the formulation only. `--fold-channels 0` sets
`medjax.models.ops.FOLD_CHANNELS` for the run, e.g. 0 to time the per-tap form of few-channel 3D convolutions.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

SHAPES = {  # name -> description used in the table
    "conv3d": "3D conv 3x3x3, 1x32^3x32 -> 32",
    "conv3d_1ch": "3D conv 3x3x3, 4x32^3x1 -> 8 (a first layer)",
    "conv3d_8ch": "3D conv 3x3x3, 4x32^3x8 -> 8",
    "upconv3d": "2x up-conv, 1x16^3x64 -> 32",
    "maxpool3d": "max-pool 2, 1x32^3x32",
    "conv3d_small": "3D conv 3x3x3, 2x2^3x512 -> 512 (ResNet's last stage)",
}


def _median_ms(fn, warmup: int = 1, repeats: int = 7) -> float:
    """Median wall time of `fn()` in ms, with the bench harness's timer."""
    from medjax.bench.bench import _median_time

    return 1000 * _median_time(fn, warmup, repeats)


def _torch_fwd_bwd(op, *tensors, **kw):
    """A thunk running op(*tensors, **kw), then the backward pass of sum(y^2)."""
    def go():
        y = op(*tensors, **kw)
        (y * y).sum().backward()
    return go


def _cases():
    """name -> (before(args), after(args), args, torch fwd+bwd thunk)."""
    import flax.linen as nn
    import jax.numpy as jnp
    import torch
    from jax import lax

    from medjax.models import ops

    rng = np.random.default_rng(0)
    rand = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    dn = ("NDHWC", "DHWIO", "NDHWC")

    def conv_case(x, w):
        xt = torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy()).requires_grad_()
        wt = torch.from_numpy(w.transpose(4, 3, 0, 1, 2).copy()).requires_grad_()
        return (lambda x, w: lax.conv_general_dilated(x, w, (1, 1, 1), [(1, 1)] * 3, dimension_numbers=dn),
                lambda x, w: ops.conv_general_dilated(x, w, (1, 1, 1), [(1, 1)] * 3, dimension_numbers=dn),
                (jnp.asarray(x), jnp.asarray(w)), _torch_fwd_bwd(torch.nn.functional.conv3d, xt, wt, padding=1))

    conv = conv_case(rand(1, 32, 32, 32, 32), rand(3, 3, 3, 32, 32) * 0.05)
    conv_1ch = conv_case(rand(4, 32, 32, 32, 1), rand(3, 3, 3, 1, 8) * 0.3)
    conv_8ch = conv_case(rand(4, 32, 32, 32, 8), rand(3, 3, 3, 8, 8) * 0.1)

    u, k = rand(1, 16, 16, 16, 64), rand(2, 2, 2, 64, 32) * 0.05
    ref = nn.ConvTranspose(32, (2, 2, 2), strides=(2, 2, 2), padding="VALID", use_bias=False)
    ut = torch.from_numpy(u.transpose(0, 4, 1, 2, 3).copy()).requires_grad_()
    kt = torch.from_numpy(k[::-1, ::-1, ::-1].transpose(3, 4, 0, 1, 2).copy()).requires_grad_()
    up_torch = _torch_fwd_bwd(torch.nn.functional.conv_transpose3d, ut, kt, stride=2)
    upconv = (lambda u, k: ref.apply({"params": {"kernel": k}}, u), lambda u, k: ops.upconv_blocks(u, k),
              (jnp.asarray(u), jnp.asarray(k)), up_torch)

    p = rand(1, 32, 32, 32, 32)
    pt = torch.from_numpy(p.transpose(0, 4, 1, 2, 3).copy()).requires_grad_()
    pool_torch = _torch_fwd_bwd(torch.nn.functional.max_pool3d, pt, 2)
    pool = (lambda p: nn.max_pool(p, (2, 2, 2), strides=(2, 2, 2)), lambda p: ops.pool_blocks(p, (2, 2, 2)),
            (jnp.asarray(p),), pool_torch)
    small = conv_case(rand(2, 2, 2, 2, 512), rand(3, 3, 3, 512, 512) * 0.05)
    return {"conv3d": conv, "conv3d_1ch": conv_1ch, "conv3d_8ch": conv_8ch, "upconv3d": upconv, "maxpool3d": pool,
            "conv3d_small": small}


def run(repeats: int = 7) -> list[dict]:
    import jax
    import jax.numpy as jnp

    rows = []
    for name, (before, after, args, torch_fn) in _cases().items():
        diff = float(jnp.abs(jax.jit(before)(*args) - jax.jit(after)(*args)).max())

        def timed_fwd_bwd(f, args=args):  # jitted once, timed after a warm-up call
            g = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=tuple(range(len(args)))))
            return _median_ms(lambda: jax.block_until_ready(g(*args)), 1, repeats)

        rows.append({"op": name, "shape": SHAPES[name], "max_abs_diff": diff,
                     "before_ms": timed_fwd_bwd(before), "after_ms": timed_fwd_bwd(after),
                     "torch_eager_ms": _median_ms(torch_fn, 1, repeats)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--fold-channels", type=int, default=None,
                   help="override medjax.models.ops.FOLD_CHANNELS (0: every 3D convolution per depth tap)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts
    from medjax.models import ops

    if args.fold_channels is not None:
        ops.FOLD_CHANNELS = args.fold_channels

    rows = run(args.repeats)
    table = ["| op (forward + backward) | XLA's form ms | medjax ms | torch eager ms |", "|---|---|---|---|"]
    table += [f"| {r['shape']} | {r['before_ms']:.1f} | {r['after_ms']:.1f} | {r['torch_eager_ms']:.1f} |"
              for r in rows]
    print("\n".join(table))
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "ops.json").write_text(json.dumps(rows, indent=2) + "\n")
        (out / "ops.md").write_text("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
