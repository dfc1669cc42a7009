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


if __name__ == "__main__":
    app()
