"""The bundled data in data/sample/ keeps the promises its README makes, and the builder's rules hold."""
import importlib.util
import random
import re
import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
SPLITS = ("train", "heldout", "pool")


def load_builder():
    spec = importlib.util.spec_from_file_location("build_sample_data", ROOT / "bench" / "build_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def splits() -> dict[str, pl.DataFrame]:
    return {name: pl.read_ndjson(SAMPLE / f"{name}.jsonl") for name in SPLITS}


def test_splits_are_disjoint_by_sentence(splits):
    ids = {name: set(df["chosen_id"]) | set(df["rejected_id"]) for name, df in splits.items()}
    texts = {name: set(df["chosen"].str.to_lowercase()) | set(df["rejected"].str.to_lowercase())
             for name, df in splits.items()}
    for a, b in [("train", "heldout"), ("train", "pool"), ("heldout", "pool")]:
        assert not ids[a] & ids[b] and not texts[a] & texts[b]
    every = pl.concat(splits.values())
    assert every["pair_id"].n_unique() == every.height
    assert every.height * 2 == len(set(every["chosen_id"]) | set(every["rejected_id"]))   # one pair per sentence


def test_labels_and_truth_follow_the_scores(splits):
    every = pl.concat(splits.values())
    sign = pl.when(pl.col("polarity") == "positive").then(1.0).otherwise(-1.0)
    label = every.select(sign * (pl.col("chosen_label_score") - pl.col("rejected_label_score"))).to_series()
    assert (label > 0).all()                                 # chosen is what the label preferred; no ties
    truth = every.select(sign * (pl.col("chosen_consensus") - pl.col("rejected_consensus"))).to_series()
    assert every["is_flipped"].to_list() == (truth < 0).to_list()
    gap = truth.abs()
    assert gap.min() >= 0.5 - 1e-4 and gap.max() < 1.5 + 1e-4   # the documented consensus band (rounded to 1e-4)
    assert every["prompt"].str.starts_with("Write a ").all()
    assert every.select(pl.col("prompt").str.contains(pl.col("polarity"))).to_series().all()


def test_readme_reliabilities_match_the_files_and_differ(splits):
    table = re.findall(r"^\| (train|heldout|pool) \| (\S+) \| (\d+) \| ([\d.]+) \|$",
                       (SAMPLE / "README.md").read_text(), re.M)
    assert len(table) == 6
    for split, annotator, pairs, accuracy in table:
        group = splits[split].filter(pl.col("annotator") == annotator)
        assert group.height == int(pairs)
        assert abs((1 - group["is_flipped"].mean()) - float(accuracy)) < 5e-4
    train = splits["train"].group_by("annotator").agg(accuracy=1 - pl.col("is_flipped").mean())
    accuracy = dict(train.iter_rows())
    assert accuracy["panel-of-5"] - accuracy["one-rater"] > 0.03      # a panel is measurably more reliable
    assert splits["train"].height == 800 and splits["heldout"].height == 304


def test_sizes_stay_small():
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 5_000_000


def test_pairing_respects_the_gap_band_and_uses_each_sentence_once():
    build = load_builder()
    rng = random.Random(0)
    means = [rng.uniform(-3, 3) for _ in range(300)]     # each sentence: its mean plus rater noise
    sentences = [build.Sentence(f"movie-{i}", "movie", f"s{i}", tuple(round(m + rng.gauss(0, 1)) for _ in range(25)))
                 for i, m in enumerate(means)]
    cons = {s.id: build.consensus(s, panel_size=5) for s in sentences}
    pairs = build.pair_sentences(sentences, cons, random.Random(1), min_gap=0.5, max_gap=1.5, min_z=2.0)
    assert len(pairs) > 50
    used = [s.id for pair in pairs for s in pair]
    assert len(used) == len(set(used))
    for a, b in pairs:
        gap = abs(cons[a.id].mean - cons[b.id].mean)
        assert 0.5 <= gap < 1.5 and gap >= 2.0 * (cons[a.id].sem ** 2 + cons[b.id].sem ** 2) ** 0.5


def test_consensus_excludes_the_label_raters_and_ties_are_dropped():
    build = load_builder()
    a = build.Sentence("tweet-1", "tweet", "yay", (4, 0, 0, 0, 0, 1, 1, 1, 1))
    b = build.Sentence("tweet-2", "tweet", "meh", (0, 4, 4, 4, 4, 3, 3, 3, 3))
    assert build.consensus(a, 5).mean == 1.0 and build.consensus(b, 5).mean == 3.0
    cons = {s.id: build.consensus(s, 5) for s in (a, b)}
    row = build.label_pair(a, b, build.ONE_RATER, True, cons, 5)   # one rater: 4 vs 0, consensus 1 vs 3
    assert (row["chosen"], row["is_flipped"]) == ("yay", True)
    row = build.label_pair(a, b, build.PANEL, True, cons, 5)       # panel: 0.8 vs 3.2 agrees with consensus
    assert (row["chosen"], row["is_flipped"]) == ("meh", False)
    row = build.label_pair(a, b, build.PANEL, False, cons, 5)      # negative prompt: the lower one is chosen
    assert (row["chosen"], row["is_flipped"]) == ("yay", False)
    tie = build.Sentence("tweet-3", "tweet", "hm", (4, 2, 2, 2, 2, 0, 0, 0, 0))
    cons[tie.id] = build.consensus(tie, 5)
    assert build.label_pair(a, tie, build.ONE_RATER, True, cons, 5) is None
