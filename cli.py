"""The `repo` command line: parses options and calls one stage's run(cfg)."""
import typer

app = typer.Typer(no_args_is_help=True, help="re-po: preference alignment robust to noisy labels.")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo("re-po 0.1.0")
