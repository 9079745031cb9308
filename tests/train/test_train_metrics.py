"""AUC / AP / Spearman against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import one_thread  # noqa: F401 (autouse fixture)

from hyperlapse.train.metrics import (
    accuracy,
    average_precision,
    rankdata,
    roc_auc,
    roc_auc_and_ap,
    spearman,
)


def test_hand_computed_values():
    # positives at 0.35, 0.8; negatives at 0.1, 0.4 -> pairs won: (0.8 > both), (0.35 > 0.1) = 3/4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # ranking 0.8(+), 0.4(-), 0.35(+), 0.1(-): AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6)
    # a tie between a positive and a negative counts one half
    assert roc_auc([0.5, 0.5], [0, 1]) == 0.5
    # tied scores form one precision-recall point: 2 items at 0.9 (1 positive) then 1 positive
    assert average_precision([0.9, 0.9, 0.1], [1, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert rankdata([3.0, 1.0, 3.0]).tolist() == [2.5, 1.0, 2.5]
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert accuracy([1, 0], [1, 1]) == 0.5
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    assert math.isnan(average_precision([0.1, 0.2], [0, 0]))
    auc, ap = roc_auc_and_ap([0.1, 0.2], [1, 1])  # one class: AUC undefined, AP is 1
    assert math.isnan(auc) and ap == average_precision([0.1, 0.2], [1, 1]) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_scikit_learn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.rand(200, generator=gen) < 0.3
    scores = torch.randint(0, 20, (200,), generator=gen).double() + labels.double() * 3
    assert roc_auc(scores, labels) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(
        sk.average_precision_score(labels, scores), abs=1e-12
    )
    joint = roc_auc_and_ap(scores, labels)  # one sort, same numbers (ties included)
    assert joint == pytest.approx((sk.roc_auc_score(labels, scores),
                                   sk.average_precision_score(labels, scores)), abs=1e-12)
    other = scores + torch.randn(200, generator=gen, dtype=torch.float64) * 5
    want = stats.spearmanr(scores.numpy(), other.numpy()).statistic
    assert spearman(scores, other) == pytest.approx(want, abs=1e-12)
