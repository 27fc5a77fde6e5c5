"""`config.compute`: how a training step computes, separate from what it computes.

precision         "float32" (default) | "bfloat16": mixed precision. The model's convolutions, matmuls and
                  activations run in bfloat16 (its `dtype`); parameters, optimizer state, BatchNorm statistics,
                  logits and the loss stay float32 (flax's `param_dtype`, the models' float32 logits and the
                  tasks' float32 losses). Worth it on GPUs and TPUs; on XLA:CPU it gives no speed-up (README,
                  "Mixed precision on CPU").
remat             recompute each block's activations in the backward pass instead of keeping them (`nn.remat`
                  inside the models that have a `remat` field): less activation memory, a slower step, the same
                  numbers.
grad_accum_steps  N > 1 splits every step's batch into N micro-batches (example i goes to micro-batch i mod N, so
                  each micro-batch keeps an equal share of every device's rows), runs them one after another in a
                  `lax.scan` and averages their gradients before one optimizer update: the batch of N steps in the
                  memory of one. BatchNorm sees micro-batch statistics (as a torch accumulation loop does);
                  without BatchNorm the update equals the full batch's up to float rounding (tested).
"""

from __future__ import annotations

import ml_collections

from medjax.errors import MedjaxError

PRECISIONS = ("float32", "bfloat16")


def of(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.compute` at the schema's defaults for the keys it leaves out (`medjax.schema.COMPUTE`)."""
    from medjax import schema

    return schema.filled("compute", config.get("compute"))


def check(compute: ml_collections.ConfigDict, batch_size: int | None = None, num_devices: int = 1) -> None:
    """Clear errors for values the trainer cannot use, naming the key. Every device's rows must split evenly
    into the micro-batches, so each micro-batch keeps every device busy."""
    if compute.precision not in PRECISIONS:
        raise MedjaxError(f"config.compute.precision={compute.precision!r}; known: {list(PRECISIONS)}")
    n = compute.grad_accum_steps
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise MedjaxError(f"config.compute.grad_accum_steps must be an integer >= 1, got {n!r}")
    if batch_size is not None and batch_size % (n * num_devices):
        raise MedjaxError(f"config.batch_size={batch_size} must be divisible by config.compute.grad_accum_steps "
                          f"({n}) times the number of devices ({num_devices})")


def model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.model` with `config.compute`'s precision and remat applied (a copy; the config is not changed)."""
    model = ml_collections.ConfigDict(config.model.to_dict())
    compute = of(config)
    check(compute)
    if compute.precision != "float32":
        own = model.get("dtype")
        if own not in (None, "float32", compute.precision):
            raise MedjaxError(f"config.model.dtype={own!r} contradicts config.compute.precision="
                              f"{compute.precision!r}; set one of them")
        model.dtype = compute.precision
    if compute.remat:
        model.remat = True
    return model
