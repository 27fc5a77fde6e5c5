"""One trained run shared by the faithfulness and CLI tests: `synthetic:classification` (bright squares among
noise, a 2-stage width-4 ResNet) trained in-process for 36 steps, checkpointed every 12 (test accuracy 1.0)."""

import pytest


@pytest.fixture(scope="session")
def trained_classifier(tmp_path_factory):
    """(config, workdir) of the trained run."""
    from medjax.config import build_config
    from medjax.train import loop

    workdir = str(tmp_path_factory.mktemp("explain_cls"))
    config = build_config("synthetic:classification", ["--config.num_train_steps=36", "--config.eval_every=12",
                                                       "--config.checkpoint_every=12"])
    loop.train(config, workdir)
    return config, workdir
