"""pipeline/train_metrics.py: TRL-named step metrics and η metrics, on hand-worked numbers."""
import pytest
import torch

from re_po.pipeline.train_metrics import eta_metrics, step_metrics


def test_step_metrics_hand_worked():
    """Three pairs: rewards (1, 0), (0, 0), (−1, 2): margins 1, 0, −3 → mean −2/3; only the first is accurate."""
    batch = {"loss": torch.tensor([0.5, 1.0, 1.5]), "rewards_chosen": torch.tensor([1.0, 0.0, -1.0]),
             "rewards_rejected": torch.tensor([0.0, 0.0, 2.0]), "logps_chosen": torch.tensor([-3.0, -6.0, -9.0]),
             "logps_rejected": torch.tensor([-1.0, -2.0, -3.0]), "w": torch.tensor([0.9, 0.4, 0.2])}
    plain = step_metrics(batch, flag_threshold=None)
    assert plain == pytest.approx({"loss": 1.0, "rewards/chosen": 0.0, "rewards/rejected": 2 / 3,
                                   "rewards/margins": -2 / 3, "rewards/accuracies": 1 / 3, "logps/chosen": -6.0,
                                   "logps/rejected": -2.0})
    robust = step_metrics(batch, flag_threshold=0.5)
    assert robust["repo/w_mean"] == pytest.approx(0.5) and robust["repo/flagged_frac"] == pytest.approx(2 / 3)


def test_eta_metrics_lists_few_annotators_and_summarises_many():
    assert eta_metrics(torch.tensor([0.9, 0.6], dtype=torch.float64), ["a", "b"]) == {"repo/eta/a": 0.9,
                                                                                    "repo/eta/b": 0.6}
    many = eta_metrics(torch.linspace(0.5, 1.0, 21, dtype=torch.float64), [f"k{i}" for i in range(21)])
    assert many == pytest.approx({"repo/eta_quantile/min": 0.5, "repo/eta_quantile/p10": 0.55,
                                  "repo/eta_quantile/p50": 0.75, "repo/eta_quantile/p90": 0.95,
                                  "repo/eta_quantile/max": 1.0})
