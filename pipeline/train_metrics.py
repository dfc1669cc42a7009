"""Per-step training metrics from per-pair results: TRL's names, plus RE-PO's under repo/. Pure; no IO."""
import torch
from torch import Tensor

MAX_LISTED_ANNOTATORS = 16  # past this many, η is logged as quantiles
ETA_QUANTILES = {"min": 0.0, "p10": 0.1, "p50": 0.5, "p90": 0.9, "max": 1.0}


def step_metrics(batch: dict[str, Tensor], flag_threshold: float | None) -> dict[str, float]:
    """Batch means of per-pair (B,) tensors loss, rewards_chosen, rewards_rejected, logps_chosen, logps_rejected
    (and w, for RE-PO: pass flag_threshold) under TRL's metric names; rewards/accuracies counts ties as wrong."""
    mean = {name: float(values.double().mean()) for name, values in batch.items()}
    metrics = {
        "loss": mean["loss"],
        "rewards/chosen": mean["rewards_chosen"],
        "rewards/rejected": mean["rewards_rejected"],
        "rewards/margins": mean["rewards_chosen"] - mean["rewards_rejected"],
        "rewards/accuracies": float((batch["rewards_chosen"] > batch["rewards_rejected"]).double().mean()),
        "logps/chosen": mean["logps_chosen"],
        "logps/rejected": mean["logps_rejected"],
    }
    if flag_threshold is not None:
        metrics["repo/w_mean"] = mean["w"]
        metrics["repo/flagged_frac"] = float((batch["w"] < flag_threshold).double().mean())
    return metrics


def eval_metrics(loss: Tensor, rewards_chosen: Tensor, rewards_rejected: Tensor,
                 label_wrong: Tensor | None) -> dict[str, float]:
    """eval/* over held-out pairs (N,): TRL's eval/loss and eval/rewards/* against the labels (ties wrong, as in
    training), and eval/truth_accuracy, the share whose true order the implicit reward reproduces (ties ½), where
    the pairs carry the truth (label_wrong (N,) bool)."""
    margins = (rewards_chosen - rewards_rejected).double()
    metrics = {"eval/loss": float(loss.double().mean()), "eval/rewards/chosen": float(rewards_chosen.double().mean()),
               "eval/rewards/rejected": float(rewards_rejected.double().mean()),
               "eval/rewards/margins": float(margins.mean()),
               "eval/rewards/accuracies": float((margins > 0).double().mean())}
    if label_wrong is not None:
        agrees = torch.where(label_wrong, -margins, margins)
        metrics["eval/truth_accuracy"] = float(((agrees > 0).double() + 0.5 * (agrees == 0).double()).mean())
    return metrics


def eta_metrics(eta: Tensor, annotators: list[str]) -> dict[str, float]:
    """repo/eta/<annotator> for up to MAX_LISTED_ANNOTATORS annotators, else repo/eta_quantile/<q>."""
    if len(annotators) <= MAX_LISTED_ANNOTATORS:
        return {f"repo/eta/{name}": float(value) for name, value in zip(annotators, eta)}
    eta = eta.double()
    return {f"repo/eta_quantile/{name}": float(torch.quantile(eta, q)) for name, q in ETA_QUANTILES.items()}
