"""`repo evaluate`: held-out preference accuracy of a trained run against the truth.

Reads   a run folder of `repo train` (its config.json names the loss, β and the score cache, whose key
        names the reference model) and held-out pairs with a truth column (`is_flipped`: the observed
        order is the reverse of the true one).
Writes  into `out`: ref/ and policy/ (the held-out pairs scored by the reference and by the trained
        policy, through `repo score`, so both see exactly the same tokens) and evaluation.json. A ref/
        cache that is already complete is reused (score resumes), so evaluations can share one.
Run     repo evaluate HELDOUT [--run RUN] [--out DIR]

Accuracy is the share of held-out pairs whose true order the policy's implicit reward reproduces
(TRL's `rewards/accuracies`, against the truth instead of the labels; ties count ½). "Before" is the
same measure with the policy equal to the reference. A second ranking, the per-token log-likelihood
margin ℓ(a)/|a| − ℓ(b)/|b|, shows what the policy itself now prefers.
"""

from pathlib import Path

import numpy as np
import polars as pl
import torch

from re_po.data import folders, models, run_folder, schema
from re_po.data import scoring as score
from re_po.data.pairs import read_pairs
from re_po.data.tables import truth_column
from re_po.pipeline import losses
from re_po.pipeline.choices import LossSpec
from re_po.pipeline.noise_metrics import order_accuracy
from re_po.stages.configs import EvaluateConfig


def run(cfg: EvaluateConfig) -> Path:
    """Score the held-out pairs with the reference and the trained policy; returns evaluation.json."""
    run_dir, out = Path(cfg.run), Path(cfg.out)
    folders.check(out, "evaluate")
    train_config = run_folder.read_record(run_dir, need_key=True)
    key = train_config["cache_key"]
    folders.check_outputs({"--out": out, "--ref-out": cfg.ref_out},
                          {"the held-out data": cfg.data, "the run folder": run_dir, "the reference model": key["ref_model"]})
    if "loss_spec" not in train_config:
        raise ValueError(f"{run_dir / run_folder.CONFIG} names no loss_spec: the run was trained by an older re-po; "
                         "train it again to evaluate it")
    spec = LossSpec(**train_config["loss_spec"])  # exactly what was trained
    final = run_dir / run_folder.FINAL
    if not (final / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} has no trained policy in {final}; let `repo train` finish first")
    broken = models.weight_file_error(final) or models.custom_code_error(final)  # before the reference is scored
    if broken:
        raise models.ModelError(broken)
    lengths = dict(  # as the run's cache was scored; a max_length given alone takes its own prompt length
        max_length=cfg.max_length or int(key["max_length"]),
        max_prompt_length=cfg.max_prompt_length or (int(key["max_prompt_length"]) if cfg.max_length is None else None),
    )
    held_out = read_pairs(cfg.data, cfg.columns).table  # its truth before any scoring: refused, nothing is spent
    if cfg.truth_col not in held_out.columns:
        there = ", ".join(c for c in held_out.columns if c != "row_id")
        raise ValueError(f"{cfg.data}: no truth column {cfg.truth_col!r} (true where the label is wrong) to evaluate "
                         f"against; its columns: {there}; name yours with --truth-col")
    truth_column(held_out, cfg.truth_col, cfg.data)  # every value true/false or 0/1
    ref_out = Path(cfg.ref_out or out / "ref")
    # a failure before the reference's first scored part leaves no folder; after it, the part to resume from
    with folders.removed_on_failure([out], keep=lambda: schema.holds_parts(ref_out)):
        folders.claim(out, "evaluate")  # after the run folder and the data were read
        ref_cache = score.run(score.ScoreConfig(data=cfg.data, model=key["ref_model"], out=ref_out,
                                                columns=cfg.columns, **lengths))
        policy_cache = score.run(
            score.ScoreConfig(data=cfg.data, model=str(final), out=out / "policy", columns=cfg.columns, **lengths)
        )
    result = {
        "run": str(run_dir),
        "data": cfg.data,
        "loss": str(spec.kind),
        **heldout_accuracy(ref_cache, policy_cache, spec, cfg.truth_col),
    }
    path = out / "evaluation.json"
    run_folder.write_json(result, path)
    print(
        f"held-out accuracy against {cfg.truth_col} ({result['pairs']} pairs): implicit reward "
        f"{result['reward_accuracy_before']:.3f} -> {result['reward_accuracy_after']:.3f}; "
        f"log-likelihood margin {result['loglik_accuracy_before']:.3f} -> {result['loglik_accuracy_after']:.3f}"
    )
    return path


def heldout_accuracy(
    ref_cache: Path, policy_cache: Path, spec: LossSpec, truth_col: str
) -> dict:
    """Accuracies before (policy = reference) and after, from two score caches of the same pairs."""
    ref, _ = schema.read_scores(ref_cache)
    policy, _ = schema.read_scores(policy_cache)
    joined = ref.join(
        policy.select(
            "row_id",
            pl.col("ref_chosen_logps").alias("policy_chosen"),
            pl.col("ref_rejected_logps").alias("policy_rejected"),
        ),
        on="row_id",
    )
    wrong = truth_column(joined, truth_col, ref_cache).to_numpy()

    def column(name: str) -> torch.Tensor:
        return torch.tensor(joined[name].to_numpy(), dtype=torch.float64)

    ref_chosen, ref_rejected = column("ref_chosen_logps"), column("ref_rejected_logps")
    chosen_len, rejected_len = column("chosen_len"), column("rejected_len")

    def reward_margin(chosen: torch.Tensor, rejected: torch.Tensor) -> np.ndarray:
        logps = losses.PairLogps(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len)
        rewards_chosen, rewards_rejected = losses.implicit_rewards(spec, logps)
        return (rewards_chosen - rewards_rejected).numpy()

    def loglik_margin(chosen: torch.Tensor, rejected: torch.Tensor) -> np.ndarray:
        return (chosen / chosen_len - rejected / rejected_len).numpy()

    policy_chosen, policy_rejected = column("policy_chosen"), column("policy_rejected")
    return {
        "pairs": joined.height,
        "reward_accuracy_before": order_accuracy(reward_margin(ref_chosen, ref_rejected), wrong),
        "reward_accuracy_after": order_accuracy(reward_margin(policy_chosen, policy_rejected), wrong),
        "loglik_accuracy_before": order_accuracy(loglik_margin(ref_chosen, ref_rejected), wrong),
        "loglik_accuracy_after": order_accuracy(loglik_margin(policy_chosen, policy_rejected), wrong),
        "label_accuracy": float(1 - wrong.mean()),
    }
