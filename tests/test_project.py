"""The project file: `repo init` writes it, commands read it, flags override it, errors name the key."""

import dataclasses
import enum
import tomllib
from pathlib import Path

import pytest
from conftest import is_one_line_error
from typer.testing import CliRunner

from re_po.cli import app
from re_po.data.project import ProjectError, default_model_dir, load_project, merge_config

runner = CliRunner()


class Color(enum.StrEnum):
    red = "red"
    blue = "blue"


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    out: Path
    beta: float = 0.1
    epochs: int = 1
    robust: bool = False
    color: Color = Color.red
    name: str | None = None


def test_init_writes_commented_project_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["init", "--data", "pairs.jsonl", "--ref", "org/model"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "repo.toml").read_text()
    assert text.count("\n#") > 10  # commented for a reader, not just keys
    parsed = tomllib.loads(text)
    assert parsed["data"]["path"] == "pairs.jsonl"
    assert parsed["models"]["ref"] == "org/model"
    project = load_project(tmp_path)
    assert project.data["path"] == str(tmp_path / "pairs.jsonl")
    assert project.model("ref") == "org/model"
    assert project.model("policy") == "org/model"  # the policy starts from the reference
    assert project.scores_dir == tmp_path / "workspace" / "scores"


def test_init_refuses_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["init"]).exit_code == 0
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 2
    assert "exists already" in result.output


def test_without_project_file_the_embedded_default_serves(tmp_path):
    project = load_project(tmp_path)
    assert project.source is None
    assert project.model("ref") == str(default_model_dir())
    assert project.data["path"].endswith("train.jsonl")


def test_model_aliases_resolve_through_the_models_table(tmp_path):
    (tmp_path / "repo.toml").write_text(
        'workspace = "ws"\n[data]\npath = "d.jsonl"\n[models]\nref = "./ref-model"\nsft = "org/sft"\npolicy = "sft"\n'
    )
    project = load_project(tmp_path)
    assert project.model("ref") == str(tmp_path / "ref-model")
    assert project.model("policy") == "org/sft"
    assert project.model("org/other") == "org/other"  # not an alias: a hub id as given


def test_flags_override_project_file_which_overrides_defaults(tmp_path):
    (tmp_path / "repo.toml").write_text(
        '[data]\npath = "d.jsonl"\n[models]\nref = "m"\n[train]\nbeta = 0.5\nepochs = 3\ncolor = "blue"\n'
    )
    project = load_project(tmp_path)
    cfg = merge_config(ToyConfig, "train", project, {"out": Path("o"), "epochs": 7, "robust": None})
    assert (cfg.beta, cfg.epochs, cfg.robust, cfg.color) == (0.5, 7, False, Color.blue)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[data\npath=1", "not valid TOML"),
        ('[data]\npath = 3\n[models]\nref = "m"\n', "'data.path' must be a non-empty string"),
        ('[data]\npath = "d"\n[models]\nref = ""\n', "'models.ref' must be a hub id or a folder"),
        ('[data]\npath = "d"\n[models]\nref = "m"\n[trian]\n', "unknown key 'trian'"),
        ('[data]\npath = "d"\ncolumn = "x"\n[models]\nref = "m"\n', "unknown key 'data.column'"),
    ],
)
def test_malformed_project_file_names_the_key(tmp_path, text, message):
    (tmp_path / "repo.toml").write_text(text)
    with pytest.raises(ProjectError, match="repo.toml") as err:
        load_project(tmp_path)
    assert message in str(err.value)


def test_a_project_file_that_is_not_utf8_is_named(tmp_path):
    """Found by the sweep of issue 25: a traceback (UnicodeDecodeError)."""
    (tmp_path / "repo.toml").write_bytes(b"\xff\xfe[data]\x00")
    with pytest.raises(ProjectError, match=r"repo.toml: not valid TOML: 'utf-8' codec can't decode"):
        load_project(tmp_path)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("beta = 'high'", "'train.beta' has a bad value 'high'"),
        ("epochs = 1.5", "'train.epochs' has a bad value 1.5"),
        ("color = 'green'", "'train.color' has a bad value 'green'"),
        ("lr_rate = 1", "unknown key 'train.lr_rate'"),
    ],
)
def test_bad_stage_value_names_the_key(tmp_path, section, message):
    (tmp_path / "repo.toml").write_text(f'[data]\npath = "d"\n[models]\nref = "m"\n[train]\n{section}\n')
    project = load_project(tmp_path)
    with pytest.raises(ProjectError) as err:
        merge_config(ToyConfig, "train", project, {"out": Path("o")})
    assert message in str(err.value)


def test_malformed_project_file_is_a_clear_cli_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "repo.toml").write_text('[data]\npath = "d"\n')
    result = runner.invoke(app, ["score"])
    assert result.exit_code == 2
    assert "[models] names no ref" in result.output and is_one_line_error(result.output)


def test_the_project_file_is_found_from_a_subfolder(tmp_path):
    (tmp_path / "repo.toml").write_text('workspace = "ws"\n[data]\npath = "pairs.jsonl"\n[models]\nref = "./model"\n')
    deep = tmp_path / "notebooks" / "week1"
    deep.mkdir(parents=True)
    project = load_project(deep)
    assert project.source == tmp_path.resolve() / "repo.toml"
    assert project.data["path"] == str(tmp_path.resolve() / "pairs.jsonl")  # relative to the project, not to cwd
    assert project.models["ref"] == str(tmp_path.resolve() / "model")
    assert project.workspace == tmp_path.resolve() / "ws"


def test_without_a_project_file_the_cli_says_it_uses_the_embedded_default(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from re_po import cli

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["inspect-noise"])
    assert "using the embedded default" in result.output
