"""The folders re-po writes into: it makes them, or takes back one it made; a non-empty folder it did not make is
refused, so nothing of the user's is ever overwritten (the score cache has the same rule through its manifest,
data/schema.open_cache).

A folder re-po makes holds MARK, naming its kind (run, inspect, plots, evaluate, demo, model). One written before
marks existed is recognised by what it holds (`made_by_older`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from re_po.data.atomic import atomic_write_text

MARK = ".re-po.json"


class FolderError(ValueError):
    """A folder re-po will not write into; the message says what is there and what to do."""


def check(folder: Path, kind: str, made_by_older: Callable[[Path], bool] | None = None) -> None:
    """Refuse `folder` unless it is absent, empty, or a re-po `kind` folder. Reads only."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"{folder} is a file; re-po writes a {kind} folder there: choose another path")
    if (folder / MARK).exists():
        found = _kind(folder)
        if found != kind:
            raise FolderError(f"{folder} is a re-po {found} folder, not a {kind} folder: choose another path")
        return
    if folder.exists() and any(folder.iterdir()) and not (made_by_older and made_by_older(folder)):
        names = sorted(p.name for p in folder.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise FolderError(f"{folder} is not empty ({shown}) and re-po did not make it; re-po never writes into "
                          "a folder it did not make: choose another path, or empty this one")


def claim(folder: Path, kind: str, made_by_older: Callable[[Path], bool] | None = None) -> Path:
    """check(), then make the folder (and its parents) and mark it as a re-po `kind` folder."""
    check(folder, kind, made_by_older)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARK).exists():
        atomic_write_text(folder / MARK, json.dumps({"kind": kind}) + "\n")
    return folder


def _kind(folder: Path) -> str:
    try:
        return str(json.loads((folder / MARK).read_text())["kind"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FolderError(f"{folder / MARK} is not a re-po folder mark ({err}); remove it if the folder is "
                          "yours") from err
