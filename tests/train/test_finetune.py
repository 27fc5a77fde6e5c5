"""Fine-tuning (config.finetune) and starting from pretrained weights (config.init), on the synthetic configs."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from medjax.data.stream import TrainStream
from medjax.errors import MedjaxError
from medjax.tasks.base import model_from_config
from medjax.train import finetune as ft
from medjax.train import loop
from medjax.train.optim import make_optimizer
from medjax.train.parallel import replicated_to_host
from medjax.train.state import create_state
from medjax.train.steps import make_train_step
from medjax.transfer.pretrained import read_orbax_variables
from tests.train.helpers import synthetic_config

CLS = "classification"


def flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in flatten_dict(jax.tree.map(np.asarray, dict(tree))).items()}


def run(config, workdir, num_steps):
    """(initial host state, [host state after each step], per-step metrics, the compiled step)."""
    s = loop.setup(config, str(workdir))
    stream = TrainStream(s.splits["train"], config.batch_size, s.strategy.local_rows(config.batch_size), config.seed)
    state = s.initial_state()
    to_host = lambda st: replicated_to_host(s.strategy.to_canonical(st))  # noqa: E731
    initial = to_host(state)
    step = s.strategy.compile_train_step(s.train_step_fn())
    states, history = [], []
    for _ in range(num_steps):
        state, metrics = step(state, s.strategy.put_batch(next(stream), config.batch_size))
        states.append(to_host(state))
        history.append(s.strategy.metrics_to_host(metrics))
    return initial, states, history, step


def _is_head(path):
    return path.startswith("head/")


# ---------------------------------------------------------------- no section: the plain path, bit for bit


def test_without_finetune_numbers_are_bitwise_the_plain_path(repo, tmp_path):
    config = synthetic_config(repo, CLS)
    # The code path as it was before fine-tuning existed: make_optimizer + create_state + the plain step.
    s = loop.setup(config, str(tmp_path / "a"))
    assert s.finetune is None
    tx = make_optimizer(s.config.optimizer, s.config.num_train_steps)
    example = loop._first_train_image(s.splits["train"], s.config)
    create = functools.partial(create_state, lambda k: s.task.init_variables(k, example), tx, s.config.seed)
    state = s.strategy.init_state(create)
    step = s.strategy.compile_train_step(make_train_step(s.task, tx, s.strategy.axis_name, s.augment))
    stream = TrainStream(s.splits["train"], config.batch_size, s.strategy.local_rows(config.batch_size), config.seed)
    plain_metrics = []
    for _ in range(2):
        state, m = step(state, s.strategy.put_batch(next(stream), config.batch_size))
        plain_metrics.append(s.strategy.metrics_to_host(m))
    plain = replicated_to_host(state)

    without = synthetic_config(repo, CLS)
    with without.unlocked():
        del without["finetune"]
        del without["init"]
    for variant in (config, without):  # the inactive default sections, and no sections at all
        _, states, metrics, _ = run(variant, tmp_path / "b", 2)
        jax.tree.map(np.testing.assert_array_equal, states[-1], plain)
        jax.tree.map(np.testing.assert_array_equal, metrics, plain_metrics)


# ---------------------------------------------------------------- frozen groups, per-group learning rates


def test_frozen_params_bitwise_unchanged_others_train(repo, tmp_path):
    config = synthetic_config(repo, CLS, "--config.finetune.freeze=stem_*,stage1_*/*",
                              "--config.optimizer.name=adamw")
    with config.optimizer.unlocked():
        config.optimizer.weight_decay = 0.5  # frozen params must not decay either
    initial, states, _, _ = run(config, tmp_path, 2)
    before, after = flat(initial.params), flat(states[-1].params)
    frozen = [p for p in before if p.startswith(("stem_", "stage1_"))]
    assert frozen and len(frozen) < len(before)
    for p in before:
        if p in frozen:
            np.testing.assert_array_equal(after[p], before[p], err_msg=p)
        else:
            assert not np.array_equal(after[p], before[p]), p


def test_a_pattern_matching_nothing_is_an_error_naming_it(repo, tmp_path):
    for key, value in (("freeze", "stem_*,nothing/*"), ("groups", "stage9_*=0.1")):
        config = synthetic_config(repo, CLS, f"--config.finetune.{key}={value}")
        with pytest.raises(MedjaxError, match=rf"config\.finetune\.{key}: pattern '(nothing/\*|stage9_\*)'"):
            loop.setup(config, str(tmp_path))
    config = synthetic_config(repo, CLS, "--config.finetune.linear_probe_steps=2", "--config.finetune.head=fc/*")
    with pytest.raises(MedjaxError, match="config.finetune.head"):
        loop.setup(config, str(tmp_path))


def _model_params(repo):
    config = synthetic_config(repo, CLS)
    model = model_from_config(config.model, 3, None)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, 16, 16, 1)))["params"]


def _sgd(**kw):
    return ml_collections.ConfigDict(dict(name="sgd", learning_rate=0.1, momentum=0.9, schedule="constant",
                                          warmup_steps=0, **kw))


def _updates(opt_cfg, finetune, params, grads):
    plan = ft.make_plan(finetune, params)
    tx = ft.make_finetune_optimizer(opt_cfg, plan, 10) if plan else make_optimizer(opt_cfg, 10)
    return flat(jax.jit(tx.update)(grads, tx.init(params), params)[0])


def test_group_learning_rate_factors_are_exact(repo):
    shapes = _model_params(repo)
    keys = iter(jax.random.split(jax.random.key(1), 100))
    grads = jax.tree.map(lambda s: jax.random.normal(next(keys), s.shape), shapes)
    params = jax.tree.map(lambda s: jnp.ones(s.shape), shapes)

    def finetune(groups):
        c = ml_collections.ConfigDict(dict(freeze=(), groups=groups, freeze_batch_stats=False,
                                           linear_probe_steps=0, head=("head/*",)))
        return c

    plain = _updates(_sgd(), None, params, grads)
    one = _updates(_sgd(), finetune(("stage1_*=1",)), params, grads)
    two = _updates(_sgd(), finetune(("stage1_*=2",)), params, grads)
    zero = _updates(_sgd(), finetune(("stage1_*=0",)), params, grads)
    group = [p for p in plain if p.startswith("stage1_")]
    assert group
    for p in plain:
        np.testing.assert_array_equal(one[p], plain[p])  # factor 1 = no group, bit for bit
        if p in group:
            np.testing.assert_array_equal(two[p], 2 * one[p])
            np.testing.assert_array_equal(zero[p], 0 * one[p])
            assert np.any(one[p] != 0)
        else:
            np.testing.assert_array_equal(two[p], one[p])
            np.testing.assert_array_equal(zero[p], one[p])
    # a dict works like "pattern=factor" strings; Adam too
    adam = ml_collections.ConfigDict(dict(name="adam", learning_rate=0.1, schedule="constant", warmup_steps=0))
    as_dict = _updates(adam, finetune({"stage1_*": 2.0}), params, grads)
    as_str = _updates(adam, finetune(("stage1_*=2",)), params, grads)
    plain = _updates(adam, None, params, grads)
    for p in plain:
        np.testing.assert_array_equal(as_dict[p], as_str[p])
        np.testing.assert_array_equal(as_str[p], 2 * plain[p] if p in group else plain[p])
    with pytest.raises(MedjaxError, match="matches several patterns"):  # a dict has no order to break ties
        ft.make_plan(finetune({"stage1_*": 2.0, "stage1_block1/*": 3.0}), shapes)
    assert ft.make_plan(finetune(("stage1_*=2", "stage1_block1/*=3")), shapes).labels["stage1_block1/conv1/kernel"] \
        == "group0"  # strings: the first match wins


def test_group_factor_zero_leaves_the_group_unchanged_in_training(repo, tmp_path):
    config = synthetic_config(repo, CLS, "--config.optimizer.name=sgd", "--config.finetune.groups=stage2_*=0,head/*=2")
    initial, states, _, _ = run(config, tmp_path, 2)
    before, after = flat(initial.params), flat(states[-1].params)
    for p in before:
        if p.startswith("stage2_"):
            np.testing.assert_array_equal(after[p], before[p])
        else:
            assert not np.array_equal(after[p], before[p]), p


# ---------------------------------------------------------------- BatchNorm with frozen statistics


class _TrainOutputs(nn.Module):
    """BatchNorm plus an output only training mode has (as deep supervision)."""

    @nn.compact
    def __call__(self, x, train):
        y = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(4)(x))
        return (y, 2 * y) if train else y


def test_frozen_batch_norm_is_eval_mode_batch_norm_with_training_outputs(repo):
    """Inside `frozen_batch_norm`, train=True normalises like train=False, writes no statistics, and keeps what
    else train=True means (here: an extra training output), for a toy module and the synthetic ResNet."""
    config = synthetic_config(repo, CLS)
    resnet = model_from_config(config.model, 3, None)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))

    def prepare(model, x):
        variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), x)
        stats = jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])  # non-trivial running statistics
        return dict(variables, batch_stats=stats)

    def outputs(model, variables, x):
        eval_out = model.apply(variables, x, train=False)
        train_out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        with ft.frozen_batch_norm():
            frozen_out, frozen_stats = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return eval_out, train_out, frozen_out, frozen_stats["batch_stats"]

    toy = _TrainOutputs()
    for model, inputs, extra_output in ((toy, x.reshape(4, -1), True), (resnet, x, False)):
        variables = prepare(model, inputs)
        eval_out, train_out, frozen_out, frozen_stats = jax.jit(functools.partial(outputs, model))(variables, inputs)
        if extra_output:
            assert isinstance(frozen_out, tuple) and len(frozen_out) == 2  # still training mode otherwise
            np.testing.assert_array_equal(frozen_out[1], 2 * frozen_out[0])
            frozen_out, train_out = frozen_out[0], train_out[0]
        np.testing.assert_array_equal(frozen_out, eval_out)
        assert not np.allclose(train_out, eval_out)
        jax.tree.map(np.testing.assert_array_equal, frozen_stats, variables["batch_stats"])


def test_freeze_batch_stats_keeps_statistics_bitwise(repo, tmp_path):
    config = synthetic_config(repo, CLS, "--config.finetune.freeze_batch_stats=True")
    initial, states, _, _ = run(config, tmp_path, 2)
    jax.tree.map(np.testing.assert_array_equal, states[-1].batch_stats, initial.batch_stats)
    assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(states[-1].params),
                                                         jax.tree.leaves(initial.params)))


# ---------------------------------------------------------------- linear probe, then full fine-tuning


def test_linear_probe_trains_the_head_first_and_compiles_once(repo, tmp_path):
    config = synthetic_config(repo, CLS, "--config.finetune.linear_probe_steps=2")
    initial, states, history, step = run(config, tmp_path, 4)
    assert step._cache_size() == 1
    p0 = flat(initial.params)
    backbone = [p for p in p0 if not _is_head(p)]
    for k in (0, 1):  # after steps 1 and 2: the head moved, nothing else did, BN statistics neither
        pk = flat(states[k].params)
        for p in p0:
            if _is_head(p):
                assert not np.array_equal(pk[p], p0[p]), (k, p)
            else:
                np.testing.assert_array_equal(pk[p], p0[p], err_msg=f"step {k + 1}: {p}")
        jax.tree.map(np.testing.assert_array_equal, states[k].batch_stats, initial.batch_stats)
    p2, p3 = flat(states[1].params), flat(states[2].params)
    assert all(not np.array_equal(p3[p], p2[p]) for p in backbone)  # step 3: everything trains
    assert not np.array_equal(flat(states[2].batch_stats)["stem_bn/mean"], flat(initial.batch_stats)["stem_bn/mean"])
    assert all(np.isfinite(h["loss"]) for h in history)


def _final(workdir, config):
    s = loop.setup(config, str(workdir))
    ckpts = s.checkpoints(read_only=True)
    state, _, step, _ = ckpts.restore(s.abstract_state())
    ckpts.close()
    return step, replicated_to_host(state)


def test_resume_across_the_probe_boundary_matches_an_uninterrupted_run(repo, tmp_path):
    args = ["--config.finetune.linear_probe_steps=3", "--config.checkpoint_every=2", "--config.eval_every=2"]
    loop.train(synthetic_config(repo, CLS, "--config.num_train_steps=4", *args), str(tmp_path / "straight"))
    loop.train(synthetic_config(repo, CLS, "--config.num_train_steps=2", *args), str(tmp_path / "resumed"))
    loop.train(synthetic_config(repo, CLS, "--config.num_train_steps=4", *args), str(tmp_path / "resumed"))
    config = synthetic_config(repo, CLS, "--config.num_train_steps=4", *args)
    step_a, a = _final(tmp_path / "straight", config)
    step_b, b = _final(tmp_path / "resumed", config)
    assert step_a == step_b == 4
    jax.tree.map(np.testing.assert_array_equal, a, b)


# ---------------------------------------------------------------- config.init.from


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """A finished 2-step synthetic classification run (best checkpoint at step 2)."""
    from tests.conftest import REPO

    workdir = tmp_path_factory.mktemp("pretrained")
    loop.train(synthetic_config(REPO, CLS, "--config.num_train_steps=2"), str(workdir))
    return workdir


def _best_variables(workdir):
    import os

    best = os.path.join(workdir, "best")
    step = max(int(n) for n in os.listdir(best) if n.isdigit())
    return read_orbax_variables(os.path.join(best, str(step), "state"))


def _initial(config, workdir):
    s = loop.setup(config, str(workdir))
    return replicated_to_host(s.strategy.to_canonical(s.initial_state())), s


def test_init_from_a_workdir_starts_from_its_best_checkpoint(repo, tmp_path, pretrained_run, capsys):
    best = _best_variables(pretrained_run)
    config = synthetic_config(repo, CLS, f"--config.init.from={pretrained_run}")
    state, s = _initial(config, tmp_path)
    jax.tree.map(np.testing.assert_array_equal, state.params, best["params"])
    jax.tree.map(np.testing.assert_array_equal, state.batch_stats, best["batch_stats"])
    fresh = replicated_to_host(s.strategy.init_state(s.create))
    assert int(state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, state.opt_state, fresh.opt_state)  # a fresh optimizer
    assert "medjax: init from" in capsys.readouterr().err


def test_init_from_with_other_classes_skips_the_head(repo, tmp_path, pretrained_run):
    best = flat(_best_variables(pretrained_run)["params"])
    config = synthetic_config(repo, CLS, f"--config.init.from={pretrained_run}", "--config.task.num_classes=4")
    shape_error = r"best/2/state: 'params/head/(bias|kernel)' has shape \((8, )?3,?\) but .* \((8, )?4,?\)"
    with pytest.raises(MedjaxError, match=shape_error):
        _initial(config, tmp_path)
    config = synthetic_config(repo, CLS, f"--config.init.from={pretrained_run}", "--config.task.num_classes=4",
                              "--config.init.skip=head/*")
    state, s = _initial(config, tmp_path)
    fresh = flat(replicated_to_host(s.strategy.init_state(s.create)).params)
    got = flat(state.params)
    for p in got:
        if _is_head(p):
            np.testing.assert_array_equal(got[p], fresh[p])
        else:
            np.testing.assert_array_equal(got[p], best[p])
    assert got["head/kernel"].shape == (8, 4)


def test_init_from_npz_and_strict_errors_name_keys(repo, tmp_path, pretrained_run):
    variables = flat(_best_variables(pretrained_run))
    np.savez(tmp_path / "all.npz", **variables)
    state, _ = _initial(synthetic_config(repo, CLS, f"--config.init.from={tmp_path / 'all.npz'}"), tmp_path / "w")
    jax.tree.map(np.testing.assert_array_equal, flat(state.params),
                 {k[len("params/"):]: v for k, v in variables.items() if k.startswith("params/")})

    partial = {k: v for k, v in variables.items() if k != "params/stage2_block1/conv2/kernel"}
    partial["params/extra/kernel"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "partial.npz", **partial)
    config = synthetic_config(repo, CLS, f"--config.init.from={tmp_path / 'partial.npz'}")
    with pytest.raises(MedjaxError, match=r"partial\.npz.*params/stage2_block1/conv2/kernel.*params/extra/kernel"):
        _initial(config, tmp_path / "w")
    config = synthetic_config(repo, CLS, f"--config.init.from={tmp_path / 'partial.npz'}", "--config.init.strict=False")
    state, s = _initial(config, tmp_path / "w")
    fresh = flat(replicated_to_host(s.strategy.init_state(s.create)).params)
    np.testing.assert_array_equal(flat(state.params)["stage2_block1/conv2/kernel"],
                                  fresh["stage2_block1/conv2/kernel"])
    np.testing.assert_array_equal(flat(state.params)["stem_conv/kernel"], variables["params/stem_conv/kernel"])

    (tmp_path / "empty").mkdir()
    (tmp_path / "model.pt").write_bytes(b"")
    for source, message in ((tmp_path / "nope", "does not exist"), (tmp_path / "empty", "neither a medjax workdir"),
                            (tmp_path / "model.pt", "config.init.layout=torchvision or monai")):
        with pytest.raises(MedjaxError, match=message):
            _initial(synthetic_config(repo, CLS, f"--config.init.from={source}"), tmp_path / "w")
    with pytest.raises(MedjaxError, match="config.init.skip: pattern 'fc/\\*'"):
        _initial(synthetic_config(repo, CLS, f"--config.init.from={pretrained_run}", "--config.init.skip=fc/*"),
                 tmp_path / "w")


def test_a_resumed_run_ignores_init_from(repo, tmp_path, pretrained_run):
    workdir = tmp_path / "run"
    loop.train(synthetic_config(repo, CLS, "--config.num_train_steps=2", f"--config.init.from={pretrained_run}"),
               str(workdir))
    # resuming: init.from is not read (a path that no longer exists is no error)
    config = synthetic_config(repo, CLS, "--config.num_train_steps=4", f"--config.init.from={tmp_path / 'gone'}")
    loop.train(config, str(workdir))
    assert _final(workdir, config)[0] == 4
