"""The command shape the user wrote: `repo score --model ref`, `repo train --loss ipo --robust`,
`repo inspect-noise`, run from a folder with a repo.toml; and each command's flags mirror its Config."""

import dataclasses
import inspect
import json

import polars as pl
from typer.testing import CliRunner

import cli
from stages.evaluate import EvaluateConfig
from stages.score import ScoreConfig
from stages.train import TrainConfig

runner = CliRunner()


def _params(command) -> set[str]:
    return set(inspect.signature(command).parameters)


def test_train_flags_are_the_train_config_fields():
    # the estimate's settings come from repo.toml's [estimate] table, as for inspect-noise
    assert _params(cli.train_cmd) == {f.name for f in dataclasses.fields(TrainConfig)} - {"estimate"}


def test_score_flags_are_the_score_config_fields():
    # columns come from repo.toml's [data] table, not from flags
    assert _params(cli.score_cmd) == {f.name for f in dataclasses.fields(ScoreConfig)} - {"columns"}


def test_evaluate_flags_are_evaluate_config_fields():
    assert _params(cli.evaluate_cmd) <= {f.name for f in dataclasses.fields(EvaluateConfig)}


def test_the_short_commands_run_as_written_from_a_project_folder(tiny_llama, tmp_path, monkeypatch):
    rows = [
        {"prompt": "what is the sky ?", "chosen": "the sky is blue", "rejected": "the sky is red",
         "worker": "a" if i % 2 else "b", "is_flipped": i % 5 == 0}
        for i in range(12)
    ]
    rows = [dict(r, chosen=f"{r['chosen']} {'!' * (i % 3 + 1)}") for i, r in enumerate(rows)]
    pl.DataFrame(rows).write_ndjson(tmp_path / "pairs.jsonl")
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(cli.app, ["init", "--data", "pairs.jsonl", "--ref", str(tiny_llama)]).exit_code == 0
    toml = (tmp_path / "repo.toml").read_text()
    toml = toml.replace('# annotator = "annotator"', 'annotator = "worker"')
    toml = toml.replace("[train]\n", "[train]\nbatch_size = 4\nepochs = 2\nlr = 0.001\n")
    (tmp_path / "repo.toml").write_text(toml)

    result = runner.invoke(cli.app, ["score", "--model", "ref"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "workspace" / "scores" / "manifest.json").exists()

    result = runner.invoke(cli.app, ["train", "--loss", "ipo", "--robust"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "workspace" / "train" / "config.json").read_text())["config"]
    assert (config["loss"], config["robust"], config["batch_size"], config["epochs"]) == ("ipo", True, 4, 2)
    assert config["lr"] == 0.001  # from repo.toml; the flags given overrode only loss and robust

    result = runner.invoke(cli.app, ["inspect-noise"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "workspace" / "inspect" / "summary.json").read_text())
    assert {a["annotator"] for a in summary["annotators"]} == {"a", "b"}
    assert summary["pairs"] == 12


def test_a_stage_error_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "repo.toml").write_text('[data]\npath = "missing.jsonl"\n[models]\nref = "./no-model"\n')
    result = runner.invoke(cli.app, ["score"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ")
    assert "no-model" in result.output
    assert "Traceback" not in result.output
