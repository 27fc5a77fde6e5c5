"""`medjax bench`: the smoke mode end to end through the CLI (one case per kind, tiny shapes), and its user errors.

No timing assertions: only that every framework produced a record, the loss/output agreement checks ran and
passed, the ratios are there, and the three output files are well formed.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")

from medjax import cli  # noqa: E402

FRAMEWORKS = {"medjax", "torch_eager", "torch_compile"}


def test_bench_smoke(repo, tmp_path):
    out = tmp_path / "bench"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    proc = subprocess.run([sys.executable, "-m", "medjax.cli", "bench", "--smoke", "--out", str(out)], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stderr[-3000:]

    result = json.loads((out / "bench.json").read_text())
    assert result["mode"] == "smoke"
    assert {"platform", "cpu_count", "jax", "torch", "jax_devices"} <= set(result["machine"])
    records = result["records"]
    kinds = {r["kind"] for r in records}
    assert kinds == {"classification", "segmentation", "sliding_window", "gan", "convlstm"}
    for case in result["cases"]:
        by_fw = {r["framework"]: r for r in records if r["case"] == case}
        assert set(by_fw) == FRAMEWORKS, case
        mj = by_fw["medjax"]
        for fw, r in by_fw.items():
            assert r["status"] == "ok", (case, fw, r["reason"])
            assert r["infer_examples_per_s"] > 0 and r["compile_s"] > 0
            assert len(r["input_shape_nc"]) == 2 + (3 if "_3d" in case or r["kind"] in ("sliding_window", "convlstm")
                                                    else 2)  # a ConvLSTM's is (N, T, C, H, W)
            if r["kind"] != "sliding_window":
                assert r["train_examples_per_s"] > 0
            if fw != "medjax":
                check = r["loss_check"] if r["kind"] != "sliding_window" else r["output_check"]
                assert check["passed"] and check["against"] == "medjax", (case, fw, check)
        if mj["kind"] != "sliding_window":
            assert mj["loss_check"]["passed"]
            assert all(mj["ratios"][f"train_medjax_over_{o}"] > 0 for o in ("torch_eager", "torch_compile"))
        assert all(mj["ratios"][f"infer_medjax_over_{o}"] > 0 for o in ("torch_eager", "torch_compile"))

    md = (out / "bench.md").read_text()
    assert "| case |" in md and "medjax/torch_eager" in md and "FAILED" not in md
    for case in result["cases"]:
        assert case in md
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_bench_unknown_case_exits_2(tmp_path, capsys):
    assert cli.main(["bench", "--cases", "nosuch", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and err.startswith("medjax: error:")
    assert not (tmp_path / "b").exists()


def test_bench_quick_and_smoke_exclusive(tmp_path, capsys):
    assert cli.main(["bench", "--quick", "--smoke", "--out", str(tmp_path / "b")]) == 2
    assert "exclusive" in capsys.readouterr().err


def test_bench_smoke_bfloat16_compares_mixed_precision_policies(repo, tmp_path):
    """medjax's bfloat16 policy against torch.autocast(bfloat16): same weights, losses within the bf16 tolerance."""
    out = tmp_path / "bench"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-m", "medjax.cli", "bench", "--smoke", "--cases", "resnet18_2d_28",
                           "--precision", "bfloat16", "--out", str(out)], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    assert result["precision"] == "bfloat16"
    assert "--xla_cpu_experimental_xnn_fusion_type=individual_convolution" in result["machine"]["xla_flags"]
    records = {r["framework"]: r for r in result["records"]}
    assert {r["precision"] for r in records.values()} == {"bfloat16"}
    check = records["torch_eager"]["loss_check"]
    assert check["passed"] and check["rtol"] == 3e-2 and check["rel_diff"] > 0


def test_convlstm_row_matches_torch_with_two_layers_and_records_frames():
    from experiments.benchmarks import bench
    from experiments.benchmarks.convlstm_bench import run_convlstm_case

    case = bench.CASES["convlstm_64"]
    records = run_convlstm_case(case, bench.Shape(2, 8, (4, 2), frames=3), 0, 1, ("medjax", "torch_eager"),
                                log=lambda _: None)
    mj, eager = records
    assert eager["loss_check"]["passed"] and eager["loss_check"]["rel_diff"] < 1e-5
    assert mj["input_shape_medjax"] == [2, 3, 8, 8, 1] and mj["frames"] == 3 and mj["features"] == [4, 2]
