"""A disk that fills during a checkpoint: one line naming the workdir, the space a checkpoint needs and the last
intact checkpoint, exit status 4, the partial save removed, and resume from the intact one still works."""

import errno
import os

import orbax.checkpoint as ocp

from medjax import cli
from medjax.train.checkpoint import _disk_full

STEPS = ["--config.num_train_steps=4", "--config.checkpoint_every=2", "--config.eval_every=2",
         "--config.log_every=2", "--config.progress=False"]


def test_disk_full_is_one_line_exit_4_and_leaves_no_partial_save(tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 4 and str(self.directory).endswith("checkpoints"):
            partial = os.path.join(str(self.directory), "4.orbax-checkpoint-tmp-1234")
            os.makedirs(os.path.join(partial, "state"))
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as e:
                raise RuntimeError("commit of the checkpoint failed") from e
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    code = cli.main(["train", "--config", "synthetic:segmentation", "--workdir", str(workdir), *STEPS])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medjax:")]
    assert code == 4
    assert len(err) == 1 and err[0].startswith(f"medjax: error: disk full while writing a checkpoint in {workdir}")
    assert f"the last intact checkpoint is step 2 in {workdir / 'checkpoints'}" in err[0] and "MiB" in err[0]
    assert "one checkpoint needs about " in err[0] and " MiB are free" in err[0]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    assert cli.main(["train", "--config", "synthetic:segmentation", "--workdir", str(workdir), *STEPS]) == 0
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_disk_full_is_found_in_the_cause_chain_only_for_enospc():
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as inner:
            raise ValueError("wrapped") from inner
    except ValueError as e:
        assert _disk_full(e)
    assert not _disk_full(OSError(errno.EACCES, "denied")) and not _disk_full(RuntimeError("other"))
