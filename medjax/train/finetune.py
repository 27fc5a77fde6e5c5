"""Fine-tuning: frozen parameter groups, per-group learning rates, frozen BatchNorm statistics, linear probing.

`config.finetune` (keys and defaults in `medjax.schema.FINETUNE`; with the defaults, or without the section, the
trainer builds exactly the optimizer and step it always did, so numbers are bit-for-bit those of a plain run):

    freeze              fnmatch patterns on '/'-joined parameter paths without the "params/" prefix (as
                        `jax.tree_util` spells the params tree: "stem_conv/kernel", "stage1_block1/bn1/scale");
                        "stem_*" or "stage1_*/*" freeze whole modules. Frozen parameters get zero updates
                        (`optax.set_to_zero`): no gradient step, no weight decay, no optimizer state. A
                        "params/"-prefixed pattern works too. A pattern that matches no parameter is an error.
    groups              learning-rate multipliers: "pattern=factor" strings, e.g. ("stem_*=0.1", "stage*=0.5"),
                        or a dict {pattern: factor}. A parameter not frozen takes the factor of the FIRST group
                        whose pattern matches (a dict's patterns must not overlap: ConfigDicts sort their keys);
                        its learning rate is `schedule(step) * factor` (the configured schedule, warm-up included,
                        scaled). Factor 0 trains nothing; each pattern must match something.
    freeze_batch_stats  BatchNorm normalises with its running statistics inside the train step (eval-mode BN)
                        and never updates them; the rest of the model stays in training mode.
    linear_probe_steps  N > 0: steps 0..N-1 train only the `head` parameters, with BatchNorm statistics frozen;
                        from step N on, everything trains with the settings above (frozen patterns stay frozen).
    head                patterns naming the head for the linear probe (default "head/*" (ResNet), "final_conv/*"
                        (U-Nets), "classifier/*"); together they must match something.

Mechanics:

* One `optax.multi_transform` over labels computed from the parameter paths: "frozen" (set_to_zero),
  "default" (the configured optimizer) and "group<i>" (the same optimizer at lr x factor). Each trainable label
  has its own optimizer state for its own parameters, so a frozen backbone costs no Adam moments. With only
  `freeze_batch_stats` set, the plain optimizer is kept (same optimizer state as a plain run).
* Linear probe: backbone parameters get labels "<label>@probe" whose transform is `gated(inner, N)`: an
  optimizer whose updates are zero and whose inner state stays untouched while its own step count is < N, then
  the inner optimizer from step N on (Adam's bias correction starts fresh when the backbone starts training). The
  inner schedule is shifted by N, so the backbone's learning rate at global step s is `schedule(s) * factor`, the
  same curve as everything else. The gate is a `lax.cond` on a counter in the optimizer state: the optimizer state
  is one pytree, a checkpoint taken anywhere (before, at or after the boundary) resumes exactly, and the step
  compiles once.
* Gradients of parameters that are frozen at a step are zeroed before anything sees them (first element of the
  chain, so global-norm clipping measures trainable gradients only; the `grad_norm` metric too).
* Frozen BatchNorm: models take one `train` flag that drives both BatchNorm and training-only outputs (deep
  supervision; dropout follows the dropout rng instead, `medjax.models.layers.Dropout`). Calling the model with
  `train=False` would freeze BatchNorm but drop deep-supervision outputs, so instead the train step keeps
  `train=True` and intercepts every `nn.BatchNorm` call (`flax.linen.intercept_methods`) to run it with
  `use_running_average=True`: eval-mode normalisation, no statistics written, no model code changed. During a
  linear probe the choice between the two forward passes is a `lax.cond` on the step (both traced once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from medjax import schema
from medjax.errors import MedjaxError
from medjax.train.optim import make_base_optimizer, make_schedule

FROZEN = "frozen"
DEFAULT = "default"
PROBE_SUFFIX = "@probe"


def param_path(path: Sequence[Any]) -> str:
    """'/'-joined names of a `jax.tree_util` key path ("stage1_block1/conv1/kernel")."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def matches(path: str, pattern: str, collection: str = "params") -> bool:
    """fnmatch on the path without its collection, or with it ("head/*" and "params/head/*" both work)."""
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(f"{collection}/{path}", pattern)


def parse_groups(groups: Any) -> list[tuple[str, float]]:
    """[(pattern, factor)] from "pattern=factor" strings or a {pattern: factor} mapping, in order."""
    if not groups:
        return []
    if isinstance(groups, (Mapping, ml_collections.ConfigDict)):
        items = list(groups.items())
    elif isinstance(groups, str):
        items = [groups]
    else:
        items = list(groups)
    out = []
    for item in items:
        if isinstance(item, str):
            pattern, sep, factor = item.rpartition("=")
            if not sep or not pattern:
                raise MedjaxError(f"config.finetune.groups: {item!r} is not 'pattern=factor' (e.g. 'stem_*=0.1')")
        else:
            pattern, factor = item
        try:
            value = float(factor)
        except (TypeError, ValueError):
            raise MedjaxError(f"config.finetune.groups: factor {factor!r} of {pattern!r} is not a number") from None
        if not value >= 0.0:
            raise MedjaxError(f"config.finetune.groups: factor of {pattern!r} must be >= 0, got {value}")
        out.append((pattern.strip(), value))
    return out


def is_active(cfg: ml_collections.ConfigDict | None) -> bool:
    """Whether `config.finetune` asks for anything beyond plain training."""
    cfg = schema.filled("finetune", cfg)
    return bool(cfg.freeze or cfg.groups or cfg.freeze_batch_stats or cfg.linear_probe_steps)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `config.finetune` means for one parameter tree: a label per parameter path, a learning-rate factor
    per label, the probe length and whether BatchNorm statistics are frozen."""

    labels: Mapping[str, str]  # parameter path -> label
    factors: Mapping[str, float]  # label (without PROBE_SUFFIX) -> learning-rate factor
    probe_steps: int = 0
    freeze_batch_stats: bool = False

    def label_tree(self, tree: Any) -> Any:
        """The labels as a tree shaped like `tree` (params or updates), for `optax.multi_transform`."""
        return jax.tree_util.tree_map_with_path(lambda p, _: self.labels[param_path(p)], tree)

    def trainable(self, grads: Any, step: jax.Array) -> Any:
        """`grads` with the entries of parameters frozen at `step` set to zero (frozen ones always; the backbone
        before the probe ends)."""

        def leaf(path, g):
            label = self.labels[param_path(path)]
            if label == FROZEN:
                return jnp.zeros_like(g)
            if label.endswith(PROBE_SUFFIX):
                return jnp.where(step >= self.probe_steps, g, jnp.zeros_like(g))
            return g

        return jax.tree_util.tree_map_with_path(leaf, grads)

    def batch_norm_frozen(self, step: jax.Array) -> bool | jax.Array:
        """True, False, or (during a linear probe) a traced `step < probe_steps`."""
        if self.freeze_batch_stats:
            return True
        if self.probe_steps > 0:
            return step < self.probe_steps
        return False

    def wrap_loss(self, loss_fn: Callable, batch_stats: Any, step: jax.Array) -> Callable:
        """`loss_fn(params) -> (loss, (new batch_stats, metrics))` with BatchNorm frozen when the plan says so;
        frozen, the batch_stats it returns are `batch_stats` itself (bitwise unchanged)."""
        frozen = self.batch_norm_frozen(step)
        if frozen is False:
            return loss_fn

        def frozen_loss(params):
            with frozen_batch_norm():
                loss, (_, metrics) = loss_fn(params)
            return loss, (batch_stats, metrics)

        if frozen is True:
            return frozen_loss
        return lambda params: jax.lax.cond(frozen, frozen_loss, loss_fn, params)

    @property
    def splits_optimizer(self) -> bool:
        """Whether any parameter is frozen, in a group or gated; if not (only `freeze_batch_stats`), the plain
        optimizer is used, so toggling BatchNorm freezing keeps checkpoints compatible."""
        return any(label != DEFAULT for label in self.labels.values())

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for label in self.labels.values():
            counts[label] = counts.get(label, 0) + 1
        return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def make_plan(cfg: ml_collections.ConfigDict | None, params: Any) -> Plan | None:
    """The plan for `params` (arrays or ShapeDtypeStructs), or None when `cfg` asks for nothing. A freeze, group
    or head pattern that matches no parameter is an error naming it (and showing what paths look like)."""
    if not is_active(cfg):
        return None
    cfg = schema.filled("finetune", cfg)
    paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if not paths:
        raise MedjaxError("config.finetune: the model has no parameters")
    example = ", ".join(paths[:4])

    def check(what: str, pattern: str) -> None:
        if not any(matches(p, pattern) for p in paths):
            raise MedjaxError(f"config.finetune.{what}: pattern {pattern!r} matches no parameter of this model "
                              f"(paths look like {example}, ...)")

    freeze = tuple(cfg.freeze or ())
    if isinstance(freeze, str):
        freeze = (freeze,)
    for pattern in freeze:
        check("freeze", pattern)
    raw_groups = cfg.groups
    groups = parse_groups(raw_groups)
    for pattern, _ in groups:
        check("groups", pattern)
    if isinstance(raw_groups, (Mapping, ml_collections.ConfigDict)):  # no order to break ties (ConfigDict sorts)
        for p in paths:
            hits = [g for g, _ in groups if matches(p, g)]
            if len(hits) > 1:
                raise MedjaxError(f"config.finetune.groups: {p!r} matches several patterns {hits}; a dict has no "
                                  f"order, so use 'pattern=factor' strings (the first match wins) or disjoint ones")
    probe_steps = int(cfg.linear_probe_steps or 0)
    if probe_steps < 0:
        raise MedjaxError(f"config.finetune.linear_probe_steps must be >= 0, got {probe_steps}")
    head = tuple(cfg.head or ())
    if isinstance(head, str):
        head = (head,)
    if probe_steps and not any(matches(p, h) for p in paths for h in head):
        raise MedjaxError(f"config.finetune.head: no parameter matches {list(head)}, so a linear probe would train "
                          f"nothing (paths look like {example}, ...)")

    labels: dict[str, str] = {}
    factors = {DEFAULT: 1.0}
    for i, (_, factor) in enumerate(groups):
        factors[f"group{i}"] = factor
    for p in paths:
        if any(matches(p, f) for f in freeze):
            labels[p] = FROZEN
            continue
        label = next((f"group{i}" for i, (g, _) in enumerate(groups) if matches(p, g)), DEFAULT)
        if probe_steps and not any(matches(p, h) for h in head):
            label += PROBE_SUFFIX
        labels[p] = label
    return Plan(labels, factors, probe_steps, bool(cfg.freeze_batch_stats))


class GatedState(NamedTuple):
    count: jax.Array  # updates seen (int32), the global step when the state was created with the run
    inner: Any


def gated(inner: optax.GradientTransformation, start: int) -> optax.GradientTransformation:
    """`inner` from its `start`-th update on; before that, zero updates and `inner`'s state left as initialised."""

    def init(params):
        return GatedState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        def closed(_):
            return jax.tree.map(jnp.zeros_like, updates), state.inner

        def open_(_):
            return inner.update(updates, state.inner, params)

        new_updates, inner_state = jax.lax.cond(state.count >= start, open_, closed, None)
        return new_updates, GatedState(optax.safe_increment(state.count), inner_state)

    return optax.GradientTransformation(init, update)


class MaskState(NamedTuple):
    count: jax.Array


def mask_frozen(plan: Plan) -> optax.GradientTransformation:
    """Zero the gradients of parameters frozen at this update (see `Plan.trainable`)."""

    def init(params):
        return MaskState(jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        return plan.trainable(updates, state.count), MaskState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def make_finetune_optimizer(cfg: ml_collections.ConfigDict, plan: Plan, num_train_steps: int
                            ) -> optax.GradientTransformation:
    """`config.optimizer` split by the plan's labels (see the module docstring): mask -> clip -> multi_transform."""
    cfg = schema.filled("optimizer", cfg)
    schedule = make_schedule(cfg, num_train_steps)
    transforms: dict[str, optax.GradientTransformation] = {}
    for label in sorted(set(plan.labels.values())):
        if label == FROZEN:
            transforms[label] = optax.set_to_zero()
            continue
        base = label[: -len(PROBE_SUFFIX)] if label.endswith(PROBE_SUFFIX) else label
        factor = plan.factors[base]
        scaled = schedule if factor == 1.0 else (lambda count, f=factor: schedule(count) * f)
        if label.endswith(PROBE_SUFFIX):
            shifted = lambda count, s=scaled: s(count + plan.probe_steps)  # noqa: E731
            transforms[label] = gated(make_base_optimizer(cfg, shifted), plan.probe_steps)
        else:
            transforms[label] = make_base_optimizer(cfg, scaled)
    parts = [mask_frozen(plan)]
    if cfg.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    parts.append(optax.multi_transform(transforms, plan.label_tree))
    return optax.chain(*parts)


def _force_running_average(next_fun, args, kwargs, context):
    module = context.module
    if not (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"):
        return next_fun(*args, **kwargs)
    if len(args) > 1 or "use_running_average" in kwargs:  # passed at call time: the attribute is None
        args = args[:1]
        kwargs = dict(kwargs, use_running_average=True)
        return next_fun(*args, **kwargs)
    saved = module.use_running_average
    object.__setattr__(module, "use_running_average", True)  # modules are frozen dataclasses; restored below
    try:
        return next_fun(*args, **kwargs)
    finally:
        object.__setattr__(module, "use_running_average", saved)


@contextlib.contextmanager
def frozen_batch_norm():
    """While tracing inside this context, every `nn.BatchNorm` normalises with its running statistics and writes
    none, whatever the model's `train` flag says (everything else about `train=True` is unchanged)."""
    with nn.intercept_methods(_force_running_average):
        yield
