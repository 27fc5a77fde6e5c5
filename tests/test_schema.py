"""The config schema: one default per key, every key settable from the command line, unknown keys named."""

import importlib
import inspect
import pathlib

import ml_collections
import pytest

from medjax import cli, configs, schema
from medjax.config import apply_override, build_config, load_config
from medjax.data import augment, sources
from medjax.errors import MedjaxError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _shipped_specs():
    for name in configs.names():
        module = importlib.import_module(f"medjax.configs.{name}")
        yield name
        yield from (f"{name}:{v}" for v in getattr(module, "VARIANTS", ()))


def _minimal(**extra):
    c = dict(batch_size=4, num_train_steps=2, task=dict(name="segmentation"),
             data=dict(name="synthetic_segmentation", num_train=4, num_eval=2, size=(16, 16), num_classes=2),
             model=dict(name="unet", features=(4, 8)), optimizer=dict(name="adam", learning_rate=1e-3))
    c.update(extra)
    return ml_collections.ConfigDict(c)


def test_complete_fills_every_section_at_its_one_default():
    c = schema.complete(_minimal())
    assert c.optimizer.to_dict() == {"name": "adam", "learning_rate": 1e-3, "schedule": "constant",
                                     "warmup_steps": 0, "decay_at": (0.5, 0.75), "decay_factor": 0.1,
                                     "weight_decay": 1e-4, "b1": 0.9, "b2": 0.999, "momentum": 0.9,
                                     "nesterov": False, "grad_clip_norm": 0.0}
    assert c.task.to_dict() == {"name": "segmentation", "num_classes": 0, "loss": "dice_ce",
                                "include_background": True, "dice_batch": False, "dice_average": "voxels",
                                "per_frame": False, "ef_class": None, "ef_exponent": 1.0, "surface_metrics": True,
                                "nsd_tolerance_mm": 1.0}
    assert c.checkpoint.to_dict() == {"max_to_keep": 2, "best_metric": "", "best_mode": "max"}
    assert c.compute.to_dict() == {"precision": "float32", "remat": False, "grad_accum_steps": 1}
    assert c.inference.roi_size == () and c.init["from"] == "" and c.finetune.linear_probe_steps == 0
    assert c.augment.transforms == () and c.augment.affine.p == 0.2  # augment's own table
    assert (c.seed, c.eval_batch_size, c.progress, c.resume_mismatch_ok) == (0, 0, True, False)
    assert c.data.fg_ratio == 0.33 and c.data.seed == 0  # common + the source's own keys
    assert c.model.to_dict() == {"name": "unet", "features": (4, 8)}  # the constructor's defaults stay its own
    assert schema.complete(c).to_dict() == c.to_dict()  # idempotent


@pytest.mark.parametrize("where, build, message", [
    ("top level", lambda: _minimal(lerning_rate=1.0), "unknown config key config.lerning_rate"),
    ("section", lambda: _minimal(optimizer=dict(name="adam", learning_rate=1e-3, weight_decy=0.1)),
     "unknown config key config.optimizer.weight_decy; valid: name, learning_rate"),
    ("task by name", lambda: _minimal(task=dict(name="segmentation", multi_label=True)),
     "unknown config key config.task.multi_label"),
    ("data by source", lambda: _minimal(data=dict(name="synthetic_segmentation", num_train=4, num_eval=2,
                                                  size=(16, 16), num_classes=2, val_fraction=0.1)),
     "unknown config key config.data.val_fraction"),
    ("required", lambda: _minimal(optimizer=dict(name="adam")),
     r"config.optimizer.learning_rate must be set \(peak learning rate\)"),
    ("required top level", lambda: ml_collections.ConfigDict({k: v for k, v in _minimal().items()
                                                               if k != "batch_size"}),
     "config.batch_size must be set"),
    ("unknown source", lambda: _minimal(data=dict(name="nope")), "unknown dataset config.data.name='nope'"),
    ("unknown task", lambda: _minimal(task=dict(name="nope")), "unknown config.task.name='nope'"),
    ("missing model", lambda: ml_collections.ConfigDict({k: v for k, v in _minimal().items() if k != "model"}),
     "config.model must be set"),
])
def test_unknown_and_missing_keys_are_named(where, build, message):
    with pytest.raises(MedjaxError, match=message):
        schema.complete(build())


def _leaves(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("spec", list(_shipped_specs()))
def test_every_key_of_a_shipped_config_can_be_set_from_the_command_line(spec):
    config = load_config(spec)
    before = config.to_dict()
    leaves = dict(_leaves(config))
    section = "optimizer" if "optimizer" in config else "g_optimizer"
    assert set(schema.OPTIMIZER) | set(schema.CHECKPOINT) <= {k.split(".")[-1] for k in leaves
                                                              if k.startswith((section, "checkpoint"))}
    for key, value in leaves.items():
        apply_override(config, key, repr(value))  # each value round-trips through the command-line parser
    assert config.to_dict() == before


def test_a_key_a_config_file_leaves_out_is_overridable():
    """The issue's case: medmnist sets no optimizer.b2 / data.num_threads / compute, all settable."""
    c = build_config("medmnist_resnet18", ["--config.optimizer.b2=0.99", "--config.data.num_threads=8",
                                           "--config.compute.remat=True", "--config.inference.overlap=0.25"])
    assert (c.optimizer.b2, c.data.num_threads, c.compute.remat, c.inference.overlap) == (0.99, 8, True, 0.25)


def test_data_schema_covers_every_source_and_its_readers_keys():
    assert set(schema.DATA) - {"medmnist"} == set(sources.SOURCES)
    for name in schema.DATA:
        overlap = set(schema.DATA[name]) & set(schema.DATA_COMMON)
        assert overlap <= {"patch_size"}, (name, overlap)  # icbm152_patches' own patch_size (the crop size)


def test_a_sources_own_common_key_is_not_read_as_the_common_one():
    """icbm152_patches' patch_size is its crop size, not the common random-patch training size."""
    assert schema.data_common({"name": "icbm152_patches", "patch_size": 16}).patch_size == ()
    assert schema.data_common({"name": "msd", "patch_size": (8, 8, 8)}).patch_size == (8, 8, 8)


def test_loader_signature_defaults_agree_with_the_schema():
    """Where a source passes keys through to a loader, the loader's own default is the schema's."""
    from medjax.data.cine import beating_heart
    from medjax.data.cine_io import load_cine_folder
    from medjax.data.icbm152_lesions import load_icbm152_lesions
    from medjax.data.icbm152_patches import load_icbm152_patches

    for func, spec, keys in ((beating_heart, schema.DATA["synthetic_cine"],
                              ("num_frames", "size", "spatial_dims", "ef_range", "noise", "speckle")),
                             (load_cine_folder, schema.DATA["cine_folder"],
                              ("layout", "images_dir", "labels_dir", "targets_csv", "frames_csv", "normalize",
                               "in_plane_mm", "grid", "num_slices", "num_frames", "ef_class")),
                             (load_icbm152_patches, schema.DATA["icbm152_patches"],
                              ("patch_size", "train_per_class", "val_per_class", "test_per_class", "seed",
                               "in_plane_mm", "site_shift", "site_b_classes")),
                             (load_icbm152_lesions, {**schema.DATA_COMMON, **schema.DATA["icbm152_lesions"]},
                              ("spatial_dims", "voxel_mm", "num_train", "num_val", "num_test", "lesions_per_case",
                               "radius_mm", "contrast", "noise", "seed", "slices_per_case", "max_boxes"))):
        params = inspect.signature(func).parameters
        assert {k: params[k].default for k in keys} == {k: spec[k].default for k in keys}, func.__name__


def test_augment_section_is_the_augmentation_table():
    c = schema.complete(_minimal(augment=dict(transforms=("flip",), flip=dict(p=1.0))))
    assert c.augment.flip.to_dict() == {**augment.DEFAULTS["flip"], "p": 1.0}
    assert set(c.augment) == {"transforms", *augment.DEFAULTS}


def test_docs_page_is_generated_from_the_schema():
    assert (ROOT / "docs" / "config.md").read_text() == schema.markdown() + "\n", \
        "regenerate: python -c \"from medjax import schema; open('docs/config.md','w').write(schema.markdown()+'\\n')\""


def test_keys_command_lists_defaults_and_a_configs_values(capsys):
    assert cli.main(["keys", "optimizer"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["optimizer.name", "(required)"]
    assert len(out) == len(schema.OPTIMIZER)
    assert cli.main(["keys", "--config", "quickstart:tiny", "data", "--config.data.in_plane_mm=3.0"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert rows["data.in_plane_mm"] == "3.0" and rows["data.max_slices_per_split"] == "8"
    assert cli.main(["keys", "nope"]) == 2
    assert "unknown config section 'nope'" in capsys.readouterr().err


def test_a_source_key_named_like_a_common_key_is_not_the_common_key():
    """icbm152_patches' patch_size is the patches' side: the training stream must not crop to it."""
    data = schema.filled("data", {"name": "icbm152_patches", "patch_size": 8})
    assert data.patch_size == 8
    assert schema.data_common(data).patch_size == ()
    assert sources.train_transform(data) is None
    assert sources.train_input_shape(data, (8, 8, 1)) == (8, 8, 1)
    crop = schema.filled("data", {"name": "npz", "root": "x", "patch_size": (4, 4)})
    assert sources.train_input_shape(crop, (8, 8, 1)) == (4, 4, 1)
