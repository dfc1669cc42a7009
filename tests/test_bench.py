"""bench/gpu.sh --dry-run: every step of the GPU script, at toy size on this CPU, so the script cannot rot."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_script_runs_every_step_in_its_dry_run(tmp_path):
    done = subprocess.run(["bash", "bench/gpu.sh", "--dry-run"], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    log = (tmp_path / "gpu.log").read_text()
    assert done.returncode == 0 and "FAILED" not in log, log[-4000:]
    scored = json.loads((tmp_path / "score-tiny.json").read_text())
    trained = json.loads((tmp_path / "train-tiny.json").read_text())
    assert scored["pairs"] == 16 and 0 < scored["hf"]["pairs"] <= 16  # distinct pairs are scored once
    assert scored["parameters"] > 0 and scored["peak_flops"] > 0
    assert {"dpo", "re-dpo"} <= set(trained["runs"]) and trained["runs"]["dpo"]["pairs"] == 16
    assert trained["runs"]["dpo"]["tokens"] == trained["runs"]["re-dpo"]["tokens"]  # the same steps, counted alike
    if importlib.util.find_spec("vllm"):
        assert scored["vllm_max_relative_difference"] < 1e-4  # vLLM scored the same tokens
    for table in ("pairs/s", "tok/s", "MFU"):
        assert log.count(table) >= 2, table  # in the score and the train tables


def _generation_benchmark():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import generation
    finally:
        sys.path.remove(str(REPO / "bench"))
    return generation


def test_the_generation_benchmarks_validation_prompts_are_every_heldout_prompt_the_table_does_not_answer(tmp_path):
    """bench/generation.py --validation answers the held-out prompts after the table's first --prompts: none of the
    table's, and together with them every held-out prompt once (the generate stage takes the first N distinct)."""
    import polars as pl
    generation = _generation_benchmark()
    heldout = pl.read_ndjson(generation.DATA / "heldout-prompts.jsonl")["prompt"].unique(maintain_order=True).to_list()
    validation = pl.read_ndjson(generation.validation_prompts(tmp_path, 100))["prompt"].to_list()
    assert validation == heldout[100:] and not set(validation) & set(heldout[:100])


def test_the_generation_benchmarks_simulated_judge_holds_one_opinion_per_pair(tmp_path):
    """bench/generation.py's judge for re-dpo-judge: each pair gets one noisy margin, stated by every row in that
    row's own order (so rows that reverse each other get opposite log-odds), and it orders 76% of the single-label
    pairs right, as its help says (the truth: is_flipped, the label against the true reward's order)."""
    import polars as pl
    generation = _generation_benchmark()
    three = pl.read_ndjson(generation.with_simulated_judge(generation.DATA / "train-3labels.jsonl", tmp_path / "3.jsonl"))
    reference = three.group_by("pair_id", maintain_order=True).first().select("pair_id", ref="chosen")
    stated = three.join(reference, on="pair_id").with_columns(
        opinion=pl.when(pl.col("chosen") == pl.col("ref")).then(pl.col("judge_logit")).otherwise(-pl.col("judge_logit")))
    assert stated.group_by("pair_id").agg(pl.col("opinion").n_unique())["opinion"].max() == 1
    assert (three["pair_id"].value_counts()["count"] > 1).all() and (stated["opinion"] != stated["judge_logit"]).any()
    one = pl.read_ndjson(generation.with_simulated_judge(generation.DATA / "train-1label.jsonl", tmp_path / "1.jsonl"))
    assert round(float(((one["judge_logit"] > 0) == ~one["is_flipped"]).mean()), 2) == 0.76
