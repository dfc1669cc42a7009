"""Nothing lost, even from a crafted cache (issue 25): each case of the issue's table through the `repo` command, with
the one line it prints and what it leaves. A small project: 40 labels of 15 pairs by three annotators, scored by the
tiny Llama and trained one epoch with --robust."""

import json
import random
import shutil
import struct
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import WORDS, is_one_line_error
from typer.testing import CliRunner

from re_po import cli
from re_po.data import estimate, parts, schema
from re_po.stages.configs import ScoreConfig

runner = CliRunner()


def pair_rows(num_pairs: int, labels: int, seed: int = 0) -> list[dict]:
    """`labels` rows over `num_pairs` pairs, each pair labelled by up to three annotators (at most once each)."""
    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]

    def text(k):
        return " ".join(rng.choices(words, k=k))

    rows = []
    for p in range(num_pairs):
        prompt, a, b = text(4), text(4), text(5)
        for annotator in ("ann", "bob", "cy")[: 2 if p % 3 == 2 else 3]:  # 15 pairs: 40 labels
            flip = rng.random() < 0.2
            rows.append({"prompt": prompt, "chosen": b if flip else a, "rejected": a if flip else b,
                         "annotator": annotator, "is_flipped": flip})
    return rows[:labels]


def one_error_line(output: str) -> bool:
    """A refusal after warnings: the last line the only `error: ` one, no traceback."""
    lines = output.splitlines()
    return lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1 and \
        "Traceback" not in output


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def repo(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli.app, [str(a) for a in args])
    return result.exit_code, result.output


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(tiny_llama, tmp_path_factory) -> Path:
    """repo.toml (data.path pairs.jsonl, ref the tiny Llama), workspace/scores and workspace/train (--robust)."""
    root = tmp_path_factory.mktemp("project")
    write_jsonl(root / "pairs.jsonl", pair_rows(15, 40))
    (root / "repo.toml").write_text(f'workspace = "workspace"\n[data]\npath = "pairs.jsonl"\n[models]\n'
                                    f'ref = "{tiny_llama}"\n[train]\nbatch_size = 8\nlr = 0.001\ndevice = "cpu"\n')
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert repo("score")[0] == 0
        code, output = repo("train", "--robust")
        assert code == 0, output
    return root


@pytest.fixture
def in_project(project, monkeypatch) -> Path:
    monkeypatch.chdir(project)
    return project


def copy_cache(project: Path, dest: Path) -> Path:
    return Path(shutil.copytree(project / "workspace" / "scores", dest))


# ---- the score cache -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("outside", ["relative", "absolute"])
def test_a_manifest_naming_a_part_outside_its_folder_deletes_and_reads_nothing(in_project, tmp_path, outside):
    """Was: `repo score ... --overwrite` deleted the file the manifest named outside the cache (exit 0)."""
    cache = copy_cache(in_project, tmp_path / "deep" / "cache")
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's")
    manifest = json.loads((cache / schema.MANIFEST).read_text())
    name = "../../victim.txt" if outside == "relative" else str(victim)
    manifest["parts"][name] = manifest["parts"][parts.part_name(0)]
    (cache / schema.MANIFEST).write_text(json.dumps(manifest))
    before = listing(cache)
    for args in (["score", "--out", cache, "--overwrite"], ["inspect-noise", cache, "--out-dir", tmp_path / "i"],
                 ["train", cache, "--out", tmp_path / "run"]):
        code, output = repo(*args)
        assert code == 2 and is_one_line_error(output), output
        assert f"lists a part named {name!r}" in output and "re-po reads and deletes nothing by it" in output
    assert victim.read_text() == "the user's" and listing(cache) == before
    assert not (tmp_path / "i").exists() and not (tmp_path / "run").exists()


def test_a_flipped_bit_in_a_part_is_named_and_nothing_trains_on_it(in_project, tmp_path):
    """Was: accepted, and trained on the changed log-prob."""
    cache = copy_cache(in_project, tmp_path / "cache")
    part = cache / parts.part_name(0)
    table = pq.read_table(part)  # the part as written, its footer (the cache key) kept
    values = table["ref_chosen_logps"].to_pylist()
    bits = bytearray(struct.pack("<d", values[3]))
    bits[6] ^= 0x08  # one bit of the mantissa's top: a log-prob off by nats, still a valid Parquet file
    values[3] = struct.unpack("<d", bytes(bits))[0]
    column = table.schema.get_field_index("ref_chosen_logps")
    pq.write_table(table.set_column(column, "ref_chosen_logps", pa.array(values, pa.float64())), part)
    for args in (["inspect-noise", cache, "--out-dir", tmp_path / "i"], ["train", cache, "--out", tmp_path / "run"]):
        code, output = repo(*args)
        assert code == 2 and is_one_line_error(output), output
        assert f"{part}: its content is not what `repo score` wrote" in output and "--overwrite" in output
    assert not (tmp_path / "i").exists() and not (tmp_path / "run").exists()


# ---- outputs over or into the inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, name", [("--dump", "pairs.jsonl"), ("--review", "data.json")])
def test_an_output_onto_the_input_file_is_refused(project, tmp_path, monkeypatch, flag, name):
    """Was: exit 0, and the input became the flagged rows (--dump) or Label Studio tasks (--review)."""
    rows = pair_rows(15, 40)
    data = tmp_path / name
    if name.endswith(".json"):
        data.write_text(json.dumps(rows))
    else:
        write_jsonl(data, rows)
    (tmp_path / "repo.toml").write_text(f'[data]\npath = "{name}"\n[models]\nref = "m"\n')
    monkeypatch.chdir(tmp_path)
    before = data.read_bytes()
    code, output = repo("inspect-noise", project / "workspace" / "scores", flag, name)
    assert code == 2 and is_one_line_error(output), output
    assert f"error: {flag} {name} is the input dataset: writing there would replace it; choose another path" in output
    assert data.read_bytes() == before and not (project / "workspace" / "inspect" / "x").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "repo.toml"])


@pytest.mark.parametrize("flag", ["--export-clean", "--dump"])
def test_an_output_into_the_input_folder_of_shards_is_refused(tiny_llama, tmp_path, monkeypatch, flag):
    """Was: accepted, and the next `repo score` of the folder read 46 rows instead of 24."""
    rows = pair_rows(10, 24)
    shards = tmp_path / "shards"
    write_jsonl(shards / "a.jsonl", rows[:12])
    write_jsonl(shards / "b.jsonl", rows[12:])
    monkeypatch.chdir(tmp_path)
    assert repo("score", shards, "--model", tiny_llama, "--out", "cache")[0] == 0
    before = listing(shards)
    code, output = repo("inspect-noise", "cache", "--data", shards, flag, shards / "clean.jsonl", "--out-dir", "i")
    assert code == 2 and is_one_line_error(output), output
    assert f"error: {flag} {shards / 'clean.jsonl'} is inside the input dataset {shards}: re-po never writes" in output
    assert listing(shards) == before and not (tmp_path / "i").exists()


# ---- the project file ------------------------------------------------------------------------------------------

def test_a_model_path_in_repo_toml_is_relative_to_the_file(tiny_llama, tmp_path, monkeypatch):
    """Was: `unknown model 'models/sft'` from a subfolder, although paths in repo.toml are relative to the file."""
    shutil.copytree(tiny_llama, tmp_path / "models" / "sft")
    write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4, 8))
    (tmp_path / "repo.toml").write_text('[data]\npath = "pairs.jsonl"\n[models]\nref = "models/sft"\nsft2 = "ref"\n'
                                        '[train]\npolicy = "models/sft"\n')
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    code, output = repo("score", "--model", "sft2", "--no-embeddings")
    assert code == 0, output
    assert schema.read_scores(tmp_path / "workspace" / "scores")[1]["ref_model"] == str(tmp_path / "models" / "sft")
    built = []
    monkeypatch.setattr("re_po.stages.train.run", lambda cfg: built.append(cfg) or tmp_path)
    assert repo("train")[0] == 0 and built[0].policy == str(tmp_path / "models" / "sft")


# ---- tiny data ---------------------------------------------------------------------------------------------------

def test_eight_labels_of_three_pairs_are_estimated_without_the_probe_and_say_so(tiny_llama, tmp_path, monkeypatch):
    """Was (with SmolLM2's embeddings): a `torch._C._LinAlgError: linalg.eigh` traceback in inspect-noise and in
    train --robust. Three pairs are too few to cross-fit the probe: the labels' agreement serves, and a warning says
    so (test_reliability.py has the eigh case itself)."""
    write_jsonl(tmp_path / "tiny.jsonl", pair_rows(3, 8))
    monkeypatch.chdir(tmp_path)
    assert repo("score", "tiny.jsonl", "--model", tiny_llama, "--out", "cache")[0] == 0
    for args in (["inspect-noise", "cache"],
                 ["train", "cache", "--robust", "--out", "run", "--device", "cpu", "--policy", tiny_llama]):
        code, output = repo(*args)
        assert code == 0, output
        assert ("warning: 3 pairs are too few for the probe's 5-fold cross-fitting (it needs 10): the estimate uses "
                "the labels' agreement alone") in output and "Traceback" not in output
    summary = json.loads((tmp_path / "inspect" / "estimate" / "summary.json").read_text())
    assert summary["estimate"]["model"] == "none (agreement alone: 3 pairs are too few for the probe)"
    assert (summary["labels"], summary["pairs"]) == (8, 3)


# ---- broken model folders ----------------------------------------------------------------------------------------

def broken_model(tiny_llama: Path, folder: Path, kind: str) -> Path:
    shutil.copytree(tiny_llama, folder)
    weights = folder / "model.safetensors"
    if kind == "bin":  # not a pickle of tensors
        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(b"not a pickle of tensors")
    else:  # a copy cut short
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


@pytest.mark.parametrize("kind, message", [
    ("bin", "pytorch_model.bin is not a weights-only pickle"),
    ("safetensors", "model.safetensors cannot be read as weights (SafetensorError: "),
])
def test_a_broken_model_folder_is_one_line_naming_the_file_and_leaves_nothing(project, tiny_llama, tmp_path,
                                                                             monkeypatch, kind, message):
    """Was: tracebacks (UnpicklingError, SafetensorError), and the score cache or run folder left behind."""
    broken = broken_model(tiny_llama, tmp_path / "broken", kind)
    monkeypatch.chdir(tmp_path)
    for args in (["score", project / "pairs.jsonl", "--model", broken, "--out", "cache"],
                 ["train", project / "workspace" / "scores", "--policy", broken, "--out", "run", "--device", "cpu"]):
        code, output = repo(*args)
        assert code == 2 and is_one_line_error(output), output
        assert f"error: model folder {broken}: {message}" in output and "copy, download or convert" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


# ---- evaluate ------------------------------------------------------------------------------------------------------

def test_evaluate_without_a_truth_column_refuses_before_scoring(in_project, tmp_path, monkeypatch):
    """Was: the reference and the policy scored every pair, then the refusal."""
    held = write_jsonl(tmp_path / "held.jsonl", [{k: v for k, v in r.items() if k != "is_flipped"}
                                                 for r in pair_rows(5, 10, seed=1)])

    def no_scoring(cfg):
        raise AssertionError("scored before refusing")

    monkeypatch.setattr("re_po.data.scoring.run", no_scoring)
    code, output = repo("evaluate", held, "--out", tmp_path / "ev")
    assert code == 2 and is_one_line_error(output), output
    assert (f"error: {held}: no truth column 'is_flipped' (true where the label is wrong) to evaluate against; its "
            "columns: pair_id, annotator, prompt, chosen, rejected; name yours with --truth-col") in output
    assert not (tmp_path / "ev").exists()


# ---- the first hour ------------------------------------------------------------------------------------------------

def test_max_length_alone_gives_the_prompt_half_and_a_bad_pair_names_the_flags(tmp_path, monkeypatch):
    """Was: `max_length = 128` alone failed with `need 0 < max_prompt_length (512) < max_length (128)`."""
    assert ScoreConfig(data="d", model="m", out=tmp_path, max_length=128).max_prompt_length == 64
    assert ScoreConfig(data="d", model="m", out=tmp_path).max_prompt_length == 512  # the default cache key stays
    with pytest.raises(ValueError, match=r"--max-prompt-length \(200\) must lie between 0 and --max-length \(128\).*"
                                         r"repo.toml \[score\] max_prompt_length, max_length"):
        ScoreConfig(data="d", model="m", out=tmp_path, max_length=128, max_prompt_length=200)
    (tmp_path / "repo.toml").write_text('[data]\npath = "d.jsonl"\n[models]\nref = "m"\n[score]\nmax_length = 128\n')
    monkeypatch.chdir(tmp_path)
    built = []
    monkeypatch.setattr("re_po.data.scoring.run", lambda cfg: built.append(cfg) or tmp_path)
    assert repo("score")[0] == 0 and (built[0].max_length, built[0].max_prompt_length) == (128, 64)


def test_an_unidentified_eta_gets_its_own_reason():
    """Was: one fixed text, "one label per pair and a model at chance", also where every pair had 2-3 labels."""
    labels = pl.DataFrame({"annotator": ["few", "few", "solo", "solo", "twin", "twin"],
                           "pair_id": ["p1", "p2", "p3", "p4", "p1", "p2"]})
    table = pl.DataFrame({"annotator": ["few", "solo", "twin"], "identified": [False, False, False],
                          "eta_se": [0.31, None, None]})
    reasons = estimate.unidentified_reasons(table, labels, "probe on layer 2")
    assert reasons["few"] == ("its standard error 0.31 is above 0.1 with 2 labels (2 beside another label of the same "
                              "pair): more labels pin it down")
    assert reasons["solo"].startswith("each of its 2 labels is the only one of its pair, and the model (probe on "
                                      "layer 2) alone does not tell the true order apart")
    mirrored = estimate.unidentified_reasons(table, labels, "probe on layer 2", mirror_in_reach=True)
    assert mirrored["few"].startswith("the labels, taken together, are not told from their mirror image")
    assert reasons["twin"].startswith("its labels always meet the same other annotators'")
    assert estimate.unidentified_reasons(table.drop("identified"), labels, None) == {}
    # read back from a table, with no word of the mirror: a standard error within the bound leaves only the mirror
    within = estimate.unidentified_reasons(table.with_columns(eta_se=pl.Series([0.07, None, None])), labels, None)
    assert within["few"].startswith("the labels, taken together, are not told from their mirror image")


def test_the_report_counts_labels_and_pairs_and_says_each_reason(in_project):
    """Was: "40 pairs" for 40 labels of 15 pairs, and the fixed n/i text."""
    code, output = repo("inspect-noise", "workspace/scores")
    assert code == 0, output
    headline = output.splitlines()[[i for i, line in enumerate(output.splitlines()) if "score cache" in line][0]]
    assert ": 40 labels of 15 pairs, " in headline and " labels flagged (w < 0.5)" in headline
    assert "one label per pair" not in output


def test_reports_before_and_after_training_have_folders_of_their_own_and_no_stale_files(in_project):
    """Was: both went to workspace/inspect, the estimate's Parquet files staying beside the run's report."""
    assert repo("inspect-noise", "workspace/scores")[0] == 0
    assert repo("inspect-noise")[0] == 0
    estimate_dir, epoch_dir = (in_project / "workspace" / "inspect" / name for name in ("estimate", "epoch-1"))
    assert json.loads((estimate_dir / "summary.json").read_text())["estimate"] is not None
    assert json.loads((epoch_dir / "summary.json").read_text())["epoch"] == 1
    assert (estimate_dir / "posteriors.parquet").exists() and not (epoch_dir / "posteriors.parquet").exists()
    # one folder named for both: the later report leaves nothing of the earlier one's
    assert repo("inspect-noise", "--out-dir", "both", "--plots", "both/plots")[0] == 0
    assert (in_project / "both" / "plots" / "eta_steps.png").exists()
    assert repo("inspect-noise", "workspace/scores", "--out-dir", "both", "--plots", "both/plots")[0] == 0
    assert not (in_project / "both" / "plots" / "eta_steps.png").exists()  # the run's plot: not the estimate's
    assert repo("inspect-noise", "--out-dir", "both")[0] == 0
    names = sorted(p.name for p in (in_project / "both").iterdir())
    assert names == [".re-po.json", "plots", "report.txt", "summary.json"]
    shutil.rmtree(in_project / "both")


def test_saving_a_policy_with_tied_weights_says_nothing_of_it(in_project, tiny_llama, tmp_path, caplog):
    """Was: "Removed shared tensor {'policy.lm_head.weight'}" at every save."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tmp_path / "tied")
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(tmp_path / "tied")
    caplog.set_level("WARNING")
    code, output = repo("train", "--policy", tmp_path / "tied", "--out", tmp_path / "run", "--max-steps", "1")
    assert code == 0, output
    assert (tmp_path / "run" / "checkpoints").exists()
    assert "Removed shared tensor" not in caplog.text + output


def test_column_names_on_the_command_line(tiny_llama, tmp_path, monkeypatch):
    """Was: only through repo.toml, and the error named an internal class (`Columns`)."""
    rows = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"], "rater": r["annotator"]}
            for r in pair_rows(4, 8)]
    write_jsonl(tmp_path / "mine.jsonl", rows)
    monkeypatch.chdir(tmp_path)
    code, output = repo("score", "mine.jsonl", "--model", tiny_llama, "--out", "c1", "--no-embeddings")
    assert code == 2 and is_one_line_error(output) and "Columns" not in output
    assert "missing column(s) 'chosen', 'rejected'" in output and "name yours with --prompt-col" in output
    code, output = repo("score", "mine.jsonl", "--model", tiny_llama, "--out", "c2", "--no-embeddings",
                        "--prompt-col", "question", "--chosen-col", "good", "--rejected-col", "bad",
                        "--annotator-col", "rater")
    assert code == 0, output
    assert sorted(set(schema.read_scores(tmp_path / "c2")[0]["annotator"])) == ["ann", "bob", "cy"]


def test_demo_offers_only_the_losses_it_trains():
    """Was: `repo demo --help` offered cdpo and rdpo, which --robust refuses."""
    code, output = repo("demo", "--help")
    assert code == 0 and "--loss <dpo|ipo|simpo|cpo>" in output and "cdpo" not in output


def test_resume_reads_the_runs_own_settings_and_refuses_only_a_flag_that_differs(in_project, tmp_path):
    """Was: a bare `repo train --resume` refused with every setting that differed from repo.toml and the defaults."""
    run = tmp_path / "run"
    code, output = repo("train", "--out", run, "--max-steps", "2", "--save-every", "1", "--lr", "0.002", "--seed", "5",
                        "--batch-size", "4", "--robust", "--eta-alpha", "0.2")
    assert code == 0, output
    code, output = repo("train", "--out", run, "--resume")
    assert code == 0, output
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == 0.002
    code, output = repo("train", "--out", run, "--resume", "--lr", "0.5", "--seed", "5")
    assert code == 2 and is_one_line_error(output), output
    assert "(--lr 0.002 then, 0.5 now); leave those flags out to go on as the run was started" in output


def test_a_failed_inspect_leaves_no_folder(in_project, tmp_path, monkeypatch):
    """Was: the report folder stayed behind, with the estimate's Parquet files in it. A last write that fails (a full
    disk, here) takes every output of the command with it."""
    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("re_po.stages.inspect_noise.write_html", full_disk)
    code, output = repo("inspect-noise", "workspace/scores", "--out-dir", tmp_path / "rep", "--dump",
                        tmp_path / "flagged.jsonl", "--plots", tmp_path / "plots", "--html", tmp_path / "report.html")
    assert code == 2 and one_error_line(output) and "No space left on device" in output, output
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("mine")  # an output under a file: refused before any work
    code, output = repo("inspect-noise", "workspace/scores", "--out-dir", tmp_path / "rep", "--html",
                        tmp_path / "afile" / "report.html")
    assert code == 2 and is_one_line_error(output), output
    assert f"error: --html {tmp_path / 'afile' / 'report.html'}: {tmp_path / 'afile'} is a file" in output
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_one_annotator_labelling_a_pair_twice_is_one_line(tiny_llama, tmp_path, monkeypatch):
    """Was: accepted silently, as a second label of the pair."""
    rows = pair_rows(3, 8)
    write_jsonl(tmp_path / "dup.jsonl", rows + [rows[0]])
    monkeypatch.chdir(tmp_path)
    code, output = repo("score", "dup.jsonl", "--model", tiny_llama, "--out", "c")
    assert code == 2 and is_one_line_error(output), output
    assert ("error: dup.jsonl line 9 (row_id 8), field 'annotator': annotator 'ann' labelled this pair already at "
            "row_id 0; keep one label per annotator and pair") in output
    assert not (tmp_path / "c").exists()


def test_train_needs_no_data_table(tmp_path, monkeypatch):
    """Was: a repo.toml with [train] scores and policy but no [data] was refused for the missing data.path."""
    (tmp_path / "repo.toml").write_text('[train]\nscores = "cache"\npolicy = "some/model"\n')
    monkeypatch.chdir(tmp_path)
    built = []
    monkeypatch.setattr("re_po.stages.train.run", lambda cfg: built.append(cfg) or tmp_path)
    code, output = repo("train")
    assert code == 0, output
    assert (built[0].scores, built[0].policy) == (tmp_path / "cache", "some/model")
    code, output = repo("score")  # what reads the dataset asks for it
    assert code == 2 and is_one_line_error(output)
    assert "give data (repo.toml's data.path): on the command line, or in" in output


# ---- the hostile-input sweep (bench/hostile_inputs.py): what it found ---------------------------------------------

@pytest.mark.parametrize("text, message", [
    ('prompt,chosen,rejected\n"the cat,sat,ran\nhello,world,sky\n',
     'cannot read it as csv: a quoted field is never closed (an opening " without its closing one)'),
    ("prompt,chosen,rejected\nthe cat,sat,ran\nhello,world,sky,extra\n",
     "cannot read it as csv: found more fields than defined in 'Schema'"),
])
def test_a_malformed_csv_is_one_line(tiny_llama, tmp_path, monkeypatch, text, message):
    """Was: polars' error of many lines (the field's text, then hints on reader options re-po sets itself)."""
    (tmp_path / "bad.csv").write_text(text)
    monkeypatch.chdir(tmp_path)
    code, output = repo("score", "bad.csv", "--model", tiny_llama, "--out", "c", "--no-embeddings")
    assert code == 2 and is_one_line_error(output), output
    assert f"error: bad.csv: {message}" in output and not (tmp_path / "c").exists()


def test_a_run_record_of_another_shape_is_one_line(in_project, tmp_path):
    """Was: `TypeError: list indices must be integers or slices, not str`, a traceback, for a config.json holding a
    JSON list (train --resume), and a KeyError for one without the cache key (evaluate)."""
    run = tmp_path / "run"
    shutil.copytree(in_project / "workspace" / "train", run)
    for record in ("[1, 2]", json.dumps({"config": {}})):
        (run / "config.json").write_text(record)
        before = listing(run)
        for args in (["train", "--out", run, "--resume"], ["evaluate", "pairs.jsonl", "--run", run, "--out",
                                                           tmp_path / "ev"], ["inspect-noise", run]):
            code, output = repo(*args)
            assert code == 2 and is_one_line_error(output), output
            assert (f"error: {run / 'config.json'} is not a re-po run record (no \"config\" object naming the run's "
                    "\"scores\", or a \"cache_key\" that is no object)") in output
        assert listing(run) == before and not (tmp_path / "ev").exists()
    (run / "config.json").write_text(json.dumps({"config": {"scores": "s"}}))  # no cache key: what evaluate reads
    code, output = repo("evaluate", "pairs.jsonl", "--run", run, "--out", tmp_path / "ev")
    assert code == 2 and is_one_line_error(output), output
    assert f"error: {run / 'config.json'} names no cache key (the run's reference model and lengths)" in output


def test_resume_with_settings_of_another_shape_is_one_line(in_project, tmp_path):
    """Was: a TypeError traceback where the run's [estimate] settings hold a name TrainConfig does not have."""
    run = tmp_path / "run"
    shutil.copytree(in_project / "workspace" / "train", run)
    record = json.loads((run / "config.json").read_text())
    record["config"]["estimate"] = {"bogus": 1}
    (run / "config.json").write_text(json.dumps(record))
    code, output = repo("train", "--out", run, "--resume")
    assert code == 2 and is_one_line_error(output), output
    assert f"error: {run / 'config.json'}: its settings are not a run's of this re-po" in output


def test_a_model_of_its_own_code_is_refused_without_a_prompt(in_project, tiny_llama, tmp_path, monkeypatch):
    """Was: transformers asked on the terminal "Do you wish to run the custom code? [y/N]", then, on no answer, an
    error of several lines telling to pass trust_remote_code=True, which re-po has no flag for."""
    model = Path(shutil.copytree(tiny_llama, tmp_path / "model"))
    (model / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('ran')\nclass Evil:\n    pass\n")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="evil-arch", auto_map={"AutoConfig": "evil.Evil", "AutoModelForCausalLM": "evil.Evil"})
    (model / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked on the terminal"))
    for args in (["score", "pairs.jsonl", "--model", model, "--out", tmp_path / "c"],
                 ["train", "--policy", model, "--out", tmp_path / "run"]):
        code, output = repo(*args)
        assert code == 2 and is_one_line_error(output), output
        assert (f"error: model folder {model}: its config.json names the folder's own code (auto_map) for model type "
                "'evil-arch', which transformers does not know; re-po never runs a model folder's code") in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_evaluate_refuses_a_broken_policy_before_scoring(in_project, tmp_path, monkeypatch):
    """Was: the reference scored every held-out pair into --out, then the refusal of final/'s weights."""
    run = Path(shutil.copytree(in_project / "workspace" / "train", tmp_path / "run"))
    (run / "final" / "model.safetensors").unlink()
    (run / "final" / "pytorch_model.bin").write_bytes(b"not a pickle of tensors")
    monkeypatch.setattr("re_po.data.scoring.run", lambda cfg: pytest.fail("scored before refusing"))
    code, output = repo("evaluate", "pairs.jsonl", "--run", run, "--out", tmp_path / "ev")
    assert code == 2 and is_one_line_error(output), output
    assert f"error: model folder {run / 'final'}: pytorch_model.bin is not a weights-only pickle" in output
    assert not (tmp_path / "ev").exists()


def test_an_integer_setting_beyond_any_use_is_one_line(in_project, tmp_path):
    """Was: `--batch-size 10000000000000000000000` trained until torch's `full()` overflowed, with a traceback."""
    code, output = repo("train", "--out", tmp_path / "run", "--batch-size", "1" + "0" * 22)
    assert code == 2 and is_one_line_error(output), output
    assert "error: batch_size is 10000000000000000000000: larger than any count or size re-po can use" in output
    assert not (tmp_path / "run").exists()


class Payload:
    """A pickle that writes `marker` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_a_crafted_rng_state_file_is_refused_on_resume_and_runs_nothing(in_project, tmp_path):
    """Was: accelerate's load_state swallowed the file's UnpicklingError ("Could not load random states", at info
    level) and the run resumed, exit 0, with other random states than the ones it had saved."""
    import pickle

    run = tmp_path / "run"
    code, output = repo("train", "--out", run, "--max-steps", "3", "--save-every", "1")
    assert code == 0, output
    step = run / "checkpoints" / "step-00000003"
    (step / "random_states_0.pkl").write_bytes(pickle.dumps(Payload(tmp_path / "ran")))
    code, output = repo("train", "--out", run, "--resume")
    assert code == 2 and one_error_line(output), output
    assert (f"error: checkpoint {step} cannot be restored (UnpicklingError: " in output
            and "delete it to resume from an earlier one, or start the run again" in output)
    assert not (tmp_path / "ran").exists()
