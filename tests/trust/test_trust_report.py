"""experiments/trust_report.py end to end at --tiny size on real ICBM152 patches: every stage runs through the
user-facing functions and lands in results.json / results.md."""

import json

import pytest


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from experiments import trust_report

    out = tmp_path_factory.mktemp("trust")
    assert trust_report.main(["--tiny", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_tiny_report_runs_every_stage_through_the_commands(report):
    out, result = report
    assert (result["size"], result["methods"], result["uncertainty"]) == ("tiny", ["gradcam"], ["mc_dropout"])
    # the site metadata: every second test patch of each class (8 per class) is at site B
    assert result["subgroups"]["sites"] == {"A": 12, "B": 12}
    assert (out / "site.csv").read_text().splitlines()[:4] == ["case,site", "0,A", "1,B", "2,A"]
    assert {g: v["n"] for g, v in result["subgroups"]["biased"]["groups"].items()} == {"A": 12, "B": 12}
    gap = result["subgroups"]["biased"]["gaps"]["accuracy_difference"]
    assert set(gap) >= {"value", "ci_percentile", "ci_bca"}
    w = f"--workdir {out}"
    assert result["commands"] == [
        f"medjax train --config trust_icbm152:classifier,tiny {w}/classifier --config.num_train_steps=4",
        f"medjax evaluate --config trust_icbm152:classifier,tiny {w}/classifier --config.num_train_steps=4 "
        "--calibrate",
        *[f"medjax explain --config trust_icbm152:classifier,tiny {w}/classifier --config.num_train_steps=4 "
          f"--method {m} --num 2" for m in ("gradcam",)],
        f"medjax evaluate --config trust_icbm152:classifier,tiny {w}/classifier --config.num_train_steps=4 "
        "--uncertainty mc_dropout --samples 2",
        f"medjax train --config trust_icbm152:biased,tiny {w}/biased --config.num_train_steps=4 "
        "--config.trust.bootstrap_resamples=20",
        f"medjax evaluate --config trust_icbm152:biased,tiny {w}/biased --config.num_train_steps=4 "
        f"--config.trust.bootstrap_resamples=20 --calibrate --subgroups {out}/site.csv"]
    cls = result["classifier"]
    assert set(cls["explain"]) == {"gradcam", "random", "figures"}
    assert all((out / f).stat().st_size > 0 for f in cls["explain"]["figures"])
    assert list(cls["uncertainty"]["mc_dropout"]["referral_entropy"]) == ["0.0", "0.1", "0.2", "0.5"]
    # the tables are the numbers of results.json
    md = (out / "results.md").read_text()
    ece = cls["calibration"]["ece"]
    assert f"| before | {ece['before']:.3f} |" in md and f"| after | {ece['after']:.3f} |" in md
    assert f"| gradcam | {cls['explain']['gradcam']['mean_deletion_auc']:.3f} |" in md
    assert f"| random | {cls['explain']['random']['mean_deletion_auc']:.3f} |" in md
