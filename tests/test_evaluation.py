"""Evaluation: predictions, the most confident mistakes, confusion matrices, and each saved run's accuracy."""
import pytest
import torch

import lib
import report
from conftest import train_tiny


def test_misclassified_are_the_most_confident_mistakes_and_confusion_matrix():
    probs = torch.tensor([[0.9, 0.1] + [0] * 8, [0.4, 0.6] + [0] * 8, [0.7, 0.3] + [0] * 8, [0.2, 0.8] + [0] * 8])
    y = torch.tensor([0, 0, 1, 0])
    wrong = lib.misclassified(probs, y, k=10)
    assert [w["index"] for w in wrong] == [3, 2, 1]                   # most confident first
    assert wrong[0] == dict(index=3, true="airplane", pred="automobile", confidence=pytest.approx(0.8))
    cm = lib.confusion_matrix(probs, y)
    assert cm[0, 0] == 1 and cm[0, 1] == 2 and cm[1, 0] == 1 and cm.sum() == 4
    assert report.per_class_accuracy(cm)[:2] == [pytest.approx(100 / 3), 0.0]


def test_bn_batch_statistics_evaluation_leaves_the_model_alone(tiny_data):
    model, m, _ = train_tiny(tiny_data, "bn", batch_size=20)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = (model, tiny_data.test_x, m["mean"], m["std"])
    assert not torch.allclose(lib.predict(*args, batch_size=4), lib.predict(*args, batch_size=4, batch_stats=True))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ln, mln, _ = train_tiny(tiny_data, "ln", batch_size=20)
    a = lib.predict(ln, tiny_data.test_x, mln["mean"], mln["std"], batch_size=4)
    assert torch.allclose(a, lib.predict(ln, tiny_data.test_x, mln["mean"], mln["std"], batch_size=4, batch_stats=True))


def test_committed_predictions_give_back_each_main_runs_accuracy_exactly():
    for m in lib.load_metrics("*-s[0-9]"):
        p = lib.load_predictions(lib.ROOT / "runs" / m["run"])
        assert len(p["labels"]) == m["n_test"]
        assert lib.accuracy(p["probs"], p["labels"]) == m["final_test_acc"], m["run"]
