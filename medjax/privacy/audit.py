"""An empirical privacy check: the loss-threshold membership-inference attack (Yeom et al. 2018).

The attacker guesses that an example was in the training set when the model's loss on it is low. Its ROC AUC over
members (training examples) and non-members (held-out examples of the same distribution) measures how much the
model reveals about who was in its training data: 0.5 is chance, and DP-SGD at epsilon bounds what any attack can
reach (for epsilon-DP, TPR <= e^epsilon FPR + delta). It is a lower bound on leakage, not a proof of privacy: a weak
attack finding little does not show that no attack could do better.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medjax import metrics
from medjax.errors import MedjaxError


def loss_threshold_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """ROC AUC of the loss-threshold attack: score -loss, members positive (P(member loss < non-member loss),
    ties counted half)."""
    member, other = np.ravel(member_losses), np.ravel(nonmember_losses)
    if not member.size or not other.size:
        raise MedjaxError(f"membership audit needs members and non-members, got {member.size} and {other.size}")
    labels = np.concatenate([np.ones(member.size, np.int32), np.zeros(other.size, np.int32)])
    return metrics.roc_auc(-np.concatenate([member, other]), labels, task="binary")


def membership_audit(s: Any, state: Any, members: str = "train", nonmembers: str = "test") -> dict[str, float]:
    """The attack on a trained supervised setup `s` (`medjax.train.loop.setup`) and its device `state`: per-example
    losses (the task's eval outputs) of every example of split `members` and split `nonmembers`;
    {"mia_auc", "member_loss", "nonmember_loss"} (mean losses)."""
    from medjax.tasks.base import keep_valid
    from medjax.train import loop
    from medjax.train.steps import make_eval_step

    step = s.strategy.compile_eval_step(make_eval_step(s.task, s.members))
    losses = {}
    for split in (members, nonmembers):
        if split not in s.splits:
            raise MedjaxError(f"membership audit: dataset {s.config.data.name!r} has no {split!r} split")
        out = keep_valid(loop.split_outputs(s, state, split, step))
        if "loss" not in out:
            raise MedjaxError(f"membership audit: task {s.config.task.name!r} reports no per-example loss")
        losses[split] = out["loss"]
    return {"mia_auc": loss_threshold_auc(losses[members], losses[nonmembers]),
            "member_loss": float(np.mean(losses[members])), "nonmember_loss": float(np.mean(losses[nonmembers]))}
