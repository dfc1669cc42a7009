"""make-noisy: exact flip counts per annotator, consistent truth columns, every format round trip."""
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from re_po.data.tables import read_table, write_table
from re_po.stages.configs import MakeNoisyConfig, parse_rates
from re_po.stages.make_noisy import run

SAMPLE_TRAIN = Path(__file__).resolve().parents[1] / "data" / "sample" / "train.jsonl"


def plain_pairs(n: int) -> pl.DataFrame:
    return pl.DataFrame({
        "prompt": [f"q{i}" for i in range(n)],
        "chosen": [f"good {i}" for i in range(n)],
        "rejected": [f"bad {i}" for i in range(n)],
        "chosen_score": [float(i) for i in range(n)],
        "rejected_score": [-float(i) for i in range(n)],
    })


def conversational_pairs(n: int) -> pl.DataFrame:
    def turns(text: str) -> list[dict]:
        return [{"role": "user", "content": "hi"}, {"role": "assistant", "content": text}]
    return pl.DataFrame({"chosen": [turns(f"good {i}") for i in range(n)],
                         "rejected": [turns(f"bad {i}") for i in range(n)]})


def noisy(tmp_path: Path, df: pl.DataFrame, name: str = "out.jsonl", source: str = "in.jsonl", **cfg) -> pl.DataFrame:
    write_table(df, tmp_path / source)
    return read_table(run(MakeNoisyConfig(source=tmp_path / source, target=tmp_path / name, **cfg)))


def assert_swapped_exactly_where_flagged(before: pl.DataFrame, after: pl.DataFrame) -> None:
    flip = after["injected_flip"].to_list()
    for a, b in [("chosen", "rejected")] + [(c, "rejected" + c[6:]) for c in before.columns if c.startswith("chosen_")]:
        old_a, old_b = before[a].to_list(), before[b].to_list()
        assert after[a].to_list() == [y if f else x for x, y, f in zip(old_a, old_b, flip)]
        assert after[b].to_list() == [x if f else y for x, y, f in zip(old_a, old_b, flip)]


def test_assigned_annotators_get_exact_flip_counts(tmp_path):
    before = plain_pairs(103)
    after = noisy(tmp_path, before, annotators={"a": 0.0, "b": 0.4, "c": 0.2}, seed=3)
    sizes = Counter(after["annotator"])
    assert sorted(sizes.values()) == [34, 34, 35]          # round-robin: sizes differ by at most one
    flips = Counter(a for a, f in zip(after["annotator"], after["injected_flip"]) if f)
    assert flips == Counter({"b": round(0.4 * sizes["b"]), "c": round(0.2 * sizes["c"])})
    assert after["is_flipped"].to_list() == after["injected_flip"].to_list()   # no truth column before
    assert_swapped_exactly_where_flagged(before, after)


def test_same_seed_same_flips_other_seed_other_flips(tmp_path):
    runs = [noisy(tmp_path, plain_pairs(200), f"o{s}{i}.jsonl", flip_rate=0.3, seed=s) for i, s in enumerate([5, 5, 6])]
    assert runs[0].equals(runs[1])
    assert runs[0]["injected_flip"].to_list() != runs[2]["injected_flip"].to_list()
    assert all(r["injected_flip"].sum() == 60 for r in runs)


def test_flip_rate_applies_per_existing_annotator_and_xors_existing_truth(tmp_path):
    before = plain_pairs(90).with_columns(
        annotator=pl.Series(["x", "y", "y"] * 30), is_flipped=pl.Series([i % 4 == 0 for i in range(90)]))
    after = noisy(tmp_path, before, flip_rate=0.25, seed=0)
    assert after["annotator"].to_list() == before["annotator"].to_list()
    flips = Counter(a for a, f in zip(after["annotator"], after["injected_flip"]) if f)
    assert flips == {"x": round(0.25 * 30), "y": round(0.25 * 60)}
    assert after["is_flipped"].to_list() == [t != f for t, f in zip(before["is_flipped"], after["injected_flip"])]
    assert_swapped_exactly_where_flagged(before, after)


def test_twice_undoes_itself_in_the_truth(tmp_path):
    """Flipping every row twice restores the data; both truth columns say so (XOR)."""
    once = noisy(tmp_path, plain_pairs(10), "once.jsonl", flip_rate=1.0)
    twice = noisy(tmp_path, once, "twice.jsonl", source="once_in.jsonl", flip_rate=1.0)
    assert twice.drop("injected_flip", "is_flipped").equals(plain_pairs(10))
    assert not twice["injected_flip"].any() and not twice["is_flipped"].any()


def test_annotators_must_match_those_in_the_data_unless_reassigned(tmp_path):
    before = plain_pairs(20).with_columns(annotator=pl.Series(["x", "y"] * 10))
    with pytest.raises(ValueError, match=r"\['x', 'y'\] differ from those given \['x', 'z'\]"):
        noisy(tmp_path, before, annotators={"x": 0.1, "z": 0.2})
    mapped = noisy(tmp_path, before, "m.jsonl", annotators={"x": 0.5, "y": 0.0})
    assert Counter(a for a, f in zip(mapped["annotator"], mapped["injected_flip"]) if f) == {"x": 5}
    reassigned = noisy(tmp_path, before, "r.jsonl", annotators={"p": 0.2, "q": 0.4, "r": 0.6}, reassign_annotators=True)
    assert reassigned["source_annotator"].to_list() == before["annotator"].to_list()
    assert set(reassigned["annotator"]) == {"p", "q", "r"}


def test_sample_data_truth_stays_consistent_with_the_consensus(tmp_path):
    """Independent check: is_flipped after injection equals the consensus order recomputed from the
    per-response consensus columns, which travel with their responses."""
    before = read_table(SAMPLE_TRAIN)
    after = noisy(tmp_path, before, flip_rate=0.2, seed=1)
    sign = pl.when(pl.col("polarity") == "positive").then(1.0).otherwise(-1.0)
    disagrees = after.select((sign * (pl.col("chosen_consensus") - pl.col("rejected_consensus")) < 0))
    assert after["is_flipped"].to_list() == disagrees.to_series().to_list()
    labels = before["annotator"].value_counts()["count"].to_list()   # 20% of each annotator group's labels
    assert after["injected_flip"].sum() == sum(round(0.2 * n) for n in labels)


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet", ".csv"])
def test_round_trip_plain(tmp_path, ext):
    before = plain_pairs(12).with_columns(annotator=pl.Series(["a", "b"] * 6), is_flipped=pl.Series([False] * 12))
    after = noisy(tmp_path, before, "out" + ext, source="in" + ext, flip_rate=0.5, seed=2)
    assert after.columns == before.columns + ["injected_flip"]
    assert after["injected_flip"].sum() == 6
    assert_swapped_exactly_where_flagged(before, after)


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet"])
def test_round_trip_conversational(tmp_path, ext):
    before = conversational_pairs(8)
    after = noisy(tmp_path, before, "out" + ext, source="in" + ext, annotators={"a": 0.5, "b": 0.0}, seed=0)
    assert after["injected_flip"].sum() == 2
    assert_swapped_exactly_where_flagged(before, after)


def test_errors_name_file_row_and_field(tmp_path):
    with pytest.raises(ValueError, match="CSV cannot hold the nested columns"):
        noisy(tmp_path, conversational_pairs(4), "out.csv", flip_rate=0.5)
    with pytest.raises(ValueError, match=r"in.jsonl: row 2: field 'is_flipped' holds 7; expected true/false or 0/1"):
        noisy(tmp_path, plain_pairs(4).with_columns(is_flipped=pl.Series([0, 1, 7, 0])), flip_rate=0.5)
    with pytest.raises(ValueError, match=r"row 1: field 'annotator' is empty"):
        noisy(tmp_path, plain_pairs(3).with_columns(annotator=pl.Series(["a", None, "a"])), flip_rate=0.5)
    with pytest.raises(ValueError, match=r"'chosen_score' \(Float64\) and 'rejected_score' \(String\) differ"):
        noisy(tmp_path, plain_pairs(3).with_columns(rejected_score=pl.lit("x")), flip_rate=0.5)
    with pytest.raises(ValueError, match=r"no column 'rejected'; the columns are"):
        noisy(tmp_path, plain_pairs(3).drop("rejected"), flip_rate=0.5)
    with pytest.raises(ValueError, match=r"unknown table format '.txt'"):
        noisy(tmp_path, plain_pairs(3), "out.txt", flip_rate=0.5)


def test_config_and_rate_spec_errors():
    with pytest.raises(ValueError, match="exactly one of flip_rate and annotators"):
        MakeNoisyConfig(source=Path("i"), target=Path("o"))
    with pytest.raises(ValueError, match=r"flip rate of 'b' must lie in \[0, 1\], got 1.5"):
        MakeNoisyConfig(source=Path("i"), target=Path("o"), annotators={"a": 0.1, "b": 1.5})
    assert parse_rates("a:0.0, b:0.4,team:x:0.2") == {"a": 0.0, "b": 0.4, "team:x": 0.2}
    for bad in ("a", "a:x", ":0.2", "a:0.1,a:0.2"):
        with pytest.raises(ValueError, match="is not a new name:rate"):
            parse_rates(bad)
