import pytest

from medjax.config import apply_override, build_config, load_config, parse_overrides
from medjax.errors import MedjaxError

QUICKSTART = "experiments/quickstart.py"


def test_load_and_variant(repo):
    full = load_config(str(repo / QUICKSTART))
    tiny = load_config(str(repo / QUICKSTART) + ":tiny")
    assert full.num_train_steps == 300 and tiny.num_train_steps == 6
    assert tiny.model.features == (4, 8)


def test_overrides_are_typed(repo):
    c = build_config(str(repo / QUICKSTART), [
        "--config.seed=3", "--config.batch_size", "8", "--config.optimizer.learning_rate=1",
        "--config.parallel.strategy=pmap", "--config.model.features=(8,16)", "--config.progress=false",
        "--config.data.root=/some/dir"])
    assert c.seed == 3 and c.batch_size == 8
    assert c.optimizer.learning_rate == 1.0 and isinstance(c.optimizer.learning_rate, float)
    assert c.parallel.strategy == "pmap" and c.model.features == (8, 16) and c.progress is False
    assert c.data.root == "/some/dir"


@pytest.mark.parametrize("arg, message", [
    ("--config.sede=3", "unknown config key: config.sede"),
    ("--config.optimizer.lr=1", "unknown config key: config.optimizer.lr"),
    ("--config.nothere.x=1", "unknown config key: config.nothere"),
    ("--config.seed=abc", "config.seed"),
    ("--seed=3", "unrecognized argument: --seed=3"),
])
def test_bad_overrides_name_the_key(repo, arg, message):
    with pytest.raises(MedjaxError, match=message.replace(".", r"\.")):
        build_config(str(repo / QUICKSTART), [arg])


def test_missing_file_and_missing_value(tmp_path, repo):
    with pytest.raises(MedjaxError, match="config file not found"):
        load_config(str(tmp_path / "nope.py"))
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(MedjaxError, match="has no get_config"):
        load_config(str(tmp_path / "bad.py"))
    with pytest.raises(MedjaxError, match="missing value"):
        parse_overrides(["--config.seed"])


def test_apply_override_keeps_lock(repo):
    c = load_config(str(repo / QUICKSTART))
    apply_override(c, "num_train_steps", "7")
    assert c.num_train_steps == 7
    with pytest.raises(AttributeError):
        c.brand_new_key = 1  # the config stays locked: typos cannot add keys


def test_comma_separated_names_override_a_tuple_of_names(repo):
    c = build_config(str(repo / QUICKSTART), ["--config.augment.transforms=flip, affine"])
    assert c.augment.transforms == ("flip", "affine")
    c = build_config(str(repo / QUICKSTART), ["--config.augment.transforms=('gamma',)"])
    assert c.augment.transforms == ("gamma",)
    with pytest.raises(MedjaxError, match=r"config\.model\.features"):  # numbers are not split into names
        build_config(str(repo / QUICKSTART), ["--config.model.features=abc"])
