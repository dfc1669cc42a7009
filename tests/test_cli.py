"""The command shape the user wrote: `repo score --model ref`, `repo train --loss ipo --robust`,
`repo inspect-noise`, run from a folder with a repo.toml; each command's options are its Config's fields, and
every repo.toml key takes effect, with the flags above it."""

import dataclasses
import enum
import importlib
import json
import tomllib
import typing
from pathlib import Path

import polars as pl
import pytest
import typer
from conftest import is_one_line_error
from typer.testing import CliRunner

from re_po import cli
from re_po.data import settings
from re_po.data.project import write_project_file
from re_po.data.settings import setting

runner = CliRunner()


def test_the_short_commands_run_as_written_from_a_project_folder(tiny_llama, tmp_path, monkeypatch):
    rows = [
        {"prompt": "what is the sky ?", "chosen": "the sky is blue", "rejected": "the sky is red",
         "worker": "a" if i < 6 else "b", "is_flipped": i % 5 == 0}
        for i in range(12)
    ]
    rows = [dict(r, chosen=f"{r['chosen']} {'!' * (i % 6 + 1)}") for i, r in enumerate(rows)]  # a and b label each
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
    summary = json.loads((tmp_path / "workspace" / "inspect" / "epoch-2" / "summary.json").read_text())
    assert {a["annotator"] for a in summary["annotators"]} == {"a", "b"}
    assert (summary["labels"], summary["pairs"]) == (12, 6)


def test_a_stage_error_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "repo.toml").write_text('[data]\npath = "missing.jsonl"\n[models]\nref = "./no-model"\n')
    result = runner.invoke(cli.app, ["score"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ")
    assert "no-model" in result.output
    assert "Traceback" not in result.output


# ---- one declaration per setting --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ToyConfig:
    where: Path = setting(help="Where it goes.", positional=True, default_text="<workspace>/toy")
    brand_new: int = setting(3, "A setting added today.")


def test_a_new_field_is_an_option_a_repo_toml_key_and_a_template_line(tmp_path, monkeypatch):
    toy, built = typer.Typer(rich_markup_mode=None), []
    cli.command(toy, "toy", ToyConfig, "evaluate", lambda p: dict(where=p.workspace / "toy"))(built.append)
    toy.command("other")(lambda: None)  # two commands: typer keeps the command's name

    help_text = runner.invoke(toy, ["toy", "--help"]).output
    assert "--brand-new" in help_text and "A setting added today. [default: 3]" in help_text
    template = write_project_file(tmp_path, data="d.jsonl", ref="m", sections=cli.template_tables(toy)).read_text()
    assert "# brand_new = 3" in template and "A setting added today." in template
    assert "[evaluate]" in template and "Defaults for `repo toy`" in template

    monkeypatch.chdir(tmp_path)
    text = template.replace("# brand_new = 3", "brand_new = 5")
    (tmp_path / "repo.toml").write_text(text)
    assert runner.invoke(toy, ["toy"]).exit_code == 0
    assert built[-1] == ToyConfig(where=tmp_path / "workspace" / "toy", brand_new=5)
    assert runner.invoke(toy, ["toy", "elsewhere", "--brand-new", "7"]).exit_code == 0
    assert built[-1] == ToyConfig(where=Path("elsewhere"), brand_new=7)


def test_the_real_template_is_valid_toml_with_a_line_per_key(tmp_path):
    text = write_project_file(tmp_path, data="d.jsonl", ref="m", sections=cli.template_tables(cli.app)).read_text()
    assert set(tomllib.loads(text)) == {"workspace", "data", "models", *cli.template_tables(cli.app)}
    for _, config_cls in cli.template_tables(cli.app).values():
        for key in _toml_keys(config_cls):
            assert f"# {key} =" in text


# Every repo.toml key of every command's table: two values the Config accepts, the first unlike its default.
STAGE_RUNS = {"score": "re_po.data.scoring", "train": "re_po.stages.train", "inspect-noise": "re_po.stages.inspect_noise",
              "evaluate": "re_po.stages.evaluate", "generate": "re_po.stages.generate"}  # the module whose run() it calls
NEEDS = {"eta_init": {"robust": True}, "e_step": {"robust": True}, "label_smoothing": {"loss": "cdpo"},
         "flip_rate": {"loss": "rdpo"}, "eval_every": {"eval_data": "held.jsonl"},
         "eval_judge": {"eval_data": "held.jsonl"}}  # keys that need another
TEXT = {"device": ("cpu", "cuda"), "on_bad_row": ("skip", "error")}
NUMBERS = {"max_model_len": (4096, 8192), "top_p": (0.5, 0.8)}  # must exceed max_length; a probability
SUFFIXES = {"html": ".html", "review": ".json"}  # paths checked for their kind of file


def _toml_keys(config_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_cls)
            if settings.of(f).toml and not settings.of(f).section]


def _two_values(f: dataclasses.Field, hint) -> tuple:
    """(value for repo.toml, value for the flag), as the Config holds them."""
    kind = cli._option_type(hint, f.name)
    default = settings.field_default(f)
    default = None if default is dataclasses.MISSING else default
    if kind is bool:
        return (not default, bool(default))
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        others = [m for m in kind if m != default]
        return (others[-1], others[0] if default is None else default)
    if f.name in NUMBERS:
        return NUMBERS[f.name]
    if kind is int:
        first = 7 if default is None else default + 1
        return (first, first + 1)
    if kind is float:
        first = 0.25 if not default else (default + 1) / 2 if default < 1 else 2 * default
        return (first, first * 0.9)
    if kind is Path:
        suffix = SUFFIXES.get(f.name, ".jsonl")
        return (Path(f"{f.name}-from-toml{suffix}"), Path(f"{f.name}-from-flag{suffix}"))  # a file or a folder
    return TEXT.get(f.name, (f"{f.name}-from-toml", f"{f.name}-from-flag"))


def _cases():
    for section, (commands, config_cls) in cli.SECTIONS[cli.app].items():
        hints = typing.get_type_hints(config_cls)
        for command_name in commands:
            for f in dataclasses.fields(config_cls):
                if settings.of(f).toml and not settings.of(f).section:
                    yield pytest.param(command_name, section, config_cls, f, hints[f.name],
                                       id=f"{command_name}-[{section}]-{f.name}")


@pytest.mark.parametrize("command_name,section,config_cls,f,hint", list(_cases()))
def test_every_repo_toml_key_takes_effect_and_a_flag_beats_it(command_name, section, config_cls, f, hint,
                                                             tmp_path, monkeypatch):
    built = []
    stage = importlib.import_module(STAGE_RUNS[command_name])
    monkeypatch.setattr(stage, "run", lambda cfg: built.append(cfg) or tmp_path)
    from_toml, from_flag = _two_values(f, hint)
    companions = "".join(f"{k} = {settings.toml_value(v)}\n" for k, v in NEEDS.get(f.name, {}).items())
    owner = "train" if companions else section  # the companions are [train] keys
    tables = {"data": 'path = "d.jsonl"\n', "models": 'ref = "some/model"\n'}
    tables[section] = tables.get(section, "") + f"{f.name} = {settings.toml_value(from_toml)}\n"
    tables[owner] = tables.get(owner, "") + companions
    (tmp_path / "repo.toml").write_text("".join(f"[{name}]\n{body}" for name, body in tables.items()))
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # found from a subfolder, and relative paths are the project's
    positional = ["held.jsonl"] if command_name in ("evaluate", "generate") and f.name != "data" else []

    result = runner.invoke(cli.app, [command_name, *positional])
    assert result.exit_code == 0, result.output
    holder = next((g for g in dataclasses.fields(type(built[-1])) if settings.of(g).section == section), None)
    cfg = built[-1] if holder is None else getattr(built[-1], holder.name)  # a nested table: [estimate], [data]
    expected = (tmp_path / from_toml).resolve() if isinstance(from_toml, Path) else from_toml
    if settings.of(f).dataset:  # a dataset named as text: relative to repo.toml like a Path
        expected = str(tmp_path.resolve() / from_toml)
    assert getattr(cfg, f.name) == expected

    shape = settings.of(f)
    if not shape.cli or (holder is not None and not settings.of(holder).cli):
        return  # repo.toml only (train's [estimate]: its names would clash with train's own flags)
    if shape.positional:
        flag = [str(from_flag)]
        positional = []
    elif isinstance(from_flag, bool):
        dashed = f.name.replace("_", "-")
        flag = [(shape.flag or f"--{dashed}/--no-{dashed}").split("/")[0 if from_flag else 1]]
    else:
        flag = [shape.flag or f"--{f.name.replace('_', '-')}",
                str(from_flag.value if isinstance(from_flag, enum.Enum) else from_flag)]
    result = runner.invoke(cli.app, [command_name, *positional, *flag])
    assert result.exit_code == 0, result.output
    cfg = built[-1] if holder is None else getattr(built[-1], holder.name)
    assert getattr(cfg, f.name) == from_flag


# ---- one clear line for every refusal ------------------------------------------------------------------------

# Each command with an argument that its stage refuses (tmp_path holds a file `a-file` and a repo.toml-less cwd).
BAD_CALLS = {
    "init": (["init"], "exists already"),  # a repo.toml is there already
    "score": (["score", "missing.jsonl", "--model", "no-such-model"], "no-such-model"),
    "train": (["train", "missing-scores"], "no score cache in missing-scores"),
    "inspect-noise": (["inspect-noise", "missing-run"], "not a run folder"),
    "evaluate": (["evaluate", "held.jsonl", "--run", "missing-run"], "not a run folder"),
    "generate": (["generate", "held.jsonl", "--run", "missing-run"], "not a run folder"),
    "make-noisy": (["make-noisy", "missing.jsonl", "out.jsonl", "--flip-rate", "0.1"], "missing.jsonl"),
    "prepare-model": (["prepare-model", "--dest", "a-file"], "is a file"),
    "demo": (["demo", "--workspace", "a-file"], "is a file"),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_every_command_refuses_bad_input_in_one_line(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    if name == "init":
        (tmp_path / "repo.toml").write_text("")
    args, message = BAD_CALLS[name]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2 and message in result.output and is_one_line_error(result.output), result.output


def test_every_command_has_a_bad_call():
    assert {c.name or c.callback.__name__ for c in cli.app.registered_commands} == set(BAD_CALLS)


@pytest.mark.parametrize("args,message", [
    (["train", "--loss", "foo"], "'foo' is not one of 'dpo', 'ipo', 'simpo', 'cpo', 'cdpo', 'rdpo'"),
    (["train", "--robust", "--loss", "cdpo"], "--robust wraps cpo, dpo, ipo, simpo; cdpo is a baseline"),
    (["inspect-noise", "--threshold", "0.3", "--top-k", "2"], "not both"),
])
def test_bad_settings_name_the_valid_ones(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2 and message in result.output and "<LossKind" not in result.output, result.output
    assert "Traceback" not in result.output  # click's usage error (usage, hint, error) or one line of re-po's


def test_every_config_takes_text_for_its_paths_and_choices():
    """The Python API and JSON records pass text; each Config holds Paths and enum members (settings.coerce)."""
    from re_po.pipeline.choices import LossKind
    from re_po.stages import configs

    made = [configs.ScoreConfig(data="d", model="m", out="c", backend="vllm"), configs.TrainConfig(scores="s", out_dir="o", loss="ipo"),
            configs.InspectConfig(run="r", out_dir="o", plots="p"), configs.EvaluateConfig(data="d", run="r", out="o"),
            configs.DemoConfig(workspace="w"), configs.GenerateConfig(data="d", out="o", run="r", backend="hf"), configs.MakeNoisyConfig(source="a", target="b", flip_rate=0.1),
            configs.PrepareModelConfig(dest="m"), configs.EstimateConfig()]
    assert {type(c) for c in made} == {getattr(configs, n) for n in dir(configs) if n.endswith("Config")}
    for cfg in made:
        for f in dataclasses.fields(cfg):
            hint = typing.get_type_hints(type(cfg))[f.name]
            if hint is Path or Path in typing.get_args(hint):
                assert getattr(cfg, f.name) is None or isinstance(getattr(cfg, f.name), Path), (cfg, f.name)
    assert made[1].loss is LossKind.ipo and made[2].plots == Path("p")
    assert made[0].backend is configs.Backend.vllm
