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
    sentences = every.select(pl.col("pair_id").str.split("+")).to_series().explode()
    assert set(sentences) == set(every["chosen_id"]) | set(every["rejected_id"])
    assert every["pair_id"].n_unique() * 2 == sentences.n_unique()          # one pair per sentence
    assert splits["heldout"]["pair_id"].n_unique() == splits["heldout"].height   # held out: one label per pair


def test_labels_of_one_pair_are_distinct_groups_on_the_same_prompt_and_sentences(splits):
    labels = pl.concat(splits.values()).group_by("pair_id").agg(
        pl.col("annotator").n_unique().alias("groups"), pl.len().alias("labels"),
        pl.col("prompt").n_unique().alias("prompts"), pl.col("is_flipped").n_unique().alias("truth_sides"))
    assert (labels["groups"] == labels["labels"]).all() and (labels["prompts"] == 1).all()
    assert labels["labels"].max() == 3 and (labels["labels"] > 1).mean() > 0.8   # mostly several labels
    # the truth is one order per pair: two labels disagree with each other exactly when one of them is flipped
    rows = splits["train"]
    first = rows.group_by("pair_id").agg(pl.col("chosen_id").first().alias("first_chosen"),
                                         pl.col("is_flipped").first().alias("first_flipped"))
    rows = rows.join(first, on="pair_id")
    same_order = rows["chosen_id"] == rows["first_chosen"]
    assert (same_order == (rows["is_flipped"] == rows["first_flipped"])).all()


def test_labels_and_truth_follow_the_scores(splits):
    every = pl.concat(splits.values())
    sign = pl.when(pl.col("polarity") == "positive").then(1.0).otherwise(-1.0)
    label = every.select(sign * (pl.col("chosen_label_score") - pl.col("rejected_label_score"))).to_series()
    assert (label > 0).all()                                 # chosen is what the label preferred; no ties
    truth = every.select(sign * (pl.col("chosen_consensus") - pl.col("rejected_consensus"))).to_series()
    assert every["is_flipped"].to_list() == (truth < 0).to_list()
    gap = truth.abs()
    assert gap.min() >= 0.5 - 1e-4 and gap.max() < 1.5 + 1e-4   # the documented consensus band (rounded to 1e-4)
    assert every["prompt"].str.starts_with("Write a positive ").all()   # --polarity positive, the default
    assert (every["polarity"] == "positive").all()


def test_readme_reliabilities_match_the_files_and_differ(splits):
    table = re.findall(r"^\| (train|heldout|pool) \| (\S+) \| (\d+) \| ([\d.]+) \|$",
                       (SAMPLE / "README.md").read_text(), re.M)
    assert len(table) == 9
    for split, annotator, labels, accuracy in table:
        group = splits[split].filter(pl.col("annotator") == annotator)
        assert group.height == int(labels)
        assert abs((1 - group["is_flipped"].mean()) - float(accuracy)) < 5e-4
    every = pl.concat([splits["train"], splits["pool"]])
    accuracy = dict(every.group_by("annotator").agg(accuracy=1 - pl.col("is_flipped").mean()).iter_rows())
    assert accuracy["panel-of-3"] - max(accuracy["rater-a"], accuracy["rater-b"]) > 0.03   # a panel is more reliable
    assert splits["train"]["pair_id"].n_unique() == 280 and splits["heldout"].height == 300


def test_sizes_stay_small():
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 5_000_000


def test_pairing_respects_the_gap_band_and_uses_each_sentence_once():
    build = load_builder()
    rng = random.Random(0)
    means = [rng.uniform(-3, 3) for _ in range(300)]     # each sentence: its mean plus rater noise
    sentences = [build.Sentence(f"movie-{i}", "movie", f"s{i}", tuple(round(m + rng.gauss(0, 1)) for _ in range(25)))
                 for i, m in enumerate(means)]
    cons = {s.id: build.consensus(s) for s in sentences}
    pairs = build.pair_sentences(sentences, cons, random.Random(1), min_gap=0.5, max_gap=1.5, min_z=2.0)
    assert len(pairs) > 50
    used = [s.id for pair in pairs for s in pair]
    assert len(used) == len(set(used))
    for a, b in pairs:
        gap = abs(cons[a.id].mean - cons[b.id].mean)
        assert 0.5 <= gap < 1.5 and gap >= 2.0 * (cons[a.id].sem ** 2 + cons[b.id].sem ** 2) ** 0.5


def test_each_group_reads_its_own_raters_the_consensus_none_of_them_and_ties_are_dropped():
    build = load_builder()
    #                                         rater-a  rater-b  panel-of-3  | consensus
    a = build.Sentence("tweet-1", "tweet", "yay", (4, 0, 0, 0, 0, 1, 1, 1, 1))
    b = build.Sentence("tweet-2", "tweet", "meh", (0, 4, 4, 4, 4, 3, 3, 3, 3))
    assert build.consensus(a).mean == 1.0 and build.consensus(b).mean == 3.0
    assert (a.label_score("rater-a"), a.label_score("rater-b"), b.label_score("panel-of-3")) == (4.0, 0.0, 4.0)
    cons = {s.id: build.consensus(s) for s in (a, b)}
    row = build.label_pair(a, b, "rater-a", True, cons)      # 4 vs 0, consensus 1 vs 3: wrong
    assert (row["chosen"], row["is_flipped"]) == ("yay", True)
    row = build.label_pair(a, b, "rater-b", True, cons)      # 0 vs 4 agrees with the consensus
    assert (row["chosen"], row["is_flipped"]) == ("meh", False)
    row = build.label_pair(a, b, "panel-of-3", False, cons)  # negative prompt: the lower one is chosen
    assert (row["chosen"], row["is_flipped"]) == ("yay", False)
    tie = build.Sentence("tweet-3", "tweet", "hm", (4, 2, 2, 2, 2, 0, 0, 0, 0))
    cons[tie.id] = build.consensus(tie)
    assert build.label_pair(a, tie, "rater-a", True, cons) is None
