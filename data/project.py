"""The project file `repo.toml`: dataset, model aliases, workspace, and per-stage defaults.

Read from the working directory by every command, so `repo score --model ref`, `repo train --loss ipo
--robust` and `repo inspect-noise` work as written. Without a project file the embedded default serves:
the bundled sample data and the locally prepared SmolLM2-135M-Instruct. Flags override the file; the
file overrides each stage Config's own defaults (see `merge_config`).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from re_po.data import settings
from re_po.data.atomic import atomic_write_text
from re_po.data.columns import Columns

PROJECT_FILE = "repo.toml"
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLE_TRAIN = SAMPLE_DIR / "train.jsonl"
SAMPLE_HELDOUT = SAMPLE_DIR / "heldout.jsonl"


def repo_home() -> Path:
    """Where re-po keeps prepared models: $REPO_HOME, else ~/.cache/re-po."""
    return Path(os.environ.get("REPO_HOME", Path.home() / ".cache" / "re-po"))


def default_model_dir() -> Path:
    """The embedded default model: SmolLM2-135M-Instruct converted by `repo prepare-model`."""
    return repo_home() / "models" / "SmolLM2-135M-Instruct"


class ProjectError(ValueError):
    """A missing, malformed or inconsistent project file; the message names the file and key."""


# The sections a project file may have, and which stage reads each.
STAGE_SECTIONS = ("score", "train", "inspect", "estimate", "evaluate", "generate")
DATA_KEYS = ("path", *(f.name for f in dataclasses.fields(Columns)))  # the dataset, and its column names


@dataclass(frozen=True)
class Project:
    """What the commands take from `repo.toml` (or the embedded default when there is none)."""

    source: Path | None  # the project file, or None for the embedded default
    workspace: Path
    data: dict[str, str]
    models: dict[str, str]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def scores_dir(self) -> Path:
        return self.workspace / "scores"

    @property
    def train_dir(self) -> Path:
        return self.workspace / "train"

    def model(self, name: str) -> str | None:
        """Resolve a model alias (`ref`, `policy`, any name under [models]) to a hub id or local folder.

        A name that is not an alias is returned as given (a hub id or a path). `policy` falls back
        to the reference, as in the user's design: the policy starts from the reference model; with no ref
        either, None: `repo train` starts from the model its score cache was scored with.
        """
        if name == "policy" and "policy" not in self.models:
            if "ref" not in self.models:
                return None
            name = "ref"
        if name == "ref" and "ref" not in self.models:
            raise ProjectError(f"{self.source}: [models] names no ref: give the reference model there (ref = a hub id "
                               "or a folder), or on the command line")
        seen = set()
        while name in self.models and name not in seen:
            seen.add(name)
            name = self.models[name]
        return name

    def section(self, name: str) -> dict[str, Any]:
        """A table's keys: a stage's, or [data]'s column names (data/columns.Columns; path is the commands' input)."""
        if name == "data":
            return {key: value for key, value in self.data.items() if key != "path"}
        return self.stages.get(name, {})


def embedded_default(cwd: Path) -> Project:
    return Project(
        source=None,
        workspace=cwd / "workspace",
        data={"path": str(SAMPLE_TRAIN)},
        models={"ref": str(default_model_dir())},
    )


def find_project_file(start: Path) -> Path | None:
    """`repo.toml` in `start` or the nearest folder above it (as git, ruff and cargo look), or None."""
    for folder in (start, *start.parents):
        if (folder / PROJECT_FILE).is_file():
            return folder / PROJECT_FILE
    return None


def load_project(cwd: Path | None = None) -> Project:
    """Read `repo.toml` in `cwd` or the nearest folder above (its paths are relative to that folder); the
    embedded default when there is none."""
    cwd = (Path.cwd() if cwd is None else cwd).resolve()
    path = find_project_file(cwd)
    if path is None:
        return embedded_default(cwd)
    cwd = path.parent  # the project's root: relative paths in the file are relative to it
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML is UTF-8 text
        raise ProjectError(f"{path}: not valid TOML: {exc}") from exc

    known = {"workspace", "data", "models", *STAGE_SECTIONS}
    for key in raw:
        if key not in known:
            raise ProjectError(f"{path}: unknown key '{key}'; known keys: {', '.join(sorted(known))}")

    workspace = raw.get("workspace", "workspace")
    if not isinstance(workspace, str):
        raise ProjectError(f"{path}: key 'workspace' must be a string (a folder), got {workspace!r}")

    data = _table(path, raw, "data")
    for key, value in data.items():
        if key not in DATA_KEYS:
            raise ProjectError(f"{path}: unknown key 'data.{key}'; known: {', '.join(DATA_KEYS)}")
        if not isinstance(value, str) or not value:
            raise ProjectError(f"{path}: key 'data.{key}' must be a non-empty string, got {value!r}")
    if "path" in data:  # absent: the commands that read the dataset ask for it (a run of `repo train` does not)
        data["path"] = dataset_location(cwd, data["path"])

    models = _table(path, raw, "models")
    for key, value in models.items():
        if not isinstance(value, str) or not value:
            raise ProjectError(f"{path}: key 'models.{key}' must be a hub id or a folder, got {value!r}")
        models[key] = value if value in models else model_location(cwd, value)  # an alias of another stays

    stages = {name: _table(path, raw, name) for name in STAGE_SECTIONS}
    return Project(source=path, workspace=(cwd / workspace).resolve(), data=data, models=models, stages=stages)


def dataset_location(root: Path, value: str) -> str:
    """A dataset named in repo.toml: a local path relative to the file's folder `root`; an hf:// path as it is."""
    return value if "://" in value else str((root / Path(value).expanduser()).resolve())


def model_location(root: Path, value: str) -> str:
    """A model named in repo.toml: a folder relative to the file's folder `root` where one is there (or the value is
    written as a path: ./x, ../x, ~/x, /x); else a hub id, as it is (transformers' order: a local folder first)."""
    local = root / Path(value).expanduser()
    if value.startswith(("./", "../", "~", "/")) or local.exists():
        return str(local.resolve())
    return value


def _table(path: Path, raw: dict, key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ProjectError(f"{path}: key '{key}' must be a table ([{key}]), got {value!r}")
    return dict(value)


def merge_config(config_cls: type, section: str | None, project: Project, flags: dict[str, Any],
                 defaults: dict[str, Any] | None = None) -> Any:
    """Build a stage Config from, in rising order: its field defaults, `defaults` (what the command derives from
    the project, e.g. <workspace>/scores), the `[section]` table of repo.toml, and the flags given.

    `flags` holds the command-line values; None means "not given". A key of the table that is not one of the
    Config's repo.toml keys is refused with the key named, so a typo never passes silently. A field declared
    with a section of its own (data/settings.py) is a nested Config built the same way from that table and the
    flags it declares; a model_alias field resolves through [models].
    """
    declared = {f.name: f for f in dataclasses.fields(config_cls)}
    keys = {name for name, f in declared.items() if settings.of(f).toml and not settings.of(f).section}
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {k: v for k, v in (defaults or {}).items() if v is not None}  # None: the project has none
    where = project.source or PROJECT_FILE
    for key, value in (project.section(section) if section else {}).items():
        if key not in keys:
            raise ProjectError(f"{where}: unknown key '{section}.{key}'; known: {', '.join(sorted(keys))}")
        values[key] = _coerce(hints[key], value, f"{where}: key '{section}.{key}'")
        if project.source is not None:  # a path in the file is relative to the file, as [data] and [models]
            values[key] = _located(settings.of(declared[key]), values[key], project.source.parent, project.models)
    values.update({k: v for k, v in flags.items() if v is not None and k in declared})
    for name, nested_cls in settings.nested(config_cls).items():
        nested_flags = flags if settings.of(declared[name]).cli else {}
        values[name] = merge_config(nested_cls, settings.of(declared[name]).section, project, nested_flags)
    missing = [name for name, f in declared.items()
               if name not in values and settings.field_default(f) is dataclasses.MISSING]
    if missing:
        named = [f"{name} ({settings.of(declared[name]).default_text})" if settings.of(declared[name]).default_text
                 else name for name in missing]
        raise ProjectError(f"give {', '.join(named)}: on the command line, or in {where}")
    for name, f in declared.items():
        if settings.of(f).model_alias and isinstance(values.get(name), str):
            values[name] = project.model(values[name])
    return config_cls(**values)


def given_settings(config_cls: type, flags: dict[str, Any]) -> set[str]:
    """The fields of `config_cls` set by a flag on the command line; a nested Config counts where one of its flags
    is given."""
    declared = {f.name: f for f in dataclasses.fields(config_cls)}
    given = {k for k, v in flags.items() if v is not None and k in declared}
    for name, nested_cls in settings.nested(config_cls).items():
        if settings.of(declared[name]).cli and given_settings(nested_cls, flags):
            given.add(name)
    return given


def _located(shape: settings.Setting, value: Any, root: Path, aliases: dict[str, str]) -> Any:
    """A repo.toml value read relative to the file's folder `root`: a Path, a dataset named as text, a model that is
    no alias of [models]."""
    if isinstance(value, Path):
        return (root / value.expanduser()).resolve()
    if isinstance(value, str) and shape.dataset:
        return dataset_location(root, value)
    if isinstance(value, str) and shape.model_alias and value not in aliases and value not in ("ref", "policy"):
        return model_location(root, value)
    return value


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Turn a TOML value into the Config field's type, or raise naming the key."""
    options = settings.members(hint)
    if value is None and type(None) in options:
        return None
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce_one(option, value)
        except (TypeError, ValueError) as exc:
            errors.append(str(exc))
    raise ProjectError(f"{where} has a bad value {value!r}: {'; '.join(errors)}")


# Field type -> (TOML value types it accepts, conversion, what to say when the value is not one of them).
# A TOML boolean is a Python int too: only bool fields take one.
SCALARS: dict[type, tuple[tuple[type, ...], Any, str]] = {
    bool: ((bool,), bool, "true or false"),
    int: ((int,), int, "an integer"),
    float: ((int, float), float, "a number"),
    str: ((str,), str, "a string"),
    Path: ((str,), Path, "a path string"),
}


def _coerce_one(option: Any, value: Any) -> Any:
    origin = typing.get_origin(option)
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise TypeError("expected a list")
        (item,) = typing.get_args(option)[:1]
        return origin(_coerce_one(item, v) for v in value)
    if isinstance(option, type) and issubclass(option, enum.Enum):
        return option(value)
    if option in SCALARS:
        accepted, convert, expected = SCALARS[option]
        if isinstance(value, bool) != (option is bool) or not isinstance(value, accepted):
            raise TypeError(f"expected {expected}")
        return convert(value)
    raise TypeError(f"unsupported field type {option!r}")


PROJECT_TEMPLATE = """\
# re-po project file. `repo score`, `repo train` and `repo inspect-noise` read it from the
# working directory, so the short commands work as written:
#   repo score --model ref          # stage one: reference log-probs -> <workspace>/scores
#   repo train --loss ipo --robust  # stage two: trains on them       -> <workspace>/train
#   repo inspect-noise              # flagged pairs and annotator reliability of that run
# Every command-line flag overrides the value written here.

# Each stage writes under the workspace, and the next stage finds its input there.
workspace = "{workspace}"

[data]
# A .jsonl, .json, .parquet or .csv file, a folder of such shards, or an hf:// path
# (hf://datasets/ORG/NAME/FILE). Rows: prompt / chosen / rejected as plain strings or as
# conversational message lists [{{role, content}}, ...].
path = "{data}"
# Column names, when yours differ:
# prompt = "prompt"
# chosen = "chosen"
# rejected = "rejected"
# annotator = "annotator"   # who gave the label; without it all labels share one annotator
# pair_id = "pair_id"       # else a stable hash of prompt and responses

[models]
# Aliases for --model / --policy: a Hugging Face hub id or a local folder.
ref = "{ref}"
# The policy starts from the reference unless you name another:
# policy = "ref"
"""


def write_project_file(cwd: Path, data: str, ref: str, workspace: str = "workspace",
                       sections: dict[str, tuple[str, type]] | None = None) -> Path:
    """Write a commented `repo.toml` (atomically); refuse to replace an existing one.

    sections: table name -> (who reads it, its Config); each becomes a commented table of every key.
    """
    path = cwd / PROJECT_FILE
    if path.exists():
        raise ProjectError(f"{path} exists already; edit it, or remove it to start over")
    tables = [f"\n# Defaults for {reader}; a flag overrides them.\n" + settings.toml_section(config_cls, name)
              for name, (reader, config_cls) in (sections or {}).items()]
    text = PROJECT_TEMPLATE.format(workspace=workspace, data=data, ref=ref) + "".join(tables)
    atomic_write_text(path, text)
    return path
