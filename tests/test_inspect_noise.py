"""`repo inspect-noise` on a synthetic robust run with injected flips.

The run folder and score cache are written here directly, per brief/contract.md: an input dataset,
its cache (through data/schema.py, as `repo score` writes it) and a two-epoch run whose w are set by
hand, so every expected number is counted independently in the test.
"""

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import is_one_line_error
from PIL import Image
from typer.testing import CliRunner

from re_po.cli import app
from re_po.data import run_folder, schema
from re_po.data.columns import Columns
from re_po.data.pairs import pair_values, read_pairs
from re_po.stages.inspect_noise import CleanAction, InspectConfig, run

runner = CliRunner()

N = 40
ANNOTATOR = ["careful"] * 20 + ["sloppy"] * 20
FLIPPED = {3, 11, 20, 22, 24, 26, 28, 30, 32, 34}  # careful: 2 of 20 wrong, sloppy: 8 of 20
MISSED = {11}  # a wrong label the model agrees with
FALSE_ALARMS = {5, 21}  # right labels the model disagrees with
ETA = {"careful": 0.95, "sloppy": 0.7}
WORDS = "the cat sat on a mat while dog ran to sun".split()


def margins() -> np.ndarray:
    """z of the last epoch: negative for wrong labels and false alarms, positive otherwise (distinct)."""
    z = np.array([2.0 + 0.05 * i for i in range(N)])
    for i in FLIPPED | FALSE_ALARMS:
        z[i] = -1.0 - 0.1 * i
    for i in MISSED:
        z[i] = 1.5
    return z


def weights(z: np.ndarray) -> np.ndarray:
    logit = np.array([math.log(ETA[a] / (1 - ETA[a])) for a in ANNOTATOR])
    return 1 / (1 + np.exp(-(z + logit)))


def input_rows(conversational: bool = False) -> list[dict]:
    rows = []
    for i in range(N):
        prompt = f"tell me about the {WORDS[i % len(WORDS)]} number {i}"
        good, bad = f"good answer {i} " + " ".join(WORDS[: i % 7 + 1]), f"bad answer {i}"
        chosen, rejected = (bad, good) if i in FLIPPED else (good, bad)
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if conversational:  # implicit prompt: the shared first message
            user = {"role": "user", "content": prompt}
            row = {"chosen": [user, {"role": "assistant", "content": chosen}],
                   "rejected": [user, {"role": "assistant", "content": rejected}]}
        row |= {"annotator": ANNOTATOR[i], "is_flipped": i in FLIPPED, "domain": "toy",
                "chosen_score": float(i), "rejected_score": -float(i)}
        rows.append(row)
    return rows


def write_input(folder: Path, fmt: str, conversational: bool = False) -> Path:
    rows = input_rows(conversational)
    path = folder / f"pairs{fmt}"
    if fmt == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == ".parquet":
        pl.DataFrame(rows).write_parquet(path)
    else:
        pl.DataFrame(rows).write_csv(path)
    return path


def write_cache(folder: Path, source: Path) -> Path:
    """A complete score cache of `source`, in two parts, as `repo score` writes it."""
    read = read_pairs(source)
    n = read.table.height
    scored = pl.DataFrame({
        "prompt_ids": [[2, 7, 8]] * n, "chosen_ids": [[9, 3]] * n, "rejected_ids": [[10, 3]] * n,
        "ref_chosen_logps": np.linspace(-5, -4, n), "ref_rejected_logps": np.linspace(-6, -5, n),
        "chosen_len": [2] * n, "rejected_len": [2] * n, "truncated": [False] * n,
    }, schema_overrides={k: v for k, v in schema.SCORE_COLUMNS.items() if k not in ("row_id", "pair_id", "annotator")})
    df = pl.concat([read.table.select("row_id", "pair_id", "annotator"), scored,
                    read.table.drop("row_id", "pair_id", "annotator")], how="horizontal")
    key = schema.make_key(ref_model="tiny", weights_sha="w", tokenizer_sha="t", chat_template_sha="c",
                          max_length=64, max_prompt_length=32, dtype="float32", backend="hf",
                          backend_version="0", dataset_sha=read.dataset_sha, embed_layers="")
    manifest = schema.open_cache(folder, key, {"num_parts": 2, "num_rows": n}, overwrite=False)
    schema.write_part(folder, manifest, 0, df.head(n // 2), [])
    schema.write_part(folder, manifest, 1, df.tail(n - n // 2), [])
    schema.finish_cache(folder, manifest, [])
    return folder


def write_record(folder: Path, scores: Path, robust: bool = True, epochs: int = 2, with_key: bool = True) -> None:
    """config.json as `repo train` writes it (the TrainConfig under "config", the cache key)."""
    key = schema.read_scores(scores)[1] if with_key else None
    record = {"config": {"scores": str(scores), "out_dir": str(folder), "robust": robust, "epochs": epochs},
              "num_processes": 1, "cache_key": key}
    run_folder.write_json(record, folder / run_folder.CONFIG)


def write_run(folder: Path, scores: Path, epochs: int = 2, with_key: bool = True) -> Path:
    """config.json, posteriors and annotators per epoch (z grows towards margins()), eta_steps."""
    folder.mkdir(parents=True)
    write_record(folder, scores, epochs=epochs, with_key=with_key)
    cached, _ = schema.read_scores(scores)
    steps = [{"step": 0, "epoch": 1, "event": "init", "annotator": name, "eta": 0.9} for name in ETA]
    for epoch in range(1, epochs + 1):
        z = margins() * epoch / epochs
        w = weights(z)
        posteriors = pl.DataFrame({
            "row_id": cached["row_id"], "pair_id": cached["pair_id"], "annotator": cached["annotator"],
            "z": z, "p": 1 / (1 + np.exp(-z)), "w": w, "flagged": w < 0.5, "epoch": [epoch] * N},
            schema_overrides={"epoch": pl.Int32})
        run_folder.write_parquet(posteriors, run_folder.epoch_file(folder, run_folder.POSTERIORS, epoch))
        eta = {name: 0.9 + (ETA[name] - 0.9) * epoch / epochs for name in ETA}
        annotators = posteriors.group_by("annotator").agg(
            labels=pl.len(), w_mean=pl.col("w").mean(), flagged=pl.col("flagged").sum()
        ).with_columns(eta=pl.col("annotator").replace_strict(eta, default=0.8), epoch=pl.lit(epoch, pl.Int32))
        run_folder.write_parquet(annotators.select("annotator", "eta", "labels", "w_mean", "flagged", "epoch"),
                                 run_folder.epoch_file(folder, run_folder.ANNOTATORS, epoch))
        for s in range(5):
            step = (epoch - 1) * 5 + s + 1
            for name in ETA:
                steps.append({"step": step, "epoch": epoch, "event": "step", "annotator": name,
                              "eta": 0.9 + (ETA[name] - 0.9) * step / (5 * epochs)})
    run_folder.write_parquet(pl.DataFrame(steps), folder / run_folder.ETA_STEPS)
    return folder


@pytest.fixture
def setup(tmp_path):
    """(input path, cache, run) for the plain JSON Lines input."""
    source = write_input(tmp_path, ".jsonl")
    scores = write_cache(tmp_path / "scores", source)
    return source, scores, write_run(tmp_path / "run", scores)


def flagged_rows(threshold=0.5) -> set[int]:
    return {i for i, w in enumerate(weights(margins())) if w < threshold}


# ---- the stage --------------------------------------------------------------------------------------------

def test_report_table_and_suspicious_pairs(setup, tmp_path, capsys):
    _, _, run_dir = setup
    out_dir = run(InspectConfig(run=run_dir, out_dir=tmp_path / "inspect", show=3))
    printed = capsys.readouterr().out
    assert printed == (out_dir / "report.txt").read_text()
    lines = printed.splitlines()
    expected_flags = flagged_rows()
    assert f"{N} pairs, {len(expected_flags)} flagged (w < 0.5)" in lines[0]
    # the least reliable annotator first, with its counts
    table = [line.split() for line in lines[2:5]]
    w = weights(margins())
    assert table[0][0] == "annotator"
    for row, name in zip(table[1:], ["sloppy", "careful"]):
        rows = [i for i in range(N) if ANNOTATOR[i] == name]
        assert row[:5] == [name, "20", f"{ETA[name]:.3f}", f"{w[rows].mean():.3f}",
                           str(len(expected_flags & set(rows)))]
        assert float(row[5]) == pytest.approx(1 - len(FLIPPED & set(rows)) / 20, abs=1e-3)  # accuracy
    # the three lowest w, with excerpts of the right texts
    lowest = np.argsort(w)[:3]
    blocks = [line for line in lines if line.lstrip()[:2] in ("1.", "2.", "3.")]
    assert [f"row_id {i}" in block for i, block in zip(lowest, blocks)] == [True] * 3
    assert f"w {w[lowest[0]]:.4f}" in blocks[0] and "FLAGGED" in blocks[0]
    rows = input_rows()
    assert f"prompt:   {rows[lowest[0]]['prompt']}" in printed
    assert f"rejected: {rows[lowest[0]]['rejected']}" in printed


def test_report_of_conversational_pairs_shows_the_last_messages(tmp_path, capsys):
    source = write_input(tmp_path, ".jsonl", conversational=True)
    run(InspectConfig(run=write_run(tmp_path / "run", write_cache(tmp_path / "scores", source)),
                      out_dir=tmp_path / "i", show=1))
    lowest = int(np.argmin(weights(margins())))
    rows = input_rows()
    printed = capsys.readouterr().out
    assert f"prompt:   [user] {rows[lowest]['prompt']}" in printed
    assert f"chosen:   [assistant] {rows[lowest]['chosen']}" in printed
    assert f"wrote {tmp_path / 'i' / 'report.txt'}, {tmp_path / 'i' / 'summary.json'}" in printed


def test_report_table_is_capped_but_summary_lists_every_annotator(tmp_path, capsys, monkeypatch):
    import re_po.stages.inspect_noise as stage

    monkeypatch.setattr(stage, "MAX_ANNOTATOR_ROWS", 5)
    rows = [r | {"annotator": f"rater-{i:02d}"} for i, r in enumerate(input_rows())]
    source = tmp_path / "many.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = write_cache(tmp_path / "scores", source)
    run_dir = write_run(tmp_path / "run", scores)
    eta = pl.DataFrame({"annotator": [r["annotator"] for r in rows], "eta": np.linspace(0.99, 0.6, N),
                        "labels": [1] * N, "w_mean": [0.5] * N, "flagged": [0] * N, "epoch": [2] * N},
                       schema_overrides={"epoch": pl.Int32})
    run_folder.write_parquet(eta, run_folder.epoch_file(run_dir, run_folder.ANNOTATORS, 2))
    summary = json.loads((run(InspectConfig(run=run_dir, out_dir=tmp_path / "i")) / "summary.json").read_text())
    table = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert [line.split()[0] for line in table[1:6]] == ["rater-39", "rater-38", "rater-37", "rater-36", "rater-35"]
    assert table[6] == f"... and {N - 5} more (all in summary.json)"
    assert len(summary["annotators"]) == N


def test_truth_metrics_equal_independent_counts(setup, tmp_path):
    _, _, run_dir = setup
    summary = json.loads((run(InspectConfig(run=run_dir, out_dir=tmp_path / "i")) / "summary.json").read_text())
    w = weights(margins())
    flags = flagged_rows()
    tp, fp, fn = len(flags & FLIPPED), len(flags - FLIPPED), len(FLIPPED - flags)
    wins = sum((1 - w[i] > 1 - w[j]) + 0.5 * (w[i] == w[j]) for i in FLIPPED for j in set(range(N)) - FLIPPED)
    truth = summary["truth"]
    assert truth["column"] == "is_flipped" and truth["noisy"] == len(FLIPPED)
    assert (truth["true_positives"], truth["false_positives"], truth["false_negatives"]) == (tp, fp, fn)
    assert truth["precision"] == pytest.approx(tp / (tp + fp))
    assert truth["recall"] == pytest.approx(tp / (tp + fn))
    assert truth["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert truth["roc_auc"] == pytest.approx(wins / (len(FLIPPED) * (N - len(FLIPPED))))
    by_name = {a["annotator"]: a for a in summary["annotators"]}
    assert by_name["careful"]["accuracy"] == pytest.approx(0.9) and by_name["sloppy"]["accuracy"] == 0.6
    assert by_name["sloppy"]["eta_abs_error"] == pytest.approx(0.1)
    assert truth["eta_abs_error_mean"] == pytest.approx((0.05 + 0.1) / 2)
    assert [a["annotator"] for a in summary["annotators"]] == ["sloppy", "careful"]
    assert summary["epoch"] == 2 and summary["epochs"] == [1, 2] and summary["flagged"] == len(flags)


def test_top_k_and_epoch(setup, tmp_path):
    _, _, run_dir = setup
    summary = json.loads((run(InspectConfig(run=run_dir, out_dir=tmp_path / "i", top_k=4, epoch=1,
                                            truth_col="is_flipped")) / "summary.json").read_text())
    w1 = weights(margins() / 2)
    assert summary["epoch"] == 1 and summary["flag_rule"] == {"top_k": 4} and summary["flagged"] == 4
    expected = set(np.argsort(w1)[:4].tolist())
    assert {p["row_id"] for p in summary["suspicious"][:4]} == expected
    assert summary["truth"]["true_positives"] == len(expected & FLIPPED)


def test_without_truth_column_there_are_no_truth_metrics(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "is_flipped"} for r in input_rows()]
    source = tmp_path / "plain.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = write_run(tmp_path / "run", write_cache(tmp_path / "scores", source))
    summary = json.loads((run(InspectConfig(run=run_dir, out_dir=tmp_path / "i")) / "summary.json").read_text())
    assert summary["truth"] is None and "accuracy" not in summary["annotators"][0]


@pytest.mark.parametrize("fmt", [".jsonl", ".csv", ".parquet"])
def test_dump_holds_flagged_pairs_with_every_column(setup, tmp_path, fmt):
    _, _, run_dir = setup
    out = tmp_path / f"flagged{fmt}"
    run(InspectConfig(run=run_dir, out_dir=tmp_path / "i", dump=out))
    dump = {".jsonl": pl.read_ndjson, ".csv": pl.read_csv, ".parquet": pl.read_parquet}[fmt](out)
    assert set(dump["row_id"]) == flagged_rows()
    assert dump["w"].is_sorted()
    for name in ["pair_id", "annotator", "z", "w", "prompt", "chosen", "rejected", "is_flipped", "domain",
                 "chosen_score", "ref_chosen_logps"]:
        assert name in dump.columns, name
    assert "chosen_ids" not in dump.columns
    by_row = {r["row_id"]: r for r in dump.iter_rows(named=True)}
    rows = input_rows()
    for i, got in by_row.items():
        assert (got["chosen"], got["is_flipped"]) == (rows[i]["chosen"], rows[i]["is_flipped"])


def test_csv_dump_json_encodes_nested_values(tmp_path):
    rows = [r | {"tags": ["x", str(i)]} for i, r in enumerate(input_rows())]
    source = tmp_path / "tagged.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = write_run(tmp_path / "run", write_cache(tmp_path / "scores", source))
    run(InspectConfig(run=run_dir, out_dir=tmp_path / "i", dump=tmp_path / "f.csv"))
    dump = pl.read_csv(tmp_path / "f.csv")
    assert {json.dumps(["x", str(i)]) for i in flagged_rows()} == set(dump["tags"])


@pytest.mark.parametrize("fmt,conversational", [(".jsonl", False), (".csv", False), (".parquet", False),
                                                (".jsonl", True), (".parquet", True)])
@pytest.mark.parametrize("action", ["drop", "flip"])
def test_export_clean_is_readable_and_changes_the_flagged_rows(tmp_path, fmt, conversational, action):
    source = write_input(tmp_path, fmt, conversational)
    run_dir = write_run(tmp_path / "run", write_cache(tmp_path / "scores", source))
    clean_path = tmp_path / f"clean{fmt}"
    run(InspectConfig(run=run_dir, out_dir=tmp_path / "i", export_clean=clean_path, action=CleanAction(action),
                      data=str(source)))
    before, after = read_pairs(source), read_pairs(clean_path)  # what `repo score` reads
    assert after.conversational == conversational and not after.rejects
    flags = flagged_rows()
    old = list(zip(pair_values(before.table), before.table["is_flipped"].to_list()))
    new = list(zip(pair_values(after.table), after.table["is_flipped"].to_list()))
    if fmt == ".csv":  # CSV may read every column as text
        old = [(v, str(t).lower() == "true") for v, t in old]
        new = [(v, str(t).lower() == "true") for v, t in new]
    if action == "drop":
        assert new == [row for i, row in enumerate(old) if i not in flags]
        assert after.table["pair_id"].to_list() == [p for i, p in enumerate(before.table["pair_id"]) if i not in flags]
    else:
        expected = [((p, r, c), not t) if i in flags else ((p, c, r), t) for i, ((p, c, r), t) in enumerate(old)]
        assert new == expected
        scores = after.table.select("chosen_score", "rejected_score").rows()
        raw = [(float(i), -float(i)) for i in range(N)]
        expected_scores = [(b, a) if i in flags else (a, b) for i, (a, b) in enumerate(raw)]
        assert [(float(a), float(b)) for a, b in scores] == expected_scores  # per-response columns follow
        if fmt == ".jsonl" and not conversational:  # the flip fixed the wrong labels it caught
            assert sum(t for _, t in new) == len(FLIPPED ^ (flags & FLIPPED)) + len(flags - FLIPPED)


def test_plots_open_and_are_not_blank(setup, tmp_path):
    _, _, run_dir = setup
    summary = json.loads((run(InspectConfig(run=run_dir, out_dir=tmp_path / "i", plots=tmp_path / "plots"))
                          / "summary.json").read_text())
    paths = [Path(p) for p in summary["outputs"]["plots"]]
    assert sorted(p.name for p in paths) == ["annotators.png", "eta_steps.png", "reliability.png", "w_flagged.png",
                                             "w_hist.png"]
    for path in paths:
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
        assert pixels.shape[0] > 100 and pixels.var() > 0, path


# ---- errors -----------------------------------------------------------------------------------------------

def test_run_without_posteriors_says_what_to_run(tmp_path):
    source = write_input(tmp_path, ".jsonl")
    scores = write_cache(tmp_path / "scores", source)
    for robust, hint in [(False, "repo train --robust"), (True, "first epoch")]:
        folder = tmp_path / f"run-{robust}"
        folder.mkdir()
        write_record(folder, scores, robust=robust)
        with pytest.raises(FileNotFoundError, match=hint):
            run(InspectConfig(run=folder, out_dir=tmp_path / "i"))
    with pytest.raises(FileNotFoundError, match="repo train --robust"):
        run(InspectConfig(run=tmp_path / "nothing", out_dir=tmp_path / "i"))


def test_unknown_truth_column_lists_the_columns(setup, tmp_path):
    with pytest.raises(ValueError, match="'truth' is not in the data; the columns are: .*is_flipped.*domain"):
        run(InspectConfig(run=setup[2], out_dir=tmp_path / "i", truth_col="truth"))


def test_bad_truth_values_and_epoch_and_cache(setup, tmp_path):
    source, scores, run_dir = setup
    with pytest.raises(ValueError, match="row_id 0: field 'domain' holds 'toy'; expected true/false"):
        run(InspectConfig(run=run_dir, out_dir=tmp_path / "i", truth_col="domain"))
    with pytest.raises(ValueError, match="'chosen_score' has type Float64"):
        run(InspectConfig(run=run_dir, out_dir=tmp_path / "i", truth_col="chosen_score"))
    with pytest.raises(ValueError, match=r"no posteriors for epoch 7; epochs written: \[1, 2\]"):
        run(InspectConfig(run=run_dir, out_dir=tmp_path / "i", epoch=7))
    half = tmp_path / "half.jsonl"
    half.write_text("".join(source.read_text().splitlines(keepends=True)[:10]))
    other = write_cache(tmp_path / "s2", half)
    with pytest.raises(ValueError, match="(?s)does not match.*differing fields: dataset_sha"):
        run(InspectConfig(run=run_dir, out_dir=tmp_path / "i", scores=other))
    keyless = write_run(tmp_path / "keyless", scores, with_key=False)  # a record without the cache key
    with pytest.raises(ValueError, match="share 10 row_ids"):
        run(InspectConfig(run=keyless, out_dir=tmp_path / "i", scores=other))
    with pytest.raises(ValueError, match="not the dataset the run's score cache was made from"):
        run(InspectConfig(run=run_dir, out_dir=tmp_path / "i", export_clean=tmp_path / "c.jsonl", data=str(half)))


def test_threshold_and_top_k_are_one_rule_or_the_other():
    assert InspectConfig(run=Path("r"), out_dir=Path("o")).threshold == 0.5
    assert InspectConfig(run=Path("r"), out_dir=Path("o"), top_k=3).threshold is None
    with pytest.raises(ValueError, match="not both"):
        InspectConfig(run=Path("r"), out_dir=Path("o"), top_k=3, threshold=0.4)


def test_config_checks():
    with pytest.raises(ValueError, match="threshold"):
        InspectConfig(run=Path("r"), out_dir=Path("o"), threshold=0.0)
    with pytest.raises(ValueError, match="top_k"):
        InspectConfig(run=Path("r"), out_dir=Path("o"), top_k=0)
    with pytest.raises(ValueError, match="unknown table format"):
        InspectConfig(run=Path("r"), out_dir=Path("o"), dump=Path("x.txt"))
    with pytest.raises(ValueError, match="needs the input dataset"):
        InspectConfig(run=Path("r"), out_dir=Path("o"), export_clean=Path("x.jsonl"))


# ---- the command line -------------------------------------------------------------------------------------

def test_cli_every_option(setup, tmp_path, monkeypatch):
    source, scores, run_dir = setup
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [
        "inspect-noise", str(run_dir), "--out-dir", "insp", "--epoch", "1", "--top-k", "5", "--show", "2",
        "--scores", str(scores), "--truth-col", "is_flipped", "--dump", "f.parquet", "--export-clean", "c.jsonl",
        "--action", "flip", "--data", str(source), "--plots", "plots"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "insp" / "summary.json").read_text())
    assert summary["epoch"] == 1 and summary["flag_rule"] == {"top_k": 5} and len(summary["suspicious"]) == 2
    assert pl.read_parquet(tmp_path / "f.parquet").height == 5
    assert read_pairs(tmp_path / "c.jsonl").table.height == N
    assert len(list((tmp_path / "plots").glob("*.png"))) == 5
    assert "the 2 most suspicious pairs" in result.output


def test_cli_defaults_come_from_the_project(tmp_path, monkeypatch):
    """No flags: the run under <workspace>/train, output to <workspace>/inspect/epoch-N, [inspect] threshold."""
    source = write_input(tmp_path, ".jsonl")
    scores = write_cache(tmp_path / "ws" / "scores", source)
    write_run(tmp_path / "ws" / "train", scores)
    (tmp_path / "repo.toml").write_text(
        f'workspace = "ws"\n[data]\npath = "{source.name}"\n[models]\nref = "x"\n[inspect]\nthreshold = 0.3\n')
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["inspect-noise", "--export-clean", "clean.jsonl"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ws" / "inspect" / "epoch-2" / "summary.json").read_text())
    assert summary["flag_rule"] == {"threshold": 0.3} and summary["flagged"] == len(flagged_rows(0.3))
    assert read_pairs(tmp_path / "clean.jsonl").table.height == N - len(flagged_rows(0.3))
    result = runner.invoke(app, ["inspect-noise", "--threshold", "0.6"])  # a flag beats the file
    summary = json.loads((tmp_path / "ws" / "inspect" / "epoch-2" / "summary.json").read_text())
    assert summary["flag_rule"] == {"threshold": 0.6}


@pytest.mark.parametrize("args,message", [
    (["--truth-col", "nope"], "columns are:"),
    (["--epoch", "9"], "epochs written"),
    (["--threshold", "0"], "threshold must lie in"),
    (["--dump", "x.txt"], "unknown table format"),
    (["--action", "burn"], "burn"),
])
def test_cli_errors(setup, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["inspect-noise", str(setup[2]), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_cli_run_without_posteriors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    run_folder.write_json({"config": {"scores": "s", "robust": False}}, folder / run_folder.CONFIG)
    result = runner.invoke(app, ["inspect-noise", str(folder)])
    assert result.exit_code == 2 and "repo train --robust" in result.output
    result = runner.invoke(app, ["inspect-noise"])  # the default run folder does not exist
    assert result.exit_code == 2 and "not a run folder" in result.output


def test_columns_default_is_the_readers():
    assert InspectConfig(run=Path("r"), out_dir=Path("o")).columns == Columns()


# ---- end to end -------------------------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    """One BLAS thread: the machine is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_score_train_inspect_then_rescore_the_export(tiny_llama, tmp_path, monkeypatch, one_thread):
    """The real stages: `repo score` → `repo train --robust` (2 epochs) → `repo inspect-noise`, and the
    cleaned export is scored again by `repo score`: the flagged rows come back with their log-probs swapped."""
    from re_po.data.scoring import ScoreConfig
    from re_po.data.scoring import run as score
    from re_po.stages.train import TrainConfig
    from re_po.stages.train import run as train

    words = "the cat sat on a mat dog ran sun sky".split()
    rows = [{"prompt": f"tell me about the {words[i % 10]}", "chosen": " ".join(words[: i % 6 + 1]),
             "rejected": " ".join(words[::-1][: i % 4 + 1]), "annotator": ["alice", "bob"][i % 2],
             "is_flipped": i % 5 == 0} for i in range(16)]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = score(ScoreConfig(data=str(source), model=str(tiny_llama), out=tmp_path / "scores", device="cpu",
                               max_length=64, max_prompt_length=32))
    run_dir = train(TrainConfig(scores=scores, out_dir=tmp_path / "run", robust=True, epochs=2, batch_size=4,
                                lr=1e-2, warmup_ratio=0.0, device="cpu"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["inspect-noise", str(run_dir), "--out-dir", "insp", "--top-k", "4",
                                 "--dump", "flagged.csv", "--export-clean", "clean.jsonl", "--action", "flip",
                                 "--data", str(source), "--plots", "plots"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "insp" / "summary.json").read_text())
    assert summary["epoch"] == 2 and summary["pairs"] == 16 and summary["flagged"] == 4
    assert summary["truth"]["column"] == "is_flipped" and summary["truth"]["noisy"] == 4
    posteriors = pl.read_parquet(run_dir / "posteriors" / "epoch-0002.parquet")
    lowest = set(posteriors.sort("w")["row_id"].head(4).to_list())
    assert set(pl.read_csv(tmp_path / "flagged.csv")["row_id"]) == lowest
    rescored, _ = schema.read_scores(score(ScoreConfig(data=str(tmp_path / "clean.jsonl"), model=str(tiny_llama),
                                                       out=tmp_path / "scores2", device="cpu", max_length=64,
                                                       max_prompt_length=32)))
    first, _ = schema.read_scores(scores)
    swapped = first.select("row_id", chosen="rejected", rejected="chosen", ref_chosen_logps="ref_rejected_logps")
    kept = first.select("row_id", "chosen", "rejected", "ref_chosen_logps")
    expected = pl.concat([swapped.filter(pl.col("row_id").is_in(lowest)),
                          kept.filter(~pl.col("row_id").is_in(lowest))]).sort("row_id")
    got = rescored.select("row_id", "chosen", "rejected", "ref_chosen_logps")
    assert got.drop("ref_chosen_logps").equals(expected.drop("ref_chosen_logps"))
    assert np.allclose(got["ref_chosen_logps"], expected["ref_chosen_logps"], atol=1e-4)


def test_nothing_flagged_still_writes_every_output(setup, tmp_path):
    source, _, run_dir = setup
    summary = json.loads((run(InspectConfig(
        run=run_dir, out_dir=tmp_path / "i", threshold=1e-6, dump=tmp_path / "f.csv", plots=tmp_path / "plots",
        export_clean=tmp_path / "c.jsonl", action=CleanAction.flip, data=str(source))) / "summary.json").read_text())
    assert summary["flagged"] == 0 and summary["truth"]["precision"] is None and summary["truth"]["recall"] == 0
    assert pl.read_csv(tmp_path / "f.csv").height == 0
    assert read_pairs(tmp_path / "c.jsonl").table.drop("row_id").equals(read_pairs(source).table.drop("row_id"))
    assert len(summary["outputs"]["plots"]) == 5


def test_export_clean_of_a_file_with_a_malformed_line_is_one_clear_error(setup, tmp_path, monkeypatch):
    source, _, run_dir = setup
    source.write_text(source.read_text() + '{"prompt": "cut sho\n')  # the scorer skipped it: same dataset
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["inspect-noise", str(run_dir), "--export-clean", "c.jsonl", "--data", str(source)])
    assert result.exit_code == 2 and f"{source}: cannot be read as a whole .jsonl table" in result.output
    assert is_one_line_error(result.output) and not (tmp_path / "c.jsonl").exists()


def test_a_failed_inspect_leaves_no_folder_and_a_foreign_out_dir_is_refused(setup, tmp_path):
    source, scores, run_dir = setup
    with pytest.raises(ValueError, match="no posteriors for epoch 9"):
        run(InspectConfig(run=run_dir, out_dir=tmp_path / "insp", epoch=9))
    assert not (tmp_path / "insp").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="re-po did not make it"):
        run(InspectConfig(run=run_dir, out_dir=tmp_path / "mine"))
    with pytest.raises(ValueError, match="re-po did not make it"):
        run(InspectConfig(run=run_dir, out_dir=tmp_path / "insp", plots=tmp_path / "mine"))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    run(InspectConfig(run=run_dir, out_dir=tmp_path / "insp", plots=tmp_path / "insp" / "plots"))
    run(InspectConfig(run=run_dir, out_dir=tmp_path / "insp", plots=tmp_path / "insp" / "plots"))  # its own


@pytest.mark.parametrize("flag", ["out_dir", "plots", "dump", "html", "review"])
def test_no_output_is_written_into_the_run_folder_or_the_score_cache(setup, tmp_path, flag):
    """Refused before any work, for a run folder and for a score cache inspected directly; nothing is written."""
    source, scores, run_dir = setup
    for inspected, folder in ((run_dir, run_dir), (run_dir, scores), (scores, scores)):
        before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
        target = folder / {"out_dir": "x", "plots": "x", "dump": "x.jsonl", "html": "x.html", "review": "x.json"}[flag]
        paths = {"out_dir": tmp_path / "i", flag: target}
        with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')} .* is inside the (run folder|score cache)"):
            run(InspectConfig(run=inspected, **paths))
        assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
        assert not (tmp_path / "i").exists()


def test_export_clean_never_overwrites_the_input_or_writes_into_the_cache(setup, tmp_path):
    source, scores, run_dir = setup
    for target, message in ((source, "is the input dataset"), (scores / "clean.jsonl", "inside the score cache"),
                            (run_dir / "clean.jsonl", "inside the run folder")):
        before = source.read_bytes()
        with pytest.raises(ValueError, match=message):
            run(InspectConfig(run=run_dir, out_dir=tmp_path / "i", export_clean=target, data=str(source)))
        assert source.read_bytes() == before and not (scores / "clean.jsonl").exists()


def test_a_damaged_epoch_file_is_one_line(setup, tmp_path, monkeypatch):
    """Found by the sweep of issue 25: a posteriors file cut short gave polars' traceback."""
    source, scores, run_dir = setup
    damaged = run_folder.epoch_file(run_dir, run_folder.POSTERIORS, 2)
    damaged.write_bytes(damaged.read_bytes()[:100])
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["inspect-noise", str(run_dir), "--out-dir", "i"])
    assert result.exit_code == 2 and is_one_line_error(result.output), result.output
    assert f"error: {damaged} is not a readable Parquet file" in result.output and "--epoch" in result.output
    assert not (tmp_path / "i").exists()
