"""One declaration per setting: a stage Config's field carries its help text and command-line shape.

`setting(...)` is `dataclasses.field(...)` plus metadata. cli.py turns every declared field into an option
of its command, data/project.merge_config fills the fields from repo.toml and the flags, and
`toml_section` writes the commented [section] of `repo init`'s template. Adding a setting is adding a field.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Setting:
    help: str = ""
    flag: str | None = None  # the option's declaration; None: --field-name (--x/--no-x for a bool)
    default_text: str | None = None  # what --help says the default is; None: the field's default
    positional: bool = False  # an argument, not an option
    cli: bool = True  # False: not a flag (it comes from repo.toml, or the command supplies it)
    toml: bool = True  # False: not a repo.toml key either
    model_alias: bool = False  # a name under repo.toml's [models] resolves to its hub id or folder
    dataset: bool = False  # a file, folder or hf:// path as text: in repo.toml, relative to the file's folder
    section: str | None = None  # a nested Config: its values come from this repo.toml table


def setting(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, **shape: Any) -> Any:
    """A Config field with its help text; `shape` takes Setting's other attributes."""
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"setting": Setting(help=help, **shape)})


def of(f: dataclasses.Field) -> Setting:
    """The Setting of a field (an undeclared field is a plain option without help)."""
    return f.metadata.get("setting", Setting())


def members(hint: Any) -> tuple:
    """The types a field's annotation allows: those of a union (`X | None`, Optional[X]), else the one type."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


MAX_INT = 2**53  # an integer setting beyond it is a typo: torch and numpy overflow on it with a traceback


def coerce(config: Any) -> None:
    """Turn plain values into each field's declared type where that is a Path or an Enum (or one of them | None):
    what the Python API, a test or a JSON record passes as text. In place, on a frozen Config: call it first in
    __post_init__."""
    for name, hint in typing.get_type_hints(type(config)).items():
        value = getattr(config, name)
        kind = next((m for m in members(hint) if m is Path or (isinstance(m, type) and issubclass(m, enum.Enum))), None)
        if value is not None and kind is not None and not isinstance(value, kind):
            object.__setattr__(config, name, kind(value))
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ValueError(f"{name} is {value}: larger than any count or size re-po can use (at most 2**53)")


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def nested(config_cls: type) -> dict[str, type]:
    """Fields that hold another Config, filled from their own repo.toml table: name -> that Config."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls) if of(f).section}


def default_help(f: dataclasses.Field) -> str:
    """` [default: ...]` for --help, or nothing where the default is None and no text says what it means."""
    text = of(f).default_text
    if text is None:
        value = field_default(f)
        if value is MISSING or value is None:
            return ""
        text = value.value if isinstance(value, enum.Enum) else value
    return f" [default: {text}]" if text != "" else ""


def toml_value(value: Any) -> str:
    """A Python default as a TOML literal."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def toml_section(config_cls: type, title: str) -> str:
    """The commented [title] table of the project template: one line per repo.toml key, with its help."""
    lines = [f"[{title}]"]
    for f in dataclasses.fields(config_cls):
        shape = of(f)
        if not shape.toml or shape.section:
            continue
        value = field_default(f)
        if value is MISSING or value is None:  # TOML has no null: say what leaving it out means
            literal, note = "", shape.help + default_help(f)
        else:
            literal, note = toml_value(value), shape.help
        lines.append(f"# {f.name} = {literal}".ljust(36) + f"  # {note}".rstrip())
    return "\n".join(lines) + "\n"
