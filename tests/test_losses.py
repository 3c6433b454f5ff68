"""The two action losses against values derived by hand."""

from __future__ import annotations

import math

import pytest
import torch

from stages.models.losses import ActionLoss


def test_bce_is_mean_sigmoid_cross_entropy():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    # (-log sigmoid(0) - log(1 - sigmoid(2))) / 2 = (log 2 + log(1 + e^2)) / 2
    expected = (math.log(2) + math.log(1 + math.e**2)) / 2
    assert ActionLoss("bce")(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_pose_softmax_is_cross_entropy_over_poses_plus_bce_over_the_rest():
    loss = ActionLoss("pose_softmax", pose_columns=[0, 1])
    logits = torch.tensor([[1.0, 0.0, 0.0], [3.0, 3.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # second actor has no pose: no softmax term
    ce = -math.log(math.e / (math.e + 1))  # actor 0's pose 0 against logits (1, 0)
    bce = (math.log(2) + math.log(2)) / 2  # column 2: logit 0 for both actors, targets 1 and 0
    assert loss(logits, targets).item() == pytest.approx(ce + bce, rel=1e-6)
    scores = loss.scores(logits)
    torch.testing.assert_close(scores[:, :2].sum(dim=1), torch.ones(2))
    torch.testing.assert_close(scores[:, 2], torch.full((2,), 0.5))


def test_pose_softmax_needs_pose_classes_and_known_kind():
    with pytest.raises(ValueError, match="no"):
        ActionLoss("pose_softmax", pose_columns=[])
    with pytest.raises(ValueError, match="unknown loss"):
        ActionLoss("focal")
