"""The explain rows of `medjax bench` at their protocol shape (the smoke run in tests/test_bench.py runs them)."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")


def test_explain_rows_use_the_medmnist_3d_protocol_and_monai_defaults():
    from medjax.bench import bench
    from medjax.explain.occlusion import num_windows

    for name, method in (("explain_ig_r18_3d", "ig"), ("explain_occlusion_r18_3d", "occlusion")):
        row = bench.CASES[name]
        assert (row.kind, row.explain, row.torch_model) == ("explain", method, "monai_resnet")
        for mode in ("full", "quick"):
            config = bench.case_config(row, mode, "float32")
            assert (config.model.name, config.model.stem) == ("resnet18", "small")
            # 4 examples per timed call; the model sees the protocol's batch of 32 inputs (steps / occluded copies)
            assert bench.case_data(row, config, mode)["image"].shape == (4, 28, 28, 28, 1)
            assert config.explain.batch_size == 32 and config.explain.baseline == 0.0
    ig = bench.case_config(bench.CASES["explain_ig_r18_3d"], "full", "float32").explain
    assert (ig.ig_steps, ig.ig_method) == (50, "gausslegendre")
    occ = bench.case_config(bench.CASES["explain_occlusion_r18_3d"], "full", "float32").explain
    # MONAI's OcclusionSensitivity defaults: mask_size 16, overlap 0.6 -> a window every int(16 * 0.4) = 6 voxels
    assert (occ.occlusion_window, occ.occlusion_stride) == (16, 6)
    assert num_windows((28, 28, 28), 16, 6) == 3 ** 3
    smoke = bench.case_config(bench.CASES["explain_ig_r18_3d"], "smoke", "float32")
    assert smoke.model.to_dict() == {"name": "resnet", "stage_sizes": (1, 1, 1, 1), "block": "basic",
                                     "stem": "small", "width": 4}
    net = bench._monai_model(bench.CASES["explain_ig_r18_3d"], smoke)
    assert [m.out_channels for m in (net.layer1[0].conv1, net.layer4[0].conv1)] == [4, 32]
