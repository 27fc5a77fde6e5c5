"""Sliding-window inference: medjax (one jitted XLA program) against MONAI (torch eager), same model and weights.

    python -m medjax.bench.sliding_window [--size 96] [--roi 32] [--repeats 3] [--out result.json]

A small 3D conv net (conv3x3x3 1->8, ReLU, conv3x3x3 8->8, ReLU, conv1x1x1 8->2) is built in both frameworks
from the same numpy weights; a (1, size^3, 1) random volume is predicted with roi^3 windows, overlap 0.25,
Gaussian blending, sw_batch_size 4. The outputs are checked to agree within 1e-4 before anything is timed.
Reported: medjax's compile time (lower + compile), the median wall time of `--repeats` runs of each after one
warm-up run, and the ratio MONAI / medjax (> 1: medjax is faster). To separate the sliding-window machinery from
the convolutions, it also reports each framework's predictor alone on one chunk of windows times the number of
chunks. Run time on a shared 2-core CPU at the
defaults: well under 2 minutes. torch and monai are dev extras; this script is not on medjax's runtime path.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from medjax.inference import sliding_window_inference, window_starts

CHANNELS = (1, 8, 8, 2)
KERNELS = (3, 3, 1)
OVERLAP, MODE, SW_BATCH = 0.25, "gaussian", 4


def make_weights(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer (torch layout OIDHW weight, bias), float32, He-scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    layers = []
    for cin, cout, k in zip(CHANNELS[:-1], CHANNELS[1:], KERNELS):
        w = rng.standard_normal((cout, cin, k, k, k)) * np.sqrt(2.0 / (cin * k**3))
        layers.append((w.astype(np.float32), (0.1 * rng.standard_normal(cout)).astype(np.float32)))
    return layers


def jax_params(layers):
    """OIDHW -> DHWIO, the channels-last kernel layout of `lax.conv_general_dilated`."""
    return [(jnp.asarray(w.transpose(2, 3, 4, 1, 0)), jnp.asarray(b)) for w, b in layers]


def jax_net(params, x):
    """(B, D, H, W, 1) -> (B, D, H, W, 2); explicit symmetric padding k // 2, as torch's `padding=k // 2`.

    The convolutions are medjax's (`medjax.models.ops.conv_general_dilated`, what medjax's models use).
    """
    from medjax.models import ops

    for i, (w, b) in enumerate(params):
        k = w.shape[0]
        x = ops.conv_general_dilated(
            x, w, (1, 1, 1), [(k // 2, k // 2)] * 3, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
        ) + b
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def torch_net(layers):
    import torch

    mods = []
    for i, (w, b) in enumerate(layers):
        conv = torch.nn.Conv3d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(b))
        mods.append(conv)
        if i < len(layers) - 1:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods).eval()


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(size: int, roi: int, repeats: int, seed: int = 0) -> dict:
    import torch
    from monai.inferers import sliding_window_inference as monai_swi

    layers = make_weights(seed)
    volume = np.random.default_rng(seed + 1).standard_normal((1, size, size, size, 1)).astype(np.float32)
    roi_size = (roi, roi, roi)

    params = jax_params(layers)
    x = jnp.asarray(volume)

    def infer(params, x):
        return sliding_window_inference(
            partial(jax_net, params), x, roi_size, overlap=OVERLAP, mode=MODE, sw_batch_size=SW_BATCH
        )

    t0 = time.perf_counter()
    compiled = jax.jit(infer).lower(params, x).compile()
    compile_s = time.perf_counter() - t0

    net = torch_net(layers)
    xt = torch.from_numpy(np.ascontiguousarray(volume.transpose(0, 4, 1, 2, 3)))

    def monai_run():
        with torch.no_grad():
            return monai_swi(xt, roi_size, SW_BATCH, net, overlap=OVERLAP, mode=MODE)

    ours = np.asarray(compiled(params, x))
    ref = monai_run().numpy().transpose(0, 2, 3, 4, 1)
    max_abs_diff = float(np.abs(ours - ref).max())
    if not max_abs_diff <= 1e-4:
        raise SystemExit(f"medjax and MONAI disagree: max |diff| = {max_abs_diff:.3g} > 1e-4")

    medjax_s = _median_time(lambda: compiled(params, x).block_until_ready(), repeats)
    monai_s = _median_time(monai_run, repeats)

    # The predictor alone on one chunk of windows, times the number of chunks: what is not sliding-window overhead.
    num_windows = len(window_starts((size,) * 3, roi_size, OVERLAP)) if size >= roi else 1
    chunks = -(-num_windows // SW_BATCH)
    chunk = np.random.default_rng(seed + 2).standard_normal((SW_BATCH, *roi_size, 1)).astype(np.float32)
    net_jit, chunk_j = jax.jit(jax_net), jnp.asarray(chunk)
    chunk_t = torch.from_numpy(np.ascontiguousarray(chunk.transpose(0, 4, 1, 2, 3)))
    with torch.no_grad():
        torch_chunk_s = _median_time(lambda: net(chunk_t), repeats)
    jax_chunk_s = _median_time(lambda: net_jit(params, chunk_j).block_until_ready(), repeats)
    return {
        "size": size,
        "roi": roi,
        "repeats": repeats,
        "overlap": OVERLAP,
        "mode": MODE,
        "sw_batch_size": SW_BATCH,
        "max_abs_diff": max_abs_diff,
        "medjax_compile_s": compile_s,
        "medjax_run_s": medjax_s,
        "monai_run_s": monai_s,
        "monai_over_medjax": monai_s / medjax_s,
        "num_windows": num_windows,
        "medjax_predictor_only_s": jax_chunk_s * chunks,
        "torch_predictor_only_s": torch_chunk_s * chunks,
        "jax_backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def main(argv: list[str] | None = None) -> dict:
    import medjax

    medjax.configure_cpu()  # XLA:CPU defaults before JAX starts
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=96, help="cube edge of the input volume")
    p.add_argument("--roi", type=int, default=32, help="cube edge of the sliding window")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (after one warm-up)")
    p.add_argument("--out", type=pathlib.Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.size < 1 or args.roi < 1 or args.repeats < 1:
        p.error("--size, --roi and --repeats must be positive")
    result = run(args.size, args.roi, args.repeats)
    print(
        f"size {args.size}^3 roi {args.roi}^3: medjax compile {result['medjax_compile_s']:.2f} s, "
        f"run {result['medjax_run_s']:.3f} s; MONAI run {result['monai_run_s']:.3f} s; "
        f"MONAI/medjax {result['monai_over_medjax']:.2f}x (max |diff| {result['max_abs_diff']:.2g}); "
        f"predictor alone on all {result['num_windows']} windows: jax {result['medjax_predictor_only_s']:.3f} s, "
        f"torch {result['torch_predictor_only_s']:.3f} s"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
