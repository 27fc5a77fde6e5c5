"""`medjax bench`: the smoke mode end to end through the CLI (every row with a smoke variant, tiny shapes), the
rows' protocol shapes, `--protocol` at a tiny size, and the user errors.

No timing assertions: only that every framework produced a record, the loss/output agreement checks ran and
passed, the ratios are there, and the output files are well formed.
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


def test_bench_smoke(tmp_path):
    """In this process (a subprocess would add seconds of imports): the test session's 4 CPU devices."""
    out = tmp_path / "bench"
    assert cli.main(["bench", "--smoke", "--out", str(out)]) == 0

    result = json.loads((out / "bench.json").read_text())
    assert result["mode"] == "smoke"
    assert {"platform", "cpu_count", "jax", "torch", "jax_devices"} <= set(result["machine"])
    records = result["records"]
    kinds = {r["kind"] for r in records}
    assert kinds == {"classification", "segmentation", "sliding_window", "gan", "detection", "explain", "dp_sgd"}
    from medjax.bench import bench

    assert result["cases"] == [c.name for c in bench.CASES.values() if c.smoke is not None]
    for case in result["cases"]:
        by_fw = {r["framework"]: r for r in records if r["case"] == case}
        assert set(by_fw) == FRAMEWORKS, case
        mj = by_fw["medjax"]
        spec = bench.CASES[case]
        for fw, r in by_fw.items():
            assert r["status"] == "ok", (case, fw, r["reason"])
            assert r["infer_examples_per_s"] > 0 and r["compile_s"] > 0
            assert r["config"] == spec.config and r["mode"] == "smoke"
            assert len(r["input_shape_nc"]) == 2 + len(spec.shape("smoke")) + (1 if spec.frames else 0)
            inference_only = r["kind"] in ("sliding_window", "explain")
            if not inference_only:
                assert r["train_examples_per_s"] > 0
            if fw != "medjax":
                check = r["output_check"] if inference_only else r["loss_check"]
                assert check["passed"] and check["against"] == "medjax", (case, fw, check)
        if mj["kind"] not in ("sliding_window", "explain"):
            assert mj["loss_check"]["passed"]
            assert all(mj["ratios"][f"train_medjax_over_{o}"] > 0 for o in ("torch_eager", "torch_compile"))
        assert all(mj["ratios"][f"infer_medjax_over_{o}"] > 0 for o in ("torch_eager", "torch_compile"))
        if mj["kind"] == "dp_sgd":  # each framework's DP step against its own non-private step
            assert all(r["dp_over_nonprivate"] == pytest.approx(r["train_step_s"] / r["nonprivate_train_step_s"])
                       for r in by_fw.values())

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


def test_bench_precision_reaches_every_row_and_the_result(tmp_path, monkeypatch):
    """`medjax bench --precision bfloat16` runs every row at that precision and says so in bench.json (the rows'
    bfloat16 numbers, medjax's policy against torch.autocast: the GPU-script smoke test, which runs them)."""
    from medjax.bench import bench

    seen = []
    monkeypatch.setattr(bench, "run_case", lambda case, mode, *a, precision, **k: seen.append(
        (case.name, mode, precision)) or [])
    assert cli.main(["bench", "--smoke", "--cases", "medmnist_r18_2d_1ch", "quickstart_unet", "--precision",
                     "bfloat16", "--out", str(tmp_path / "b")]) == 0
    assert seen == [("medmnist_r18_2d_1ch", "smoke", "bfloat16"), ("quickstart_unet", "smoke", "bfloat16")]
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["precision"] == "bfloat16"


def test_rows_run_the_configs_shapes():
    """A row's batch, model and optimizer are its experiment config's; quick mode keeps them (only steps change)."""
    from medjax.bench import bench

    row = bench.CASES["medmnist_r18_2d_1ch"]
    for mode in ("full", "quick"):
        config = bench.case_config(row, mode, "float32")
        assert (config.batch_size, config.model.name, config.model.stem) == (128, "resnet18", "small")
        batch = bench.case_data(row, config, mode)
        assert batch["image"].shape == (128, 28, 28, 1) and batch["label"].shape == (128,)
    config3d = bench.case_config(bench.CASES["medmnist_r18_3d"], "quick", "float32")
    assert config3d.batch_size == 32  # MedMNIST3D's train_and_eval_pytorch.py default
    msd = bench.case_config(bench.CASES["msd_unet3d"], "quick", "bfloat16")
    assert (msd.batch_size, tuple(msd.data.patch_size), msd.compute.precision) == (2, (64, 64, 64), "bfloat16")
    assert bench.case_data(bench.CASES["cine_convlstm_unet"], bench.case_config(
        bench.CASES["cine_convlstm_unet"], "full", "float32"), "full")["image"].shape == (4, 12, 48, 48, 1)
    smoke = bench.case_config(row, "smoke", "float32")
    assert smoke.batch_size == 2 and bench.case_data(row, smoke, "smoke")["image"].shape == (2, 16, 16, 1)


def test_protocol_quickstart_tiny_runs_both_frameworks_to_the_target(tmp_path):
    """`--protocol` end to end at a tiny size: both loops train, validate at the same steps, save the best weights
    and score the test split; a target of 0 is reached at the first validation."""
    from medjax.bench import protocol

    result = protocol.run("quickstart", tmp_path / "p", target=0.0, log=lambda _: None,
                          overrides=["num_train_steps=4", "eval_every=2", "checkpoint_every=4", "batch_size=4",
                                     "eval_batch_size=8", "model.features=(4,8)", "progress=False"])
    medjax_r, torch_r = result["results"]
    assert [r["framework"] for r in result["results"]] == ["medjax", "torch_eager"]
    for r in (medjax_r, torch_r):
        assert r["steps"] == 4 and [c[0] for c in r["val_curve"]] == [2, 4]
        assert r["time_to_target"]["step"] == 2 and r["time_to_target"]["wall_s"] > 0
        assert 0.0 <= r["test"] <= 1.0 and r["total_wall_s"] >= r["train_wall_s"] > 0
    timing = medjax_r["timing"]
    assert timing["steps"] == 4 and timing["total_s"] >= timing["first_step_s"] + timing["eval_s"] > 0
    assert (tmp_path / "p" / "torch" / "best.pt").exists() and (tmp_path / "p" / "medjax" / "eval.json").exists()
    md = (tmp_path / "p" / "protocol.md").read_text()
    assert "time to val dice_mean >= 0.0" in md and "| medjax |" in md and "| torch_eager |" in md


def test_protocol_errors(tmp_path, capsys):
    assert cli.main(["bench", "--protocol", "nosuch", "--out", str(tmp_path / "b")]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert cli.main(["bench", "--target", "0.5", "--out", str(tmp_path / "c")]) == 2
    assert "--protocol" in capsys.readouterr().err


def test_gpu_script_runs_at_smoke_size_on_the_cpu(repo, tmp_path):
    """medjax/bench/gpu.sh end to end on the CPU at tiny shapes: float32, bfloat16 and torch.compile
    records, FLOPs from XLA's cost analysis, and the table. The bfloat16 rows are medjax's mixed-precision policy
    against torch.autocast(bfloat16): same weights, first losses within the bfloat16 tolerance."""
    out = tmp_path / "gpu"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", PYTHON=sys.executable)
    env.pop("XLA_FLAGS", None)  # the script sets medjax's XLA:CPU defaults itself
    proc = subprocess.run(["bash", "medjax/bench/gpu.sh", str(out), "--smoke", "--cases", "quickstart_unet"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "gpu.json").read_text())
    got = {(r["framework"], r["precision"]) for r in result["records"]}
    assert got == {("medjax", "float32"), ("torch_eager", "float32"), ("medjax", "bfloat16"),
                   ("torch_eager", "bfloat16"), ("torch_compile", "float32")}
    medjax = [r for r in result["records"] if r["framework"] == "medjax"]
    assert all(r["flops_per_step"] > 0 and r["achieved_flop_per_s"] > 0 for r in medjax)
    assert result["measured_matmul"]["float32"] > 0 and result["skipped"] == []
    assert "--xla_cpu_experimental_xnn_fusion_type=individual_convolution" in result["machine"]["xla_flags"]
    bf16 = {r["framework"]: r for r in result["records"] if r["precision"] == "bfloat16"}
    check = bf16["torch_eager"]["loss_check"]
    assert check["passed"] and check["rtol"] == 3e-2 and check["rel_diff"] > 0
    md = (out / "gpu.md").read_text()
    assert "| quickstart_unet | float32 |" in md and "| quickstart_unet | bfloat16 |" in md
