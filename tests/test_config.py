import pytest

from medjax.config import apply_override, build_config, load_config, parse_overrides
from medjax.errors import MedjaxError

QUICKSTART = "quickstart"


def test_load_and_variant(repo):
    full = load_config(QUICKSTART)
    tiny = load_config(QUICKSTART + ":tiny")
    assert full.num_train_steps == 300 and tiny.num_train_steps == 6
    assert tiny.model.features == (4, 8)


def test_overrides_are_typed(repo):
    c = build_config(QUICKSTART, [
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
        build_config(QUICKSTART, [arg])


def test_missing_file_and_missing_value(tmp_path, repo):
    with pytest.raises(MedjaxError, match="config file not found"):
        load_config(str(tmp_path / "nope.py"))
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(MedjaxError, match="has no get_config"):
        load_config(str(tmp_path / "bad.py"))
    with pytest.raises(MedjaxError, match="missing value"):
        parse_overrides(["--config.seed"])


def test_apply_override_keeps_lock(repo):
    c = load_config(QUICKSTART)
    apply_override(c, "num_train_steps", "7")
    assert c.num_train_steps == 7
    with pytest.raises(AttributeError):
        c.brand_new_key = 1  # the config stays locked: typos cannot add keys


def test_comma_separated_names_override_a_tuple_of_names(repo):
    c = build_config(QUICKSTART, ["--config.augment.transforms=flip, affine"])
    assert c.augment.transforms == ("flip", "affine")
    c = build_config(QUICKSTART, ["--config.augment.transforms=('gamma',)"])
    assert c.augment.transforms == ("gamma",)
    with pytest.raises(MedjaxError, match=r"config\.model\.features"):  # numbers are not split into names
        build_config(QUICKSTART, ["--config.model.features=abc"])


def test_shipped_configs_load_by_name_from_any_directory(tmp_path, monkeypatch):
    from medjax import configs

    monkeypatch.chdir(tmp_path)  # no repository around: the configs come from the installed package
    assert configs.names() == ["cine_acdc", "cine_synthetic", "detection_icbm152", "dp_icbm152", "gan_augmentation",
                               "gan_icbm152", "gan_synthetic", "image_folder_unet", "medmnist_resnet18", "msd_unet3d",
                               "quickstart", "synthetic", "transfer_icbm152", "trust_icbm152", "wsi_abmil"]
    assert load_config("medmnist_resnet18:3d").batch_size == 32
    with pytest.raises(MedjaxError, match=r"unknown config 'quickstrat': not a \.py file, and the shipped configs "
                                          r"are cine_acdc, .*, quickstart, synthetic, transfer_icbm152, trust_icbm152, "
                                          r"wsi_abmil"):
        load_config("quickstrat")
    with pytest.raises(MedjaxError, match=r"medjax\.configs\.synthetic: unknown variant 'nope'"):
        load_config("synthetic:nope")


def test_a_users_file_extends_a_shipped_config(tmp_path):
    mine = tmp_path / "mine.py"
    mine.write_text("from medjax.configs import image_folder_unet\n\n\n"
                    "def get_config(arg=None):\n"
                    "    c = image_folder_unet.get_config(arg)\n"
                    "    c.batch_size = 3\n"
                    "    return c\n")
    c = build_config(f"{mine}:tiny", ["--config.seed=5"])
    base = load_config("image_folder_unet:tiny")
    assert (c.batch_size, c.seed) == (3, 5) and c.model.to_dict() == base.model.to_dict()


def test_a_network_key_can_be_added_and_the_constructor_checks_it(repo):
    from medjax.tasks import make_task

    c = build_config(QUICKSTART, ["--config.model.dropout_rate=0.1"])
    assert c.model.dropout_rate == 0.1
    assert make_task(c, ["c0", "c1", "c2", "c3"]).model.dropout_rate == 0.1
    with pytest.raises(MedjaxError, match="config.model: .*dropout_rat"):
        make_task(build_config(QUICKSTART, ["--config.model.dropout_rat=0.1"]), ["c0", "c1", "c2", "c3"])
    with pytest.raises(MedjaxError, match=r"unknown config key: config\.model\.norm\.x"):
        build_config(QUICKSTART, ["--config.model.norm.x=1"])
