"""A folder of Parquet parts written one at a time and resumed: the storage of the score cache (data/schema.py)
and of `repo generate`'s samples.

    manifest.json        the key (everything that decides the rows), the layout (how the work is split into
                         parts), each finished part with its row count and sha256 (and what its writer records),
                         and whether all are done
    part-NNNNN.parquet   the rows of part NNNNN; the key is also in the file's footer

A part is written to a temporary name and renamed (data/atomic.py), and the manifest lists it only after it is
in place, with the sha256 of its bytes: a writer killed at any moment leaves a finished part or none, and a rerun
writes only the parts the manifest does not list. Reading checks each part's bytes against the manifest (read once,
hashed, and parsed from the same bytes), so a changed byte names its part instead of reaching training.
A manifest names parts only as part-NNNNN.parquet of its own folder (PART_NAME): one that names anything else (a
path, `..`) or is not shaped as write_manifest writes it is refused before any file is touched, so a crafted
manifest can make re-po neither read nor delete outside its folder.

`what` names the folder's kind in messages ("score cache", "generation samples"); `redo` says how to make it again.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from re_po.data.atomic import atomic_write_bytes, atomic_write_text

MANIFEST = "manifest.json"
PART_NAME = re.compile(r"part-(\d{5,})\.parquet")  # part_name's names: nothing else is ever read or deleted
KEY_METADATA = "re_po.cache_key"  # Parquet footer entry holding the JSON key
NOT_OURS = ("re-po reads and deletes nothing by it: remove {folder} yourself if it is not yours to keep, or choose "
            "another --out")


class PartsError(ValueError):
    """A missing, incomplete, foreign, stale or altered parts folder; the message says which and what to do."""


@dataclass
class Manifest:
    key: dict
    layout: dict  # how the writer split its work into parts (part_size, num_parts, ...)
    parts: dict[str, dict] = field(default_factory=dict)  # finished part -> {"rows", "sha256", the writer's fields}
    complete: bool = False


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def check_folder(folder: Path, what: str, entry_fields: dict[str, Callable[[object], bool]] | None = None) -> None:
    """Refuse a folder that is neither absent, empty, nor one of these (the user's own files, say), and one whose
    manifest re-po did not write. Reads only."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / MANIFEST).exists())):
        raise PartsError(f"{folder} is not empty and holds no re-po {what} ({MANIFEST} missing); re-po did not make "
                         "it and never writes into a folder it did not make: choose another --out (or empty this one)")
    if folder.is_dir():
        read_manifest(folder, what, entry_fields)


def open_parts(folder: Path, key: dict, layout: dict, overwrite: bool, what: str, own_files: tuple[str, ...] = (),
               entry_fields: dict[str, Callable[[object], bool]] | None = None) -> Manifest:
    """Start a parts folder, or resume the one there if it was made with the same key and layout.

    overwrite: delete the existing folder's own files first (the manifest, `own_files`, its parts and their
    temporary files: the user's files stay). One with another key or layout is refused otherwise. One that holds no
    part yet (its run failed first) is started afresh."""
    folder = Path(folder)
    check_folder(folder, what, entry_fields)
    folder.mkdir(parents=True, exist_ok=True)
    existing = read_manifest(folder, what, entry_fields)
    if existing is not None and not existing.parts and not existing.complete:
        existing = None  # a run that failed before its first part: nothing to keep, nothing to block the next
    if overwrite and existing is not None:
        for path in _owned_files(folder, existing, own_files):
            path.unlink(missing_ok=True)
        existing = None
    if existing is None:
        manifest = Manifest(key=key, layout=layout)
        write_manifest(folder, manifest)
        return manifest
    if differing(existing.key, key) or existing.layout != layout:
        shown = [show_keys(existing.key, key, "expected"),
                 f"  cache layout:    {existing.layout}\n  expected layout: {layout}" if existing.layout != layout else ""]
        raise PartsError(f"{folder} holds a {what} made with other settings; pass --overwrite to replace it, or "
                         "choose another --out.\n" + "\n".join(filter(None, shown)))
    return existing


def holds_parts(folder: Path) -> bool:
    """Whether `folder` holds a finished part file: work a rerun resumes from."""
    folder = Path(folder)
    return folder.is_dir() and any(PART_NAME.fullmatch(path.name) for path in folder.iterdir())


def _owned_files(folder: Path, manifest: Manifest, own_files: tuple[str, ...]) -> list[Path]:
    """The files a writer made: manifest, `own_files`, its listed parts and the other parts of its layout there (a
    part written just before a kill), and their temporary files. Every name was checked by read_manifest."""
    num_parts = manifest.layout.get("num_parts", 0)
    unlisted = [path.name for path in folder.iterdir()
                if (match := PART_NAME.fullmatch(path.name)) and int(match[1]) < num_parts]
    names = sorted({MANIFEST, *own_files, *manifest.parts, *unlisted})
    return [folder / name for name in names] + [folder / f".{name}.tmp" for name in names]


def write_part(folder: Path, manifest: Manifest, index: int, frame: pl.DataFrame, **record: object) -> None:
    """Write part `index` atomically, the key in its footer, then list it in the manifest with its rows, sha256 and
    `record` (what the writer keeps of it)."""
    table = frame.to_arrow()
    metadata = {**(table.schema.metadata or {}), KEY_METADATA.encode(): json.dumps(manifest.key).encode()}
    buffer = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(metadata), buffer)
    data = buffer.getvalue().to_pybytes()
    name = part_name(index)
    atomic_write_bytes(Path(folder) / name, data)
    manifest.parts[name] = {"rows": frame.height, **record, "sha256": hashlib.sha256(data).hexdigest()}
    write_manifest(folder, manifest)


def finish(folder: Path, manifest: Manifest) -> None:
    manifest.complete = True
    write_manifest(folder, manifest)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(asdict(manifest), indent=1))


def read_part(folder: Path, name: str, manifest: Manifest, redo: str, writer: str = "re-po") -> pl.DataFrame:
    """One listed part, read once: its bytes checked against the manifest's sha256, then parsed from the same bytes;
    its footer key and row count checked against the manifest's."""
    path, entry = Path(folder) / name, manifest.parts[name]
    if "sha256" not in entry:
        raise PartsError(f"{path}: the manifest holds no checksum of it (written by an older re-po); {redo}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PartsError(f"{path}: cannot read this part ({err.strerror or err}); {redo}") from err
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise PartsError(f"{path}: its content is not what {writer} wrote (its sha256 differs from the manifest's: "
                         f"changed or damaged since); {redo}")
    try:
        footer = pq.read_schema(pa.BufferReader(data)).metadata or {}
        part_key = json.loads(footer.get(KEY_METADATA.encode(), b"null"))
        frame = pl.read_parquet(data)
    except (OSError, ValueError, pa.ArrowException, pl.exceptions.PolarsError) as err:
        raise PartsError(f"{path} is not a readable Parquet part ({err}); {redo}") from err
    if part_key != manifest.key:
        raise PartsError(f"{path} belongs to another folder of parts.\n"
                         f"{show_keys(part_key or {}, manifest.key, 'manifest')}")
    if frame.height != entry["rows"]:
        raise PartsError(f"{path} holds {frame.height} rows where the manifest lists {entry['rows']}; {redo}")
    return frame


def read_complete(folder: Path, what: str, redo: str, writer: str = "re-po", entry_fields: dict | None = None
                  ) -> tuple[Manifest, list]:
    """The manifest of a complete parts folder and its parts' frames, in part order."""
    folder = Path(folder)
    manifest = read_manifest(folder, what, entry_fields)
    if manifest is None:
        raise PartsError(f"no {what} in {folder} ({MANIFEST} missing)")
    if not manifest.complete:
        raise PartsError(f"{what} {folder} is incomplete ({len(manifest.parts)} of "
                         f"{manifest.layout.get('num_parts', '?')} parts); rerun the same command to finish it")
    return manifest, [read_part(folder, name, manifest, redo, writer) for name in sorted(manifest.parts)]


def read_manifest(folder: Path, what: str, entry_fields: dict[str, Callable[[object], bool]] | None = None
                  ) -> Manifest | None:
    """The folder's manifest, or None where there is none. Refused unless shaped as write_manifest writes it: key,
    layout and parts as objects, `complete` true or false, layout.num_parts a count, parts named only
    part-NNNNN.parquet, each with a count of rows, a sha256 and the writer's `entry_fields` (name -> check)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = Manifest(**json.loads(path.read_text()))
    except (ValueError, TypeError, OSError) as err:  # ValueError: malformed JSON, or not UTF-8
        raise PartsError(f"{path} is not a re-po {what} manifest ({err}); {NOT_OURS.format(folder=path.parent)}"
                         ) from err

    def refuse(why: str) -> None:
        raise PartsError(f"{path} {why}, so it was not written by re-po; {NOT_OURS.format(folder=path.parent)}")

    if not all(isinstance(v, dict) for v in (manifest.key, manifest.layout, manifest.parts)):
        refuse("does not hold key, layout and parts as objects")
    if not isinstance(manifest.complete, bool) or not is_count(manifest.layout.get("num_parts", 0)):
        refuse("does not hold `complete` as true or false and `layout.num_parts` as a count")
    fields = {"rows": is_count, **(entry_fields or {})}
    for name, entry in manifest.parts.items():
        if not PART_NAME.fullmatch(name):
            refuse(f"lists a part named {name!r}, where the parts of a {what} are part-NNNNN.parquet files in its own "
                   "folder")
        # sha256 may be missing (an older re-po's part: read_part says so), never of another type
        if not (isinstance(entry, dict) and set(entry) - {"sha256"} == set(fields)
                and all(ok(entry[k]) for k, ok in fields.items()) and isinstance(entry.get("sha256", ""), str)):
            refuse(f"describes part {name} with other fields than {', '.join(fields)} and sha256")
    return manifest


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def differing(found: dict, expected: dict) -> list[str]:
    """The fields of `expected` whose value `found` does not have (compared as text: a Path and its str agree)."""
    return [name for name in expected if str(found.get(name)) != str(expected[name])]


def show_keys(found: dict, expected: dict, label: str) -> str:
    """The fields that differ and both keys; nothing where the keys agree (a layout-only difference)."""
    diff = differing(found, expected)
    if not diff:
        return ""
    return (f"  differing fields: {', '.join(diff)}\n"
            f"  cache key:    {json.dumps(found, sort_keys=True)}\n"
            f"  {label} key: {json.dumps(expected, sort_keys=True)}")
