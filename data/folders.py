"""Where re-po writes: never over or into what a command reads (`check_outputs`, the one guard of every output
path), and only into folders it makes, or takes back one it made; a non-empty folder it did not make is refused, so
nothing of the user's is ever overwritten (the score cache has the same rule through its manifest,
data/schema.open_cache).

A folder re-po makes holds MARK, naming its kind (run, inspect, plots, evaluate, demo, model); a non-empty folder
without it is not re-po's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from re_po.data import run_folder
from re_po.data.atomic import atomic_write_text
from re_po.data.schema import MANIFEST

MARK = ".re-po.json"


class FolderError(ValueError):
    """A folder re-po will not write into; the message says what is there and what to do."""


def check_outputs(writes: dict[str, str | Path | None], reads: dict[str, str | Path | None]) -> None:
    """Refuse, before any work, every path a command would write (`writes`: the flag that names it -> the path) that
    is one of its inputs (`reads`: what it is -> the path), lies inside one (a folder of shards, the score cache,
    the run folder, a model folder), or holds one (a folder written into); two outputs that are one path; and one
    that lies under a file.

    No output goes inside a score cache or a run folder either, an input or not: re-po accounts for their files.
    Reads only. Paths are compared resolved (links followed, `..` gone); None entries, and inputs that are no local
    path (an hf:// dataset, a hub id), are left out. What a stage writes inside its own output folder (a run's
    eval cache, the demo's stages) is its own part and is not passed here.
    """
    inputs = {what: Path(path).resolve() for what, path in reads.items()
              if path is not None and "://" not in str(path) and Path(path).exists()}
    seen: dict[Path, str] = {}
    for flag, path in writes.items():
        if path is None:
            continue
        target = Path(path).resolve()
        if target.exists() and not (target.is_file() or target.is_dir()):
            raise FolderError(f"{flag} {path} is no regular file (a device, a pipe, a socket): re-po writes a new file "
                              "and renames it into place, which would replace it; choose a file path")
        holder = next(parent for parent in target.parents if parent.exists())
        if not holder.is_dir():
            raise FolderError(f"{flag} {path}: {holder} is a file, so nothing can be written under it; choose another "
                              "path")
        managed = inside_managed(target)
        if managed is not None:
            raise FolderError(f"{flag} {path} is inside {managed[0]} {managed[1]}, whose files re-po accounts for; "
                              "choose a path outside it")
        if target in seen:
            raise FolderError(f"{flag} {path} is also where {seen[target]} goes: give each output its own path")
        seen[target] = flag
        for what, source in inputs.items():
            if target == source:
                raise FolderError(f"{flag} {path} is {what}: writing there would replace it; choose another path")
            if target.is_relative_to(source):
                raise FolderError(f"{flag} {path} is inside {what} {source}: re-po never writes into an input (a "
                                  "folder of shards would read the file as data); choose a path outside it")
            if source.is_relative_to(target):
                raise FolderError(f"{flag} {path} holds {what} {source}: writing there could replace it; choose a "
                                  "folder that does not hold it")


def inside_managed(target: Path) -> tuple[str, Path] | None:
    """(what, folder) of the score cache or run folder that `target` lies in, whose files re-po accounts for (the
    cache by its manifest, the run by its layout); None where it lies in none, or is the run's own eval/ cache."""
    for folder in target.parents:
        if (folder / MANIFEST).is_file():
            return "the score cache", folder
        if (folder / MARK).is_file() and _kind(folder) == "run":
            own = target.relative_to(folder).parts[0] == run_folder.EVAL  # train scores --eval-data there
            return None if own else ("the run folder", folder)
    return None


def check(folder: Path, kind: str) -> None:
    """Refuse `folder` unless it is absent, empty, or a re-po `kind` folder. Reads only."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"{folder} is a file; re-po writes a {kind} folder there: choose another path")
    if (folder / MARK).exists():
        found = _kind(folder)
        if found != kind:
            article = "an" if kind[:1] in "aeiou" else "a"
            raise FolderError(f"{folder} is a re-po {found} folder, not {article} {kind} folder: choose another path")
        return
    # the mark's temporary file alone: a claim killed while marking the folder it had just made
    names = sorted(p.name for p in folder.iterdir() if p.name != f".{MARK}.tmp") if folder.is_dir() else []
    if names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise FolderError(f"{folder} is not empty ({shown}) and re-po did not make it; re-po never writes into "
                          "a folder it did not make: choose another path, or empty this one")


def remove_stale(folder: Path, names: tuple[str, ...], written: list[str]) -> None:
    """The files of `names` (all a re-po folder of its kind may hold) that this run did not write (`written`): a
    former run's, which would not agree with this one's."""
    for name in names:
        if str(folder / name) not in written and (folder / name).is_file():
            (folder / name).unlink()


def claim(folder: Path, kind: str) -> Path:
    """check(), then make the folder (and its parents) and mark it as a re-po `kind` folder."""
    check(folder, kind)
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


@contextmanager
def removed_on_failure(paths: list[Path | None], keep: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """A command's outputs that do not exist yet: if the block fails (an error, Ctrl-C), whatever of them it made is
    removed, with the folders made to hold them, so a failed command leaves nothing behind; unless `keep()` says
    that what is there can be resumed (a checkpoint, a scored part)."""
    made = {first_missing(Path(p)) for p in paths if p is not None} - {None}
    try:
        yield
    except BaseException:
        if not keep():
            for path in made:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.is_file() or path.is_symlink():
                    path.unlink(missing_ok=True)
        raise


def first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist (what writing `path` would create), or None."""
    if path.exists() or path.is_symlink():
        return None
    while path.parent != path and not (path.parent.exists() or path.parent.is_symlink()):
        path = path.parent
    return path


SCRATCH_PREFIX = "re-po-scratch-"


@contextmanager
def scratch(purpose: str) -> Iterator[Path]:
    """A scratch folder in the system's temporary folder, removed when the block ends; first the ones that a killed
    re-po process left (SIGKILL skips the removal): marked "scratch", made on this host by a process that is gone."""
    root, host = Path(tempfile.gettempdir()), socket.gethostname()
    for left in root.glob(f"{SCRATCH_PREFIX}*"):
        try:
            mark = json.loads((left / MARK).read_text())
            gone = mark["kind"] == "scratch" and mark["host"] == host and not _alive(int(mark["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a scratch folder re-po marked: left alone
        if gone:
            shutil.rmtree(left, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{purpose}-", dir=root) as made:
        atomic_write_text(Path(made) / MARK, json.dumps({"kind": "scratch", "host": host, "pid": os.getpid()}) + "\n")
        yield Path(made)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
