"""The demo's path at CI size: score -> RE-DPO and DPO -> generate -> evaluate -> inspect-noise on the bundled data,
tiny model."""

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM

from re_po.data import run_folder, schema
from re_po.stages import demo


@pytest.fixture(scope="module")
def demo_run(tiny_llama, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("demo")
    cfg = demo.DemoConfig(workspace=workspace, model=str(tiny_llama), train_pairs=12, heldout_pairs=16,
                          generate_prompts=6, max_new_tokens=4, epochs=1, batch_size=8, lr=1e-3, compare_dpo=True)
    path = demo.run(cfg)
    return workspace, json.loads(path.read_text())


def test_demo_summary_compares_eta_with_the_measured_reliability(demo_run):
    workspace, summary = demo_run
    train = pl.read_ndjson(workspace / "data" / "train.jsonl")
    measured = {k: 1 - float(g["is_flipped"].mean()) for (k,), g in train.group_by("annotator")}
    rows = {a["annotator"]: a for a in summary["annotators"]}
    before = {a["annotator"]: a for a in summary["before_training"]["annotators"]}
    assert set(rows) == set(before) == set(measured) == {"careful", "hasty", "spammer", "adversary"}
    for name, row in rows.items():
        for table in (row, before[name]):
            assert table["labels"] == train.filter(pl.col("annotator") == name).height
            assert table["accuracy"] == pytest.approx(measured[name])
            assert table["eta_abs_error"] == pytest.approx(abs(table["eta"] - measured[name]))
            assert 0 < table["eta"] < 1
    assert summary["flags"]["noisy"] == summary["before_training"]["flags"]["noisy"] == int(train["is_flipped"].sum())
    assert summary["train_pairs"] == 12 and summary["train_labels"] == train.height == 36  # three labels each
    assert all((workspace / "inspect" / "epoch-1" / "plots" / name).stat().st_size > 0
               for name in ("w_hist.png", "eta_steps.png", "w_flagged.png"))
    assert Path(summary["outputs"]["report"]).read_text().count("data:image/png;base64,") == 5  # the plots, inline
    assert "η̂ before" in demo.format_summary(summary)


def test_demo_before_training_is_the_estimate_written_as_epoch_0(demo_run):
    """The pre-training figures are epoch 0 of the run: the estimate, whose η is where training started."""
    workspace, summary = demo_run
    start = pl.read_parquet(workspace / "train" / run_folder.ETA_STEPS).filter(pl.col("event") == "init")
    before = {a["annotator"]: a["eta"] for a in summary["before_training"]["annotators"]}
    assert dict(start.select("annotator", "eta").iter_rows()) == pytest.approx(before)
    epoch_zero = json.loads((workspace / "inspect" / "epoch-0" / "summary.json").read_text())
    assert epoch_zero["epoch"] == 0


def test_demo_judges_what_both_policies_write(demo_run):
    """RE-DPO's and DPO's samples against the reference's and against each other, from the samples themselves."""
    from re_po.pipeline import generation_metrics
    from re_po.stages import generate

    workspace, summary = demo_run
    samples = {name: generate.read_samples(workspace / name) for name in ("generate", "generate-dpo")}
    assert all(frame.height == 6 * 2 * 2 for frame in samples.values())  # prompts × samples × two sides
    by_method = summary["generation"]["by_method"]
    for name, folder in (("re-dpo", "generate"), ("dpo", "generate-dpo")):
        written = json.loads((workspace / folder / "generation.json").read_text())
        assert by_method[name]["win_rate"] == written["win_rate"] and by_method[name]["kl"] == written["kl"]
    rate, _, _ = generation_metrics.win_rate(generate.grid(samples["generate"], "policy", "reward"),
                                             generate.grid(samples["generate-dpo"], "policy", "reward"))
    assert by_method["re-dpo_vs_dpo"]["win_rate"] == rate
    assert {"win_rate", "win_rate_ci", "kl"} <= set(summary["generation"])
    assert "RE-DPO against DPO" in demo.format_summary(summary)


def test_demo_heldout_accuracy_before_training_is_one_half(demo_run):
    """With the policy equal to the reference every DPO reward margin is 0: each pair counts ½."""
    _, summary = demo_run
    assert summary["heldout"]["pairs"] == 16
    assert summary["heldout"]["reward_accuracy_before"] == 0.5


def _sequence_logp(model, prompt_ids, response_ids) -> float:
    """Σ log π(response | prompt) from a full-vocabulary float64 log-softmax (independent of pipeline/)."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logp[len(prompt_ids) - 1 :].sum())


def test_evaluate_accuracy_matches_a_direct_forward_of_both_models(demo_run, tiny_llama):
    workspace, summary = demo_run
    ref_model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    policy = AutoModelForCausalLM.from_pretrained(workspace / "train" / "final").eval()
    cache, _ = schema.read_scores(workspace / "heldout" / "ref")
    right = 0.0
    for row in cache.iter_rows(named=True):
        prompt, chosen, rejected = row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]
        margin = 0.1 * (
            (_sequence_logp(policy, prompt, chosen) - _sequence_logp(ref_model, prompt, chosen))
            - (_sequence_logp(policy, prompt, rejected) - _sequence_logp(ref_model, prompt, rejected))
        )
        truth_sign = -1 if row["is_flipped"] else 1
        right += 1.0 if margin * truth_sign > 0 else 0.5 if margin == 0 else 0.0
    assert summary["heldout"]["reward_accuracy_after"] == pytest.approx(right / cache.height)
