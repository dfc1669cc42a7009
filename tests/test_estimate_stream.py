"""The streamed noise estimate (issue 26, item 3): the same numbers as the in-memory one, from chunks of pairs and
from a score cache read part by part."""
import numpy as np
import polars as pl
import pytest
import torch

from re_po.data import estimate, noise_inputs, schema
from re_po.pipeline import reliability
from re_po.stages.configs import EstimateConfig


def planted_states(pairs: int, hidden: int = 24, seed: int = 0):
    """Per layer (first, second, prompt) float16 states with a planted prompt-dependent preference (as
    bench/estimate_scale.py), and the true order's logit."""
    rng = np.random.default_rng(seed)
    to_hidden = rng.standard_normal((6, hidden))
    polarity = rng.choice([-1.0, 1.0], pairs)
    prompt = rng.standard_normal((pairs, 6)) + 2 * polarity[:, None] * rng.standard_normal(6)
    first, second = rng.standard_normal((2, pairs, 6))
    truth = 3 * polarity * (first[:, 0] - second[:, 0])
    states = {layer: tuple((part @ to_hidden + rng.standard_normal((pairs, hidden))).astype(np.float16)
                           for part in (first, second, prompt)) for layer in (1, 2)}
    return states, truth


def chunked(states, sizes):
    """A Chunks callable over `states` cut into consecutive pieces of `sizes`."""
    bounds = np.cumsum([0, *sizes])

    def chunks():
        for start, end in zip(bounds[:-1], bounds[1:]):
            yield {layer: tuple(torch.from_numpy(part[start:end]) for part in parts) for layer, parts in states.items()}
    return chunks


def test_the_feature_maps_from_sums_are_probe_features_on_all_pairs():
    states, _ = planted_states(300)
    maps = reliability.candidate_maps(chunked(states, [7, 150, 143]), {1: 24, 2: 24}, components=8, prompt_components=3)
    both = tuple(torch.from_numpy(np.concatenate([states[1][i], states[2][i]], 1)) for i in range(3))
    expected = {"layer 1": tuple(map(torch.from_numpy, states[1])), "layer 2": tuple(map(torch.from_numpy, states[2])),
                "layers 1+2": both}
    assert list(maps) == list(expected)
    for name, (first, second, prompt) in expected.items():
        whole = reliability.probe_features(first, second, prompt, 8, 3)
        assert torch.allclose(maps[name](*both), whole, rtol=1e-9, atol=1e-9), name  # maps take all layers


@pytest.mark.parametrize("curvature_rows", [None, 250])
def test_the_streamed_newton_fits_are_fit_logistic_on_each_fold(curvature_rows):
    """Three problems at once, each on the rows of the other two folds (cross-fitting), with the curvature summed on
    every row or on a draw of about 250 of each problem's rows (subsampled Newton: the gradient stays exact): each
    is fit_logistic's minimum on its rows."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(600, 12, generator=g, dtype=torch.float64)
    target = (torch.rand(600, generator=g, dtype=torch.float64) < torch.sigmoid(x[:, 0] * 2)).double()
    weight = torch.rand(600, generator=g, dtype=torch.float64) + 0.5
    folds = reliability.folds_of(600, 3, seed=0)
    member = folds[:, None] != torch.arange(3)[None, :]

    def batches():
        for start in range(0, 600, 64):
            rows = slice(start, start + 64)
            yield x[rows], target[rows], weight[rows], member[rows]

    ridge = torch.tensor([3.0, 0.5, 30.0], dtype=torch.float64)
    fitted = reliability.fit_logistic_streamed(batches, 12, ridge, rows=member.sum(0), curvature_rows=curvature_rows)
    for f in range(3):
        expected = reliability.fit_logistic(x[member[:, f]], target[member[:, f]], weight[member[:, f]], float(ridge[f]))
        assert torch.allclose(fitted[:, f], expected, rtol=1e-7, atol=1e-9), f  # fit_logistic stops within ~1e-8


def test_the_streamed_estimate_is_the_estimate_with_the_ridge_drawn_too():
    """tune_pairs 120 of 400 pairs: the ridge is chosen on a draw, gathered from the chunks; η, w and the scores
    agree with `estimate` on the whole feature matrices to rounding."""
    states, truth = planted_states(400, seed=1)
    rng = np.random.default_rng(1)
    annotator = rng.integers(3, size=400)
    right = rng.random(400) > np.array([0.05, 0.2, 0.35])[annotator]
    true_first = rng.random(400) < 1 / (1 + np.exp(-truth))
    orientation = np.where(true_first == right, 1, -1)
    labels = reliability.Labels(torch.from_numpy(annotator), torch.arange(400), torch.from_numpy(orientation), 3, 400)
    inputs = noise_inputs.NoiseInputs(["a", "b", "c"], annotator, np.arange(400), orientation, 400,
                                      {layer: tuple(p.astype(np.float32) for p in parts) for layer, parts in states.items()},
                                      None)
    cfg = EstimateConfig(components=8, prompt_components=3)
    whole = reliability.estimate(labels, estimate.probe_candidates(inputs, cfg), tune_pairs=120)
    streamed = reliability.estimate_streamed(labels, chunked(states, [100, 33, 267]), {1: 24, 2: 24}, 8, 3,
                                             tune_pairs=120)
    assert streamed.features == whole.features and streamed.identified.tolist() == whole.identified.tolist()
    assert torch.allclose(streamed.eta, whole.eta, rtol=0, atol=1e-7)
    assert torch.allclose(streamed.w, whole.w, rtol=0, atol=1e-7)
    assert all(abs(streamed.log_loss[k] - whole.log_loss[k]) < 1e-9 for k in whole.log_loss)


def write_cache(folder, states, rows, part_size: int) -> None:
    """A score cache of `rows` (pair, annotator, orientation per row) over the pairs of `states`: token ids and texts
    that name the pair, chosen and rejected states in the row's own order."""
    pair, annotator, orientation = (np.asarray(c) for c in zip(*rows))
    swap = orientation < 0
    frame = pl.DataFrame({
        "row_id": np.arange(len(pair), dtype=np.int64), "pair_id": [f"p{g}" for g in pair],
        "annotator": [f"k{k}" for k in annotator],
        "prompt_ids": pl.Series([[int(g)] for g in pair], dtype=pl.List(pl.Int32)),
        "chosen_ids": pl.Series([[2 * int(g) + int(s)] for g, s in zip(pair, swap)], dtype=pl.List(pl.Int32)),
        "rejected_ids": pl.Series([[2 * int(g) + 1 - int(s)] for g, s in zip(pair, swap)], dtype=pl.List(pl.Int32)),
        "ref_chosen_logps": np.zeros(len(pair)), "ref_rejected_logps": np.zeros(len(pair)),
        "chosen_len": pl.Series([1] * len(pair), dtype=pl.Int32), "rejected_len": pl.Series([1] * len(pair),
                                                                                            dtype=pl.Int32),
        "truncated": [False] * len(pair), "prompt": [f"prompt {g}" for g in pair],
        "chosen": [f"answer {2 * g + s}" for g, s in zip(pair, swap)],
        "rejected": [f"answer {2 * g + 1 - s}" for g, s in zip(pair, swap)]})
    for layer, (first, second, prompt) in states.items():
        chosen = np.where(swap[:, None], second[pair], first[pair])
        rejected = np.where(swap[:, None], first[pair], second[pair])
        kind = pl.Array(pl.Float16, first.shape[1])
        frame = frame.with_columns(pl.Series(name, values, dtype=kind) for name, values in
                                   zip(schema.embedding_columns(layer), (prompt[pair], chosen, rejected)))
    key = schema.make_key(ref_model="synthetic", weights_sha="-", tokenizer_sha="-", chat_template_sha="-",
                          max_length=2, max_prompt_length=1, dtype="float16", backend="hf", backend_version="-",
                          dataset_sha="-", embed_layers=",".join(map(str, states)))
    num_parts = -(-frame.height // part_size)
    manifest = schema.open_cache(folder, key, {"part_size": part_size, "num_rows": frame.height,
                                               "num_parts": num_parts}, overwrite=False)
    for index in range(num_parts):
        schema.write_part(folder, manifest, index, frame.slice(index * part_size, part_size), [])
    schema.finish_cache(folder, manifest, [])


def several_labels(pairs: int, seed: int = 2):
    """Rows: every pair labelled by 1–3 of four annotators (each flipping 5–40%), the later labels of a pair
    further down the rows, some stating the reverse of its first row's order."""
    rng = np.random.default_rng(seed)
    flips = [0.05, 0.15, 0.25, 0.4]
    rows = [(g, int(rng.integers(4)), 1) for g in range(pairs)]
    for g in rng.choice(pairs, pairs // 2, replace=False):
        rows.append((int(g), int(rng.integers(4)), 1))
    return [(g, k, -1 if rng.random() < flips[k] else 1) for g, k, _ in rows]


def test_run_streamed_on_a_cache_read_part_by_part_is_run_on_the_whole_cache(tmp_path):
    states, _ = planted_states(240, seed=4)
    write_cache(tmp_path / "scores", states, several_labels(240), part_size=50)
    frame, key = schema.read_scores(tmp_path / "scores")
    cfg = EstimateConfig(components=8, prompt_components=3)
    whole = estimate.run(cfg, frame, key, "cache")
    streamed = estimate.run_streamed(cfg, tmp_path / "scores", "cache")
    assert streamed.model == whole.model
    columns = ["row_id", "pair_id", "annotator", "epoch"]
    assert streamed.posteriors.select(columns).equals(whole.posteriors.select(columns))
    for name in ("z", "w"):
        assert np.allclose(streamed.posteriors[name].to_numpy(), whole.posteriors[name].to_numpy(), rtol=0, atol=1e-7)
    assert streamed.annotators.select("annotator", "identified").equals(whole.annotators.select("annotator",
                                                                                               "identified"))
    assert np.allclose(streamed.annotators["eta"].to_numpy(), whole.annotators["eta"].to_numpy(), rtol=0, atol=1e-7)
    agreement = estimate.run_streamed(EstimateConfig(probe=False), tmp_path / "scores", "cache")
    alone = estimate.run(EstimateConfig(probe=False), frame, key, "cache")
    assert np.allclose(agreement.posteriors["w"].to_numpy(), alone.posteriors["w"].to_numpy(), rtol=0, atol=1e-12)


def test_a_pair_id_shared_by_other_responses_is_named_when_streamed(tmp_path):
    states, _ = planted_states(30, seed=5)
    rows = [(g, 0, 1) for g in range(30)]
    write_cache(tmp_path / "scores", states, rows, part_size=8)
    # relabel: row 20 now claims pair 3's id while holding pair 20's tokens
    folder = tmp_path / "scores"
    frame, key = schema.read_scores(folder)
    frame = frame.with_columns(pair_id=pl.when(pl.col("row_id") == 20).then(pl.lit("p3")).otherwise("pair_id"))
    other = tmp_path / "other"
    manifest = schema.open_cache(other, key, {"part_size": 8, "num_rows": 30, "num_parts": 4}, overwrite=False)
    for index in range(4):
        schema.write_part(other, manifest, index, frame.slice(index * 8, 8), [])
    schema.finish_cache(other, manifest, [])
    with pytest.raises(noise_inputs.NoiseInputError, match=r"row_id 20 and row_id 3 share pair_id 'p3'"):
        noise_inputs.read_streamed(other, tmp_path, "cache")


def test_inspect_noise_and_train_estimate_a_cache_without_reading_its_states_whole(tmp_path, monkeypatch):
    """`repo inspect-noise SCORES` and `repo train --robust` (epoch 0) take the streamed estimate: no reader holds
    every row's states at once (schema.read_scores is asked for the rows without them), and the posteriors are the
    estimate's on the whole cache."""
    from re_po.data import epoch_zero
    from re_po.data.pair_table import PairTable
    from re_po.stages import inspect_noise
    from re_po.stages.configs import InspectConfig

    states, _ = planted_states(240, seed=4)
    cache = tmp_path / "scores"
    write_cache(cache, states, several_labels(240), part_size=50)
    cfg = EstimateConfig(components=8, prompt_components=3)
    whole = estimate.run(cfg, *schema.read_scores(cache), "cache")
    read_whole, read_scores = [], schema.read_scores

    def recording(folder, expect=None, embeddings=True, token_ids=True):
        read_whole.append(embeddings)
        return read_scores(folder, expect, embeddings, token_ids)
    monkeypatch.setattr(schema, "read_scores", recording)

    out = inspect_noise.run(InspectConfig(run=cache, out_dir=tmp_path / "inspect", estimate=cfg))
    posteriors = pl.read_parquet(out / "posteriors.parquet")
    zero = epoch_zero.read_or_estimate(PairTable.read(cache, with_reference=True), tmp_path / "run", False, cache,
                                       None, cfg, "--robust-mode paper")
    assert read_whole and not any(read_whole)
    for found in (posteriors["w"].to_numpy(), zero.w.numpy()):
        assert np.allclose(found, whole.posteriors["w"].to_numpy(), rtol=0, atol=1e-7)
