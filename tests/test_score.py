"""Stage one with the hf backend: the log-prob reduction, the cache, resumption and bad input."""
import importlib.util
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from conftest import WORDS, build_word_tokenizer, subprocess_env
from transformers import LlamaConfig, LlamaForCausalLM

from re_po.data import parts, schema
from re_po.data.scoring import ScoreConfig, choose_backend, run
from re_po.pipeline.batching import length_batches
from re_po.pipeline.logprobs import pack, response_logps
from re_po.stages.configs import Backend


def peaky_llama(seed: int = 0) -> LlamaForCausalLM:
    """A tiny Llama whose next-token distributions are far from uniform (large init), so that scoring
    the wrong position or token changes a log-prob by nats, not by rounding error."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, initializer_range=0.5, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def random_sequences(count: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(seed)
    prompts = [[2] + [rng.randrange(4, 64) for _ in range(rng.randrange(0, 12))] for _ in range(count)]
    responses = [[rng.randrange(4, 64) for _ in range(rng.randrange(1, 10))] for _ in range(count)]
    return prompts, responses


def brute_force_logps(model, prompt: list[int], response: list[int]) -> float:
    """Full float64 forward of one unpadded sequence, log_softmax over every position, then the sum of
    log p(token k | tokens < k) over the response positions k."""
    ids = prompt + response
    double = LlamaForCausalLM(model.config).double().eval()
    double.load_state_dict(model.state_dict())
    with torch.no_grad():
        logp = torch.log_softmax(double(torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(logp[k - 1, ids[k]].item() for k in range(len(prompt), len(ids)))


# --- stage one end to end (hf backend) -----------------------------------------------------------------



@pytest.fixture(scope="module")
def peaky_model_dir(tmp_path_factory) -> Path:
    """peaky_llama and the word tokenizer saved as a model folder."""
    path = tmp_path_factory.mktemp("peaky_llama")
    tokenizer = build_word_tokenizer()
    model = peaky_llama()
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(low, high)))


def write_pairs(path: Path, count: int, seed: int = 0) -> Path:
    """JSON Lines pairs of random words; every 5th row repeats the row before with another annotator and
    every 7th swaps it (another annotator too), so pairs are shared between rows (scored once, stored per row)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        row = {"prompt": sentence(rng, 1, 11), "chosen": sentence(rng, 1, 10), "rejected": sentence(rng, 1, 10),
               "annotator": f"a{i % 3}", "truth": i % 2 == 0}
        if i % 5 == 4:
            row = {**rows[-1], "annotator": "again"}
        if i % 7 == 6:
            row = {**rows[-1], "chosen": rows[-1]["rejected"], "rejected": rows[-1]["chosen"], "truth": False,
                   "annotator": "swapped"}
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def score_config(data: Path, model: Path, out: Path, **overrides) -> ScoreConfig:
    settings = dict(max_length=24, max_prompt_length=8, part_size=16, batch_tokens=256, device="cpu")
    return ScoreConfig(data=str(data), model=str(model), out=out, **{**settings, **overrides})


@pytest.mark.parametrize("device,vllm_installed,gpu,expected,why", [
    ("auto", True, True, Backend.vllm, "vLLM is installed and a GPU is present"),
    ("auto", True, False, Backend.hf, "no GPU, so not vLLM"),
    ("auto", False, True, Backend.hf, "vLLM is not installed"),
    ("auto", False, False, Backend.hf, "no GPU"),
    ("cuda:1", True, True, Backend.hf, "--device cuda:1 is an hf setting"),
])
def test_auto_backend_takes_vllm_only_where_it_can_run_on_a_gpu(device, vllm_installed, gpu, expected, why):
    chosen, said = choose_backend(device, vllm_installed, gpu)
    assert chosen == expected and why in said


def test_auto_backend_on_this_machine_says_its_choice_and_keys_the_cache_on_it(peaky_model_dir, tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl", 4)
    run(score_config(data, peaky_model_dir, tmp_path / "scores", device="auto", backend=Backend.auto))
    expected = "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "hf"
    assert capsys.readouterr().out.splitlines()[0].startswith(f"backend: {expected} (auto: ")
    assert schema.read_scores(tmp_path / "scores")[1]["backend"] == expected
    assert ScoreConfig(data="d", model="m", out=tmp_path).backend == Backend.auto  # the default


@pytest.mark.parametrize("packing", [True, False])
def test_hf_scores_match_float64_brute_force_per_row(peaky_model_dir, tmp_path, packing):
    data = write_pairs(tmp_path / "pairs.jsonl", 40)
    run(score_config(data, peaky_model_dir, tmp_path / "scores", packing=packing))
    df, key = schema.read_scores(tmp_path / "scores", expect={"ref_model": str(peaky_model_dir), "max_length": 24})
    assert df["row_id"].to_list() == list(range(40))
    assert key["backend"] == "hf" and key["dtype"] == "float32"
    # Carried columns survive, the original texts included.
    source = [json.loads(line) for line in data.read_text().splitlines()]
    assert df["truth"].to_list() == [r["truth"] for r in source]
    assert df["chosen"].to_list() == [r["chosen"] for r in source]
    model = LlamaForCausalLM.from_pretrained(peaky_model_dir)
    tokenizer = build_word_tokenizer()
    for row in df.iter_rows(named=True):
        assert row["truncated"] or row["prompt_ids"][0] == tokenizer.bos_token_id
        assert row["chosen_ids"][-1] == tokenizer.eos_token_id
        assert len(row["prompt_ids"]) + max(row["chosen_len"], row["rejected_len"]) <= 24
        for side in ("chosen", "rejected"):
            expected = brute_force_logps(model, row["prompt_ids"], row[f"{side}_ids"])
            assert row[f"ref_{side}_logps"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
            assert row[f"{side}_len"] == len(row[f"{side}_ids"])
    assert df["truncated"].any()  # max_prompt_length 8 cuts some of these prompts


def test_length_batches_respect_budget_and_sort():
    lengths = [5, 40, 7, 40, 12, 3, 30, 8]
    batches = length_batches(lengths, batch_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or 2 * len(batch) * max(lengths[i] for i in batch) <= 100
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)


# --- resumption --------------------------------------------------------------------------------------------

KILLABLE_SCORER = """
import sys, time
from pathlib import Path
from re_po.data import parts, schema
from re_po.data import scoring as score

write_part = schema.write_part
def slow_write_part(*args, **kwargs):  # slow enough to be killed between any two parts
    time.sleep(0.3)
    write_part(*args, **kwargs)
schema.write_part = slow_write_part
score.run(score.ScoreConfig(data=sys.argv[1], model=sys.argv[2], out=Path(sys.argv[3]), max_length=24,
                            max_prompt_length=8, part_size=16, batch_tokens=256, device="cpu"))
"""


def test_sigkill_mid_run_then_rerun_gives_every_row_once_with_the_same_values(peaky_model_dir, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", 100)
    out = tmp_path / "killed"
    env = subprocess_env()
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE_SCORER, str(data), str(peaky_model_dir), str(out)],
                            env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        manifest = out / schema.MANIFEST
        if manifest.exists() and json.loads(manifest.read_text())["parts"]:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = json.loads((out / schema.MANIFEST).read_text())
    assert 1 <= len(interrupted["parts"]) < 7 and not interrupted["complete"]
    with pytest.raises(schema.CacheError, match="incomplete"):
        schema.read_scores(out)

    run(score_config(data, peaky_model_dir, out))
    resumed, _ = schema.read_scores(out)
    run(score_config(data, peaky_model_dir, tmp_path / "straight"))
    straight, _ = schema.read_scores(tmp_path / "straight")
    assert resumed["row_id"].to_list() == list(range(100))
    assert resumed.equals(straight)


def test_part_written_but_not_in_manifest_is_redone_once(peaky_model_dir, tmp_path):
    """A kill between a part's rename and the manifest update leaves an unlisted part (and maybe a .tmp)."""
    data = write_pairs(tmp_path / "pairs.jsonl", 40)
    out = tmp_path / "scores"
    run(score_config(data, peaky_model_dir, out))
    before, _ = schema.read_scores(out)
    manifest = json.loads((out / schema.MANIFEST).read_text())
    del manifest["parts"][parts.part_name(1)]
    manifest["complete"] = False
    (out / schema.MANIFEST).write_text(json.dumps(manifest))
    (out / (parts.part_name(2) + ".tmp")).write_bytes(b"half a file")
    run(score_config(data, peaky_model_dir, out))
    after, _ = schema.read_scores(out)
    assert after.equals(before)


def test_rerun_with_other_options_is_refused_showing_both_keys_and_overwrite_starts_over(peaky_model_dir, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", 20)
    out = tmp_path / "scores"
    run(score_config(data, peaky_model_dir, out))
    with pytest.raises(schema.CacheError, match=r"--overwrite[\s\S]*max_length[\s\S]*\"max_length\": 24"
                       r"[\s\S]*\"max_length\": 20"):
        run(ScoreConfig(**{**score_config(data, peaky_model_dir, out).__dict__, "max_length": 20}))
    run(ScoreConfig(**{**score_config(data, peaky_model_dir, out).__dict__, "max_length": 20, "overwrite": True}))
    _, key = schema.read_scores(out)
    assert key["max_length"] == 20


def test_read_scores_refuses_a_key_mismatch_showing_both(peaky_model_dir, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", 10)
    run(score_config(data, peaky_model_dir, tmp_path / "scores"))
    with pytest.raises(schema.CacheError, match=r"differing fields: ref_model[\s\S]*cache key:.*peaky_llama"
                       r"[\s\S]*expected key: .*other-model"):
        schema.read_scores(tmp_path / "scores", expect={"ref_model": "other-model", "max_length": 24})
    footer = pq.read_schema(tmp_path / "scores" / parts.part_name(0)).metadata[parts.KEY_METADATA.encode()]
    assert json.loads(footer) == schema.read_scores(tmp_path / "scores")[1]


# --- bad input ------------------------------------------------------------------------------------------------


def test_unknown_model_path_is_named(tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", 3)
    with pytest.raises(FileNotFoundError, match=r"unknown model '.*no-such-model'.*no such folder"):
        run(score_config(data, tmp_path / "no-such-model", tmp_path / "scores"))


GOOD_ROW = '{"prompt": "hello", "chosen": "yes", "rejected": "no"}'


@pytest.mark.parametrize("lines,message", [
    (['{"prompt": "hello", "rejected": "no"}'] * 2, r"column.*'chosen'"),
    ([GOOD_ROW, '{"prompt": "hello", "rejected": "no"}'], r"line 2 \(row_id 1\), field 'chosen': missing"),
    ([GOOD_ROW, '{"prompt": "hello", "chosen": 3, "rejected": "no"}'], r"line 2 \(row_id 1\), field 'chosen'"),
    ([GOOD_ROW, '{"prompt": "hello", "chosen": "yes", "rejected": "no"'], r"line 2 \(row_id 1\).*malformed JSON"),
    ([GOOD_ROW, '{"prompt": "hello", "chosen": "", "rejected": "no"}'], r"line 2 \(row_id 1\), field 'chosen'.*empty"),
])
def test_bad_rows_are_named_by_file_line_and_field(peaky_model_dir, tmp_path, lines, message):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl.*" + message):
        run(score_config(data, peaky_model_dir, tmp_path / "scores"))


def test_truncation_keeps_prompt_end_and_response_start(peaky_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    long_prompt = " ".join(["the cat sat on the mat"] * 5)
    data.write_text(GOOD_ROW + "\n" + json.dumps({"prompt": long_prompt, "chosen": "yes", "rejected": "no"}) + "\n")
    # max_length 9 leaves one token after a full 8-token prompt: the response keeps its first token only.
    run(ScoreConfig(data=str(data), model=str(peaky_model_dir), out=tmp_path / "scores", max_length=9,
                    max_prompt_length=8, device="cpu"))
    df, _ = schema.read_scores(tmp_path / "scores")
    assert df["truncated"].to_list() == [False, True] and df["chosen_len"].to_list() == [2, 1]
    assert df["prompt_ids"].list.len().to_list() == [2, 8]


def test_rows_failing_tokenization_are_an_error_or_a_skip_kept_across_reruns(peaky_model_dir, tmp_path,
                                                                             monkeypatch):
    from re_po.data import pairs, tokenize

    tokenize_pair = tokenize.tokenize_pair

    def refusing(tokenizer, prompt, chosen, rejected, *limits):
        if chosen == "bad":
            raise pairs.BadRowError("empty response after truncation", "chosen")
        return tokenize_pair(tokenizer, prompt, chosen, rejected, *limits)

    monkeypatch.setattr(tokenize, "tokenize_pair", refusing)
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join([GOOD_ROW, GOOD_ROW.replace('"yes"', '"bad"'), GOOD_ROW]) + "\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl line 2 \(row_id 1\), field 'chosen'.*empty response"):
        run(score_config(data, peaky_model_dir, tmp_path / "strict"))
    assert not (tmp_path / "strict").exists()  # failed before a part: nothing left behind
    config = score_config(data, peaky_model_dir, tmp_path / "lenient", on_bad_row="skip")
    for _ in range(2):  # the second run finds the cache complete and must still list the reject
        run(config)
        df, _ = schema.read_scores(tmp_path / "lenient")
        assert df["row_id"].to_list() == [0, 2]
        (reject,) = schema.read_rejects(tmp_path / "lenient")
        assert reject["row_id"] == 1 and reject["field"] == "chosen" and reject["position"] == "line 2"
        assert reject["file"].endswith("pairs.jsonl") and "empty response" in reject["reason"]


def test_skipped_input_rows_go_to_the_rejects_file_and_the_summary(peaky_model_dir, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join([GOOD_ROW, '{"prompt": "hello", "chosen": 3, "rejected": "no"}', GOOD_ROW,
                               '{"prompt": "hel']) + "\n")
    run(score_config(data, peaky_model_dir, tmp_path / "scores", on_bad_row="skip"))
    assert schema.read_scores(tmp_path / "scores")[0]["row_id"].to_list() == [0, 2]
    assert [r["row_id"] for r in schema.read_rejects(tmp_path / "scores")] == [1, 3]
    summary = capsys.readouterr().err
    assert "4 rows read, 2 scored, 2 skipped" in summary and "skipped 1: chosen:" in summary
    assert "skipped 1: malformed JSON" in summary and "None" not in summary  # a line has no field
    assert ("1 rows label a pair again, and no annotator column says who: each is one more label of the one "
            "annotator 'default'") in summary  # rows 0 and 2 (issue 25: never silently)


def test_a_failed_score_run_blocks_nothing_once_the_data_is_fixed(peaky_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join([GOOD_ROW, GOOD_ROW.replace('"yes"', '""')]) + "\n")
    with pytest.raises(ValueError, match="empty response"):
        run(score_config(data, peaky_model_dir, tmp_path / "scores"))
    data.write_text("\n".join([GOOD_ROW, GOOD_ROW.replace('"yes"', '"sure"')]) + "\n")  # fixed: another sha
    run(score_config(data, peaky_model_dir, tmp_path / "scores"))  # no --overwrite needed
    assert schema.read_scores(tmp_path / "scores")[0].height == 2


def test_a_damaged_part_is_named(peaky_model_dir, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", 6)
    run(score_config(data, peaky_model_dir, tmp_path / "scores"))
    part = tmp_path / "scores" / parts.part_name(0)
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # a disk that filled up, a copy cut short
    with pytest.raises(schema.CacheError, match=rf"{part}: its content is not what `repo score` wrote .*--overwrite") as err:
        schema.read_scores(tmp_path / "scores")
    assert "\n" not in str(err.value)


def test_a_layout_difference_alone_shows_the_layouts_and_no_empty_key_line(tmp_path):
    key = schema.make_key(ref_model="m", weights_sha="w", tokenizer_sha="t", chat_template_sha="c", max_length=8,
                          max_prompt_length=4, dtype="float32", backend="hf", backend_version="0",
                          dataset_sha="d", embed_layers="")
    schema.open_cache(tmp_path / "c", key, {"num_parts": 1, "part_size": 10}, overwrite=False)
    schema.write_part(tmp_path / "c", schema.open_cache(tmp_path / "c", key, {"num_parts": 1, "part_size": 10},
                                                        overwrite=False), 0, _one_scored_row(), [])
    with pytest.raises(schema.CacheError) as err:
        schema.open_cache(tmp_path / "c", key, {"num_parts": 2, "part_size": 5}, overwrite=False)
    message = str(err.value)
    assert "cache layout:    {'num_parts': 1, 'part_size': 10}" in message and "differing fields" not in message


def _one_scored_row():
    import polars as pl
    values = {"row_id": [0], "pair_id": ["p"], "annotator": ["a"], "prompt_ids": [[1]], "chosen_ids": [[2]],
              "rejected_ids": [[3]], "ref_chosen_logps": [-1.0], "ref_rejected_logps": [-2.0], "chosen_len": [1],
              "rejected_len": [1], "truncated": [False]}
    return pl.DataFrame(values, schema=schema.SCORE_COLUMNS)


def test_empty_prompt_without_bos_is_a_named_bad_row(peaky_model_dir, tmp_path):
    """Nothing would predict the first response token; the row is refused by name, not by a crash in pack."""
    import shutil

    model_dir = tmp_path / "no_bos"
    shutil.copytree(peaky_model_dir, model_dir)
    tokenizer = build_word_tokenizer()
    tokenizer.backend_tokenizer.post_processor = None  # no BOS in front of a text
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "pairs.jsonl"
    data.write_text(GOOD_ROW + "\n" + GOOD_ROW.replace('"hello"', '""') + "\n")
    with pytest.raises(ValueError, match=r"line 2 \(row_id 1\), field 'prompt'.*empty prompt"):
        run(score_config(data, model_dir, tmp_path / "scores"))


@pytest.mark.slow
def test_prepare_model_writes_a_plain_transformers_folder(tmp_path):
    """The packaged GGUF becomes an unquantized transformers model that knows some facts (about 25 s)."""
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from re_po.stages.prepare_model import PrepareModelConfig
    from re_po.stages.prepare_model import run as prepare

    dest = prepare(PrepareModelConfig(dest=tmp_path / "smollm2"))
    assert "quantization_config" not in json.loads((dest / "config.json").read_text())
    assert not list(tmp_path.glob(".smollm2-*"))  # the temporary folder was renamed, none left behind
    tokenizer = AutoTokenizer.from_pretrained(dest)
    model = AutoModelForCausalLM.from_pretrained(dest).eval()
    assert tokenizer.chat_template and next(model.parameters()).dtype == torch.float32
    prompt = tokenizer("The capital of France is")["input_ids"]
    answers = [tokenizer(" Paris", add_special_tokens=False)["input_ids"],
               tokenizer(" banana", add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        paris, banana = response_logps(model, pack([prompt, prompt], answers, pad_id=0))[0].tolist()
    assert paris > banana + 5


def test_embeddings_are_stored_per_row_in_its_own_order_and_keyed(peaky_model_dir, tmp_path):
    """Each row's chosen/rejected embeddings are its own responses' (a row stating the reverse order of an
    earlier one gets them swapped), float16 of the pooled float32 means; the layers are in the cache key."""
    data = write_pairs(tmp_path / "pairs.jsonl", 30)
    run(score_config(data, peaky_model_dir, tmp_path / "scores", embed_layers="1,last"))
    df, key = schema.read_scores(tmp_path / "scores")
    assert key["embed_layers"] == "1,2" and schema.embed_layers(key) == (1, 2)
    model = LlamaForCausalLM.from_pretrained(peaky_model_dir).eval()
    for row in df.head(8).iter_rows(named=True):
        for layer in (1, 2):
            prompt_col, chosen_col, rejected_col = schema.embedding_columns(layer)
            for side, column in (("chosen", chosen_col), ("rejected", rejected_col)):
                with torch.no_grad():
                    states = model.model(torch.tensor([row["prompt_ids"] + row[f"{side}_ids"]]),
                                         output_hidden_states=True).hidden_states[layer][0]
                expected = states[len(row["prompt_ids"]):].mean(0)
                assert torch.allclose(torch.tensor(row[column], dtype=torch.float32), expected, rtol=2e-3, atol=2e-3)
            expected_prompt = states[: len(row["prompt_ids"])].mean(0)
            assert torch.allclose(torch.tensor(row[prompt_col], dtype=torch.float32), expected_prompt,
                                  rtol=2e-3, atol=2e-3)
    assert df.schema[schema.embedding_columns(2)[1]] == pl.Array(pl.Float16, 64)
    swapped = df.row(6, named=True), df.row(5, named=True)  # row 6 swaps row 5 (write_pairs)
    assert swapped[0]["chosen_emb_2"] == swapped[1]["rejected_emb_2"]
    assert swapped[0]["rejected_emb_2"] == swapped[1]["chosen_emb_2"]


def test_no_embeddings_and_another_layer_choice_is_another_cache(peaky_model_dir, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", 10)
    run(score_config(data, peaky_model_dir, tmp_path / "scores", embeddings=False))
    df, key = schema.read_scores(tmp_path / "scores")
    assert key["embed_layers"] == "" and not [c for c in df.columns if "_emb_" in c]
    with pytest.raises(schema.CacheError, match="embed_layers"):
        run(score_config(data, peaky_model_dir, tmp_path / "scores"))
    with pytest.raises(ValueError, match="layers 1..2"):
        run(score_config(data, peaky_model_dir, tmp_path / "other", embed_layers="5"))



def test_a_folder_re_po_did_not_make_is_never_written_into(peaky_model_dir, tmp_path):
    """The user's own part-*.parquet shards (Spark's and the Hub's layout) in --out: refused, with or without
    --overwrite, and left as they were; --overwrite of a real cache deletes only the cache's own files."""
    data = write_pairs(tmp_path / "pairs.jsonl", 10)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "part-00000.parquet").write_bytes(b"the user's data")
    for overwrite in (False, True):
        with pytest.raises(schema.CacheError, match="holds no re-po score cache"):
            run(score_config(data, peaky_model_dir, theirs, overwrite=overwrite))
        assert (theirs / "part-00000.parquet").read_bytes() == b"the user's data"
        assert sorted(p.name for p in theirs.iterdir()) == ["part-00000.parquet"]
    ours = run(score_config(data, peaky_model_dir, tmp_path / "ours"))
    (ours / "notes.txt").write_text("mine")
    run(score_config(data, peaky_model_dir, ours, overwrite=True))
    assert (ours / "notes.txt").read_text() == "mine" and schema.read_scores(ours)[0].height == 10
