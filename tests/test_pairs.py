"""data/pairs.py: every format and layout gives one normalized table; bad input names file, row, field."""
import json
from pathlib import Path

import polars as pl
import pytest

from re_po.data import pairs
from re_po.data.columns import Columns
from re_po.data.pairs import BadRowError, DataError, pair_values, read_pairs

PLAIN_ROWS = [
    {"prompt": "what is 2 + 2 ?", "chosen": "4", "rejected": "5", "annotator": "ann", "is_flipped": False},
    {"prompt": "what is 2 + 2 ?", "chosen": "5", "rejected": "4", "annotator": "bob", "is_flipped": True},
    {"prompt": "42", "chosen": "the sky is blue", "rejected": "the sky is red", "annotator": "ann",
     "is_flipped": False},
]
USER = {"role": "user", "content": "what is 2 + 2 ?"}
GOOD, BAD = {"role": "assistant", "content": "4"}, {"role": "assistant", "content": "5"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_table(path, rows):
    """Write rows in the format of path's suffix (polars' own writers, as users' tools would)."""
    frame = pl.DataFrame(rows)
    {".jsonl": frame.write_ndjson, ".json": lambda p: p.write_text(json.dumps(rows)),
     ".parquet": frame.write_parquet, ".csv": frame.write_csv}[path.suffix](path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_every_format_gives_the_same_table(tmp_path, suffix):
    read = read_pairs(write_table(tmp_path / f"pairs{suffix}", PLAIN_ROWS))
    table = read.table
    assert table.columns == ["row_id", "pair_id", "annotator", "prompt", "chosen", "rejected", "is_flipped"]
    assert table["row_id"].to_list() == [0, 1, 2]
    assert table["annotator"].to_list() == ["ann", "bob", "ann"]
    assert pair_values(table) == [(r["prompt"], r["chosen"], r["rejected"]) for r in PLAIN_ROWS]
    assert table["is_flipped"].to_list() == [False, True, False]  # the truth column survives, as booleans
    assert table["prompt"][2] == "42"  # a number-like text stays text, also in CSV
    assert not read.conversational and read.rejects == []
    expected_sha = read_pairs(write_table(tmp_path / "ref.jsonl", PLAIN_ROWS)).dataset_sha
    assert read.dataset_sha == expected_sha  # the fingerprint is of the rows, not of the file format


def test_pair_id_is_shared_by_every_label_of_a_pair(tmp_path):
    """Rows 0 and 1 label the same pair in opposite orders (two annotators): one pair id; row 2 another."""
    ids = read_pairs(write_jsonl(tmp_path / "p.jsonl", PLAIN_ROWS)).table["pair_id"].to_list()
    assert ids[0] == ids[1] != ids[2]
    assert len(ids[0]) == 16 and int(ids[0], 16) >= 0
    changed = [{**PLAIN_ROWS[0], "prompt": "what is 2 + 3 ?"}]
    assert read_pairs(write_jsonl(tmp_path / "q.jsonl", changed)).table["pair_id"][0] != ids[0]


def test_given_pair_id_and_annotator_columns(tmp_path):
    rows = [{"q": "hello", "good": "world", "bad": "no", "rater": 7, "pid": "p1", "pair_id_note": "x"}]
    read = read_pairs(write_jsonl(tmp_path / "p.jsonl", rows),
                      Columns(prompt="q", chosen="good", rejected="bad", annotator="rater", pair_id="pid"))
    assert read.table.row(0, named=True) == {"row_id": 0, "pair_id": "p1", "annotator": "7",
                                             "prompt": "hello", "chosen": "world", "rejected": "no",
                                             "pair_id_note": "x"}
    located = read.locate(BadRowError("empty response after truncation", "chosen"), 0)
    assert located.field == "good"  # errors found later (tokenizing) name the user's column too
    auto = read_pairs(write_jsonl(tmp_path / "a.jsonl", [{**PLAIN_ROWS[0], "pair_id": 12}]))
    assert auto.table["pair_id"][0] == "12" and auto.columns.pair_id == "pair_id"


def test_without_annotator_column_there_is_one_virtual_annotator(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "annotator"} for row in PLAIN_ROWS]
    read = read_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    assert read.table["annotator"].to_list() == ["default"] * 3 and read.columns.annotator is None
    assert read.repeated_labels == 1  # rows 0 and 1 label one pair: two labels of `default`, said by `repo score`


def test_shard_folder_is_read_in_sorted_order_with_stable_row_ids(tmp_path):
    folder = tmp_path / "shards"
    (folder / "b").mkdir(parents=True)
    # written out of order; nested; a hidden file and a README that are not data
    write_jsonl(folder / "b" / "part-0.jsonl", [PLAIN_ROWS[2]])
    write_jsonl(folder / "a-1.jsonl", [PLAIN_ROWS[1], {"prompt": "hello", "chosen": "", "rejected": "no"}])
    write_jsonl(folder / "a-0.jsonl", [PLAIN_ROWS[0]])
    write_jsonl(folder / ".hidden.jsonl", [PLAIN_ROWS[0]])
    (folder / "README.md").write_text("not data")
    read = read_pairs(folder, on_bad_row="skip")
    assert read.table["row_id"].to_list() == [0, 1, 3]  # row 2 (empty response) rejected, ids do not shift
    assert pair_values(read.table) == [(r["prompt"], r["chosen"], r["rejected"]) for r in PLAIN_ROWS]
    assert [(s.file.split("shards/")[1], s.first_row_id, s.num_rows) for s in read.shards] == [
        ("a-0.jsonl", 0, 1), ("a-1.jsonl", 1, 2), ("b/part-0.jsonl", 3, 1)]
    assert read.rejects == [pairs.Reject(2, str(folder / "a-1.jsonl"), "line 2", "chosen", "empty response")]
    located = read.locate(BadRowError("empty response after truncation", "rejected"), 3)
    assert str(located) == f"{folder / 'b' / 'part-0.jsonl'} line 1 (row_id 3), field 'rejected': " \
                           "empty response after truncation"


def test_conversational_explicit_prompt(tmp_path):
    rows = [{"prompt": [USER], "chosen": [GOOD], "rejected": [BAD], "is_flipped": True}]
    read = read_pairs(write_jsonl(tmp_path / "c.jsonl", rows))
    assert read.conversational and not read.implicit_prompt
    assert read.table.columns == ["row_id", "pair_id", "annotator", "prompt_json", "chosen_json",
                                  "rejected_json", "is_flipped"]
    assert pair_values(read.table) == [([USER], [GOOD], [BAD])]


def test_conversational_implicit_prompt_is_the_shared_prefix(tmp_path):
    system = {"role": "system", "content": "be good"}
    turn = [system, USER, GOOD, {"role": "user", "content": "please tell me more"}]
    rows = [{"chosen": turn + [{"role": "assistant", "content": "yes", "name": "bot"}],
             "rejected": turn + [{"role": "assistant", "content": "no"}]}]
    read = read_pairs(write_jsonl(tmp_path / "c.jsonl", rows))
    assert read.implicit_prompt
    # JSON Lines read through polars would add "name": None to every message; the stored text has no null keys
    assert pair_values(read.table) == [(turn, [{"role": "assistant", "content": "yes", "name": "bot"}],
                                        [{"role": "assistant", "content": "no"}])]
    # the input's own format is recoverable: full conversation = prompt + response
    prompt, chosen, rejected = pair_values(read.table)[0]
    assert (prompt + chosen, prompt + rejected) == (rows[0]["chosen"], rows[0]["rejected"])


def test_text_prompt_beside_message_lists_follows_trl(tmp_path):
    """UltraFeedback-binarized shape: a text prompt and full conversations; the prompt is split off the
    conversations and the text prompt column is carried untouched."""
    rows = [{"prompt": "what is 2 + 2 ?", "chosen": [USER, GOOD], "rejected": [USER, BAD]}]
    read = read_pairs(write_table(tmp_path / "u.parquet", rows))
    assert read.implicit_prompt
    assert pair_values(read.table) == [([USER], [GOOD], [BAD])]
    assert read.table["prompt"].to_list() == ["what is 2 + 2 ?"]


def test_explicit_prompt_repeated_in_both_responses_is_split_off(tmp_path):
    rows = [{"prompt": [USER], "chosen": [USER, GOOD], "rejected": [USER, BAD]}]
    assert pair_values(read_pairs(write_jsonl(tmp_path / "r.jsonl", rows)).table) == [([USER], [GOOD], [BAD])]


def test_conversational_parquet_round_trip(tmp_path):
    """List(Struct) input in Parquet reads like JSON Lines; the stored table survives Parquet unchanged."""
    rows = [{"prompt": [USER], "chosen": [GOOD], "rejected": [BAD], "meta": {"source": "x", "n": 1}}] * 2
    from_parquet = read_pairs(write_table(tmp_path / "c.parquet", rows))
    from_jsonl = read_pairs(write_jsonl(tmp_path / "c.jsonl", rows))
    assert from_parquet.table.equals(from_jsonl.table)
    from_parquet.table.write_parquet(tmp_path / "stored.parquet")
    assert pl.read_parquet(tmp_path / "stored.parquet").equals(from_parquet.table)
    assert from_parquet.table["meta"].to_list() == [{"source": "x", "n": 1}] * 2


def test_json_lines_keep_line_separators_inside_strings(tmp_path):
    rows = [{**PLAIN_ROWS[0], "chosen": "4\u2028 really"}]
    assert read_pairs(write_jsonl(tmp_path / "p.jsonl", rows)).table["chosen"][0] == "4\u2028 really"


def test_dataset_sha_follows_the_content(tmp_path):
    base = read_pairs(write_jsonl(tmp_path / "a.jsonl", PLAIN_ROWS)).dataset_sha
    assert read_pairs(write_jsonl(tmp_path / "b.jsonl", PLAIN_ROWS)).dataset_sha == base
    changed = PLAIN_ROWS[:2] + [{**PLAIN_ROWS[2], "is_flipped": True}]
    assert read_pairs(write_jsonl(tmp_path / "c.jsonl", changed)).dataset_sha != base


# ---- bad input: the message names file, row and field ---------------------------------------------------

def bad_row_message(tmp_path, rows, columns=Columns()):
    with pytest.raises(BadRowError) as caught:
        read_pairs(write_jsonl(tmp_path / "bad.jsonl", rows), columns)
    return str(caught.value)


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "hello", "chosen": "", "rejected": "no"},
     "line 2 (row_id 1), field 'chosen': empty response"),
    ({"prompt": "hello", "chosen": "yes", "rejected": 3},
     "line 2 (row_id 1), field 'rejected': expected a string, got int"),
    ({"prompt": None, "chosen": "yes", "rejected": "no"},
     "line 2 (row_id 1), field 'prompt': missing value (null)"),
    ({"prompt": "hello", "chosen": [GOOD], "rejected": "no"},
     "line 2 (row_id 1), field 'chosen': expected a string, got a list"),
    ({"prompt": "hello", "chosen": "yes", "rejected": "no", "annotator": ""},
     "line 2 (row_id 1), field 'annotator': empty value"),
])
def test_bad_plain_rows(tmp_path, row, expected):
    first = {"prompt": "hello", "chosen": "yes", "rejected": "no", "annotator": "a"}
    assert bad_row_message(tmp_path, [first, row]) == f"{tmp_path / 'bad.jsonl'} {expected}"


@pytest.mark.parametrize("row, expected", [
    ({"chosen": [USER, GOOD], "rejected": [{**USER, "content": "hello"}, BAD]},
     "field 'chosen': mismatched message lists: chosen and rejected share no leading message"),
    ({"chosen": [USER, GOOD], "rejected": [USER, GOOD, BAD]}, "field 'chosen': empty response"),
    ({"chosen": [USER, {"role": "assistant"}], "rejected": [USER, BAD]},
     "field 'chosen[1].content': missing value (null)"),
    ({"chosen": [USER, {"role": "assistant", "content": ["4"]}], "rejected": [USER, BAD]},
     "field 'chosen[1].content': expected a string, got a list"),
    ({"chosen": [USER, "4"], "rejected": [USER, BAD]},
     "field 'chosen[1]': expected a message {role, content}"),
    ({"chosen": [USER, {"role": "assistant", "content": ""}], "rejected": [USER, BAD]},
     "field 'chosen': empty response"),
])
def test_bad_conversational_rows(tmp_path, row, expected):
    message = bad_row_message(tmp_path, [row])
    assert message.startswith(f"{tmp_path / 'bad.jsonl'} line 1 (row_id 0), ") and expected in message


def test_explicit_prompt_repeated_in_one_response_only(tmp_path):
    message = bad_row_message(tmp_path, [{"prompt": [USER], "chosen": [GOOD], "rejected": [USER, BAD]}])
    assert "field 'rejected': mismatched message lists: rejected starts with the prompt's messages" in message


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PLAIN_ROWS[0]) + "\n\n" + '{"prompt": "hello", "chosen": \n' + "[1]\n")
    with pytest.raises(BadRowError, match=r"bad\.jsonl line 3 \(row_id 1\): malformed JSON at column 31"):
        read_pairs(path)
    read = read_pairs(path, on_bad_row="skip")
    assert read.table["row_id"].to_list() == [0]
    assert [(r.row_id, r.position, r.field, r.reason) for r in read.rejects] == [
        (1, "line 3", None, "malformed JSON at column 31: Expecting value"),
        (2, "line 4", None, "expected a JSON object, got a list")]


def test_skip_keeps_good_rows_and_reports_every_bad_one(tmp_path):
    rows = [PLAIN_ROWS[0], {**PLAIN_ROWS[1], "chosen": ""}, PLAIN_ROWS[2],
            {**PLAIN_ROWS[0], "annotator": None}]
    read = read_pairs(write_jsonl(tmp_path / "p.jsonl", rows), on_bad_row="skip")
    assert read.table["row_id"].to_list() == [0, 2]
    assert read.table["is_flipped"].to_list() == [False, False]  # carried values stay with their rows
    assert [(r.row_id, r.field, r.reason) for r in read.rejects] == [
        (1, "chosen", "empty response"), (3, "annotator", "missing value (null)")]
    assert len(read.table) + len(read.rejects) == len(rows)  # nothing silently dropped


def test_non_string_parquet_column(tmp_path):
    path = write_table(tmp_path / "n.parquet", [{"prompt": "hello", "chosen": 1, "rejected": 2}])
    with pytest.raises(BadRowError, match=r"n\.parquet row 0 \(row_id 0\), field 'chosen': expected a string "
                                          r"or a list of messages, got int"):
        read_pairs(path)


def test_missing_columns_lists_the_columns_there_are(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "hello", "chosen": "yes", "rejected": "no"}])
    with pytest.raises(DataError, match=r"m\.jsonl: missing column\(s\) 'prompt'; the columns there are: "
                                        r"'question', 'chosen', 'rejected'"):
        read_pairs(path)
    with pytest.raises(DataError, match=r"missing column\(s\) 'good', 'rater'"):
        read_pairs(path, Columns(prompt="question", chosen="good", annotator="rater"))


def test_column_clashing_with_added_columns(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{**PLAIN_ROWS[0], "row_id": 5}])
    with pytest.raises(DataError, match=r"c\.jsonl: input column\(s\) 'row_id' clash"):
        read_pairs(path)


def test_source_problems(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        read_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="unsupported file type"):
        read_pairs(write_jsonl(tmp_path / "p.txt", PLAIN_ROWS))
    (tmp_path / "mixed").mkdir()
    write_table(tmp_path / "mixed" / "a.parquet", PLAIN_ROWS)
    (tmp_path / "mixed" / "dataset_info.json").write_text("{}")
    with pytest.raises(DataError, match=r"mixes data formats \['json', 'parquet'\]"):
        read_pairs(tmp_path / "mixed")
    (tmp_path / "array.json").write_text('[{"prompt": "a",\n "chosen": }]')
    with pytest.raises(DataError, match=r"array\.json: malformed JSON at line 2 column 12"):
        read_pairs(tmp_path / "array.json", on_bad_row="skip")  # a broken array is not a row: never skipped
    with pytest.raises(ValueError, match="on_bad_row"):
        read_pairs(tmp_path / "array.json", on_bad_row="drop")


def test_hf_path_with_hub_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hf://datasets/owner/name: hf:// paths are read from the Hugging "
                                        "Face Hub, but HF_HUB_OFFLINE is set"):
        read_pairs("hf://datasets/owner/name")
    with pytest.raises(DataError, match="^hf://datasets/owner/name: hf:// paths"):
        read_pairs(Path("hf://datasets/owner/name"))  # a Path keeps one slash of "//"


def test_hf_path_unreachable_says_so(monkeypatch):
    """polars ignores HF_HUB_OFFLINE and HF_ENDPOINT; its request error becomes a plain one (no network: the
    reader is replaced by one failing the way polars does without a route to the Hub)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []

    def unreachable(path, **kwargs):
        asked.append(path)
        raise pl.exceptions.ComputeError(f"error sending request for url ({path})")

    monkeypatch.setattr(pl, "read_parquet", unreachable)
    with pytest.raises(DataError, match=r"hf://datasets/owner/name: cannot read it from the Hugging Face Hub "
                                        r"\(is the Hub reachable from here"):
        read_pairs("hf://datasets/owner/name")
    assert asked == ["hf://datasets/owner/name/**/*.parquet"]


def test_empty_shards_hold_no_rows_and_an_empty_source_is_refused(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.jsonl").write_text("")
    write_jsonl(folder / "b.jsonl", PLAIN_ROWS[:1])
    assert read_pairs(folder).table["row_id"].to_list() == [0]
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        read_pairs(write_jsonl(tmp_path / "empty.jsonl", []))


def test_every_row_bad(tmp_path):
    """Skipping every row leaves an empty table with the usual columns; in error mode a file of malformed
    lines reports its first line, not missing columns."""
    path = tmp_path / "broken.jsonl"
    path.write_text("{oops\n[1]\n")
    read = read_pairs(path, on_bad_row="skip")
    assert read.table.columns == ["row_id", "pair_id", "annotator", "prompt", "chosen", "rejected"]
    assert read.table.height == 0 and [r.row_id for r in read.rejects] == [0, 1]
    with pytest.raises(BadRowError, match=r"broken\.jsonl line 1 \(row_id 0\): malformed JSON"):
        read_pairs(path)


def test_an_annotator_labelling_one_pair_id_twice_must_see_the_same_pair(tmp_path):
    pair = {"pair_id": "p1", "prompt": "what is 2 + 2 ?", "chosen": "4", "rejected": "5", "annotator": "ann"}
    other = {**pair, "rejected": "22"}  # another pair under the same id and annotator
    second_shard = tmp_path / "shards"
    second_shard.mkdir()
    write_jsonl(second_shard / "a.jsonl", [pair, {**other, "annotator": "bob"}])
    write_jsonl(second_shard / "b.jsonl", [other])
    with pytest.raises(BadRowError, match=r"b\.jsonl line 1 \(row_id 2\), field 'pair_id': annotator 'ann' "
                                          r"labels pair_id 'p1' here and at row_id 0 with other texts"):
        read_pairs(second_shard)
    read = read_pairs(second_shard, on_bad_row="skip")
    assert read.table["row_id"].to_list() == [0, 1]  # bob's label is the estimator's business (one truth)
    assert [(r.row_id, r.field) for r in read.rejects] == [(2, "pair_id")]


def test_one_annotator_labelling_one_pair_twice_is_refused_naming_both_rows(tmp_path):
    """Either way round: the repeat would count as a second, independent label of the pair (issue 25)."""
    pair = {"prompt": "what is 2 + 2 ?", "chosen": "4", "rejected": "5", "annotator": "ann"}
    write_jsonl(tmp_path / "pairs.jsonl", [pair, {**pair, "annotator": "bob"}, {**pair, "chosen": "5", "rejected": "4"}])
    with pytest.raises(BadRowError, match=r"pairs\.jsonl line 3 \(row_id 2\), field 'annotator': annotator 'ann' "
                                          r"labelled this pair already at row_id 0; keep one label per annotator"):
        read_pairs(tmp_path / "pairs.jsonl")
    read = read_pairs(tmp_path / "pairs.jsonl", on_bad_row="skip")
    assert read.table["row_id"].to_list() == [0, 1] and [r.row_id for r in read.rejects] == [2]
    assert read.repeated_labels == 0


def test_sample_pairs_keeps_every_label_of_the_pairs_drawn_in_input_order():
    """tables.sample_pairs against a draw made by hand: whole pairs, their rows in input order, seeded."""
    from re_po.data.tables import sample_pairs
    df = pl.DataFrame({"pair_id": ["a", "b", "a", "c", "d", "b", "c"], "row": range(7)})
    drawn = sample_pairs(df, 2, seed=3)
    chosen = set(df["pair_id"].unique(maintain_order=True).sample(2, seed=3))
    assert drawn["row"].to_list() == [r for p, r in zip(df["pair_id"], df["row"]) if p in chosen]
    assert set(drawn["pair_id"]) == chosen and drawn.equals(sample_pairs(df, 2, seed=3))
    assert sample_pairs(df, 0).equals(df) and sample_pairs(df, 4).equals(df)
