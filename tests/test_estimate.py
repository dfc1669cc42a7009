"""`repo inspect-noise SCORES`: the noise estimate before training, from a score cache (data/estimate.py)."""
import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_score import peaky_model_dir, score_config, sentence  # noqa: F401 (peaky_model_dir: fixture)
from typer.testing import CliRunner

from re_po import cli
from re_po.data import noise_inputs, schema
from re_po.data.scoring import run as score
from re_po.stages.configs import EstimateConfig
from re_po.stages.inspect_noise import InspectConfig, run

FLIP_RATES = {"careful": 0.05, "hasty": 0.20, "sloppy": 0.35}


def write_multi_labelled(path: Path, pairs: int, seed: int = 0) -> Path:
    """Every pair labelled by the three annotators of FLIP_RATES, one row per label, the true order flipped with
    each one's rate; `judge` holds log-odds of the row's order from a noisy but informative judge."""
    rng = random.Random(seed)
    rows = []
    for p in range(pairs):
        prompt, better, worse = sentence(rng, 1, 6), sentence(rng, 1, 6), sentence(rng, 1, 6)
        if better == worse:
            continue
        judge_true = rng.gauss(2.0, 1.5)  # the judge's log-odds of the true order
        for annotator, rate in FLIP_RATES.items():
            flipped = rng.random() < rate
            chosen, rejected = (worse, better) if flipped else (better, worse)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "annotator": annotator,
                         "pair_id": f"p{p}", "is_flipped": flipped, "judge": -judge_true if flipped else judge_true})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def multi_cache(peaky_model_dir, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("multi")
    data = write_multi_labelled(folder / "pairs.jsonl", 400)
    score(score_config(data, peaky_model_dir, folder / "scores", part_size=512, max_length=32, max_prompt_length=12))
    return folder / "scores", data


def measured(data: Path) -> dict[str, float]:
    rows = pl.read_ndjson(data)
    return {a: 1 - float(rows.filter(pl.col("annotator") == a)["is_flipped"].mean()) for a in FLIP_RATES}


def eta_of(summary: dict) -> dict[str, float]:
    return {a["annotator"]: a["eta"] for a in summary["annotators"]}


def inspect(cache: Path, out: Path, **estimate) -> dict:
    run(InspectConfig(run=cache, out_dir=out, estimate=EstimateConfig(**estimate)))
    return json.loads((out / "summary.json").read_text())


def test_three_annotators_by_agreement_alone(multi_cache, tmp_path, capsys):
    cache, data = multi_cache
    summary = inspect(cache, tmp_path / "i", probe=False)
    truth = measured(data)
    assert all(abs(eta_of(summary)[a] - truth[a]) < 0.05 for a in FLIP_RATES), (eta_of(summary), truth)
    assert [a["annotator"] for a in summary["annotators"]] == ["sloppy", "hasty", "careful"]
    assert summary["truth"]["roc_auc"] > 0.85  # the other two labels expose a flipped one
    assert summary["estimate"]["model"] == "none (agreement alone)" and summary["epoch"] == 0
    report = capsys.readouterr().out
    assert "estimate before training" in report and "± se" in report
    posteriors = pl.read_parquet(tmp_path / "i" / "posteriors.parquet")
    annotators = pl.read_parquet(tmp_path / "i" / "annotators.parquet")
    assert posteriors.columns == ["row_id", "pair_id", "annotator", "z", "p", "w", "epoch"]
    assert posteriors.height == pl.read_ndjson(data).height and (posteriors["z"] == 0).all()
    assert set(annotators.columns) >= {"annotator", "eta", "eta_se", "identified", "epoch"}


def test_with_the_probe_the_same_keys_come_back(multi_cache, tmp_path):
    """These pairs' true order is a coin flip, so the probe cannot predict it: it is tried, found at chance and
    set aside, and the three annotators' agreement gives η."""
    cache, data = multi_cache
    summary = inspect(cache, tmp_path / "i")
    assert summary["estimate"]["model"].startswith("none (agreement alone: the probe on ")
    assert summary["estimate"]["model"].endswith("does not predict the labels beyond chance)")
    assert set(summary["estimate"]["probe_log_loss"]) == {"layer 1", "layer 2", "layers 1+2"}
    truth = measured(data)
    assert all(abs(eta_of(summary)[a] - truth[a]) < 0.06 for a in FLIP_RATES), (eta_of(summary), truth)
    assert summary["truth"]["roc_auc"] is not None and summary["labels"] == pl.read_ndjson(data).height


def test_a_judge_column_serves_as_the_model(multi_cache, tmp_path):
    cache, data = multi_cache
    summary = inspect(cache, tmp_path / "i", prior_col="judge")
    assert summary["estimate"]["model"] == "prior column judge"
    truth = measured(data)
    assert all(abs(eta_of(summary)[a] - truth[a]) < 0.05 for a in FLIP_RATES)
    z = pl.read_parquet(tmp_path / "i" / "posteriors.parquet")["z"]
    assert (z != 0).all()  # the judge's calibrated log-odds


def test_single_labels_without_a_model_keep_eta0_and_say_so(peaky_model_dir, tmp_path, capsys):  # noqa: F811
    rng = random.Random(1)
    rows = [{"prompt": sentence(rng, 1, 5), "chosen": sentence(rng, 1, 5) + " good", "rejected": sentence(rng, 1, 5),
             "annotator": "only"} for _ in range(40)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    score(score_config(tmp_path / "pairs.jsonl", peaky_model_dir, tmp_path / "scores"))
    summary = inspect(tmp_path / "scores", tmp_path / "i", probe=False, eta0=0.8)
    assert summary["annotators"][0]["eta"] == 0.8 and summary["annotators"][0]["identified"] is False
    assert summary["annotators"][0]["eta_se"] is None
    captured = capsys.readouterr()
    assert "do not identify the reliability of 1 annotator" in captured.err and "n/i" in captured.out


def test_top_k_past_the_pair_count_dumps_every_pair_with_its_w(multi_cache, tmp_path):
    cache, data = multi_cache
    run(InspectConfig(run=cache, out_dir=tmp_path / "i", top_k=10**6, dump=tmp_path / "all.parquet",
                      estimate=EstimateConfig(probe=False)))
    dumped = pl.read_parquet(tmp_path / "all.parquet")
    assert dumped.height == pl.read_ndjson(data).height and "w" in dumped.columns
    assert not [c for c in dumped.columns if "_emb_" in c or c.endswith("_ids")]


def test_inputs_group_rows_by_pair_and_orient_them(multi_cache):
    cache, data = multi_cache
    frame, key = schema.read_scores(cache)
    inputs = noise_inputs.read_inputs(frame, key, str(cache))
    source = pl.read_ndjson(data)
    assert inputs.num_pairs == source["pair_id"].n_unique()
    # Rows of one pair agree in orientation exactly when they agree on is_flipped.
    flipped = source["is_flipped"].to_numpy()
    first = {}
    for row, (pair, orientation) in enumerate(zip(inputs.pair, inputs.orientation)):
        reference_row = first.setdefault(int(pair), row)
        assert (orientation == 1) == (flipped[row] == flipped[reference_row])
    assert set(inputs.embeddings) == {1, 2}  # the middle and last layers of the 2-layer peaky Llama
    assert all(part.shape == (inputs.num_pairs, 64) for parts in inputs.embeddings.values() for part in parts)


def test_bad_prior_column_and_no_embeddings_are_named(multi_cache, peaky_model_dir, tmp_path):  # noqa: F811
    cache, data = multi_cache
    with pytest.raises(noise_inputs.NoiseInputError, match="prior column 'nothing' is not in the cache"):
        inspect(cache, tmp_path / "i", prior_col="nothing")
    with pytest.raises(noise_inputs.NoiseInputError, match="expected numbers"):
        inspect(cache, tmp_path / "i", prior_col="annotator")
    score(score_config(data, peaky_model_dir, tmp_path / "bare", embeddings=False, part_size=512, max_length=32,
                       max_prompt_length=12))
    with pytest.raises(noise_inputs.NoiseInputError, match="without embeddings"):
        inspect(tmp_path / "bare", tmp_path / "i")


def test_cli_inspects_a_cache(multi_cache, tmp_path, monkeypatch):
    cache, _ = multi_cache
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["inspect-noise", str(cache), "--out-dir", "i", "--no-probe", "--eta0",
                                          "0.8", "--folds", "3", "--plots", "plots"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "i" / "summary.json").read_text())
    assert summary["estimate"]["model"].startswith("none") and (tmp_path / "plots" / "w_hist.png").exists()
    assert np.isfinite([a["eta"] for a in summary["annotators"]]).all()


def test_export_clean_from_the_estimate(multi_cache, tmp_path):
    """--export-clean works before training too: the input rows without the labels the estimate flags."""
    cache, data = multi_cache
    clean = tmp_path / "clean.jsonl"
    run(InspectConfig(run=cache, out_dir=tmp_path / "i", export_clean=clean, data=str(data),
                      estimate=EstimateConfig(probe=False)))
    flagged = pl.read_parquet(tmp_path / "i" / "posteriors.parquet").filter(pl.col("w") < 0.5)
    assert flagged.height > 0
    kept = pl.read_ndjson(clean)
    assert kept.height == pl.read_ndjson(data).height - flagged.height
    assert kept["is_flipped"].mean() < pl.read_ndjson(data)["is_flipped"].mean() / 2  # the flags were mostly wrong labels
