"""The ICBM152 lesion simulator: real anatomy, seeded lesions that differ per split, boxes equal to the lesions'
voxel extents, 3D volumes and 2D slices (8 mm: 32^3, the test size)."""

import numpy as np
import pytest

from medjax.data.icbm152_lesions import load_icbm152_lesions, load_template
from medjax.detection.instances import component_boxes
from medjax.errors import MedjaxError

pytest.importorskip("nilearn")


@pytest.fixture(scope="module")
def volumes():
    return load_icbm152_lesions(spatial_dims=3, voxel_mm=8, num_train=3, num_val=2, num_test=2, max_boxes=6)


def test_template_is_the_zscored_brain_on_a_multiple_of_16():
    template = load_template(None, 8)
    brain = template["brain"]
    assert template["image"].shape == (32, 32, 32) and brain.shape == (32, 32, 32)
    assert abs(float(template["image"][brain].mean())) < 1e-5 and float(template["image"][brain].std()) == \
        pytest.approx(1.0, abs=1e-5)
    assert int(brain.sum()) == 3651  # 8 mm blocks at least half inside nilearn's brain mask (1.87 L of 0.512 mL)
    with pytest.raises(MedjaxError, match="whole number of mm"):
        load_template(None, 2.5)


def test_lesions_are_seeded_per_split_and_case_and_their_boxes_are_exact(volumes):
    again = load_icbm152_lesions(spatial_dims=3, voxel_mm=8, num_train=3, num_val=2, num_test=2, max_boxes=6)
    for split in ("train", "val", "test"):
        for key in volumes[split]:
            np.testing.assert_array_equal(volumes[split][key], again[split][key])
    assert volumes["train"]["image"].shape == (3, 32, 32, 32, 1)
    assert not np.array_equal(volumes["val"]["label"][0], volumes["test"]["label"][0])
    assert not np.array_equal(volumes["train"]["label"][0], volumes["train"]["label"][1])
    for split in volumes.values():
        for label, boxes, classes, valid in zip(split["label"], split["boxes"], split["box_labels"],
                                                split["box_valid"]):
            ref, ref_classes = component_boxes(label)
            np.testing.assert_array_equal(boxes[valid], ref)
            np.testing.assert_array_equal(classes[valid], ref_classes)
    assert [split["box_valid"].sum(axis=1).tolist() for split in volumes.values()] == [[4, 4, 1], [3, 3], [4, 4]]
    image, label = volumes["train"]["image"][..., 0], volumes["train"]["label"]
    contrast = [abs(image[i][label[i] == 1].mean() - image[i][label[i] == 0].mean()) for i in range(3)]
    assert min(contrast) > 0.2  # lesions stand out of the brain (0.5-1.5 std, blurred edges, noise 0.1)


def test_2d_slices_half_through_lesions():
    data = load_icbm152_lesions(spatial_dims=2, voxel_mm=8, num_train=2, num_val=1, num_test=1, slices_per_case=4)
    train = data["train"]
    assert train["image"].shape == (8, 32, 32, 1) and train["boxes"].shape == (8, 16, 4)
    assert train["box_valid"].any(axis=1).sum() >= 4  # 2 of every 4 slices cross a lesion
    for label, boxes, valid in zip(train["label"], train["boxes"], train["box_valid"]):
        np.testing.assert_array_equal(boxes[valid], component_boxes(label)[0])
