"""A folder of Parquet parts written one at a time and resumed: the storage of `repo generate`'s samples.

    manifest.json        the key (everything that decides the rows), the layout (how the work is split into
                         parts), each finished part with its row count and sha256, and whether all are done
    part-NNNNN.parquet   the rows of part NNNNN; the key is also in the file's footer

A part is written to a temporary name and renamed (data/atomic.py), and the manifest lists it only after it is
in place, with the sha256 of its bytes: a writer killed at any moment leaves a finished part or none, and a rerun
writes only the parts the manifest does not list. Reading checks each part's bytes against the manifest (they
are read once, hashed and parsed from memory), so a changed byte names its part instead of reaching training.
The manifest names parts only as `part-NNNNN.parquet` of its own folder: anything else in it (a path, `..`) is
refused before any file is touched, so a crafted manifest can neither make re-po read nor delete outside it.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from re_po.data.atomic import atomic_write, atomic_write_text

MANIFEST = "manifest.json"
KEY_METADATA = "re_po.key"  # Parquet footer entry holding the JSON key
PART_NAME = re.compile(r"part-\d{5}\.parquet")


class PartsError(ValueError):
    """A missing, incomplete, foreign, stale or altered parts folder; the message says which and what to do."""


@dataclass
class Manifest:
    key: dict
    layout: dict  # how the writer split its work into parts (part_size, num_parts, ...)
    parts: dict[str, dict] = field(default_factory=dict)  # finished part -> {"rows", "sha256", ...}
    complete: bool = False


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def open_parts(folder: Path, key: dict, layout: dict, overwrite: bool, what: str) -> Manifest:
    """Start a parts folder, or resume the one there if its key and layout are these.

    overwrite: delete the existing parts folder's own files first. `what` names the folder in messages (e.g.
    "generation samples"). A folder that is not empty and holds no manifest is never written into."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / MANIFEST).exists())):
        raise PartsError(f"{folder} is not empty and holds no {MANIFEST}; re-po did not make it and never writes "
                         "into a folder it did not make: choose another path (or empty this one)")
    folder.mkdir(parents=True, exist_ok=True)
    existing = read_manifest(folder)
    if overwrite and existing is not None:
        for name in [MANIFEST, *existing.parts]:
            (folder / name).unlink(missing_ok=True)
        existing = None
    if existing is None or (not existing.parts and not existing.complete):
        manifest = Manifest(key=key, layout=layout)
        write_manifest(folder, manifest)
        return manifest
    if existing.key != key or existing.layout != layout:
        differing = sorted(name for name in {*existing.key, *key} if existing.key.get(name) != key.get(name))
        differing += ["layout"] if existing.layout != layout else []
        raise PartsError(f"{folder} holds {what} made with other settings ({', '.join(differing)}); pass "
                         "--overwrite to replace them, or choose another --out")
    return existing


def write_part(folder: Path, manifest: Manifest, index: int, frame: pl.DataFrame, **record: object) -> None:
    """Write part `index` atomically, then list it in the manifest with its rows, sha256 and `record`."""
    table = frame.to_arrow()
    metadata = {**(table.schema.metadata or {}), KEY_METADATA.encode(): json.dumps(manifest.key).encode()}
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), sink)
    data = sink.getvalue()
    name = part_name(index)
    atomic_write(Path(folder) / name, lambda tmp: tmp.write_bytes(data))
    manifest.parts[name] = {"rows": frame.height, "sha256": hashlib.sha256(data).hexdigest(), **record}
    write_manifest(folder, manifest)


def finish(folder: Path, manifest: Manifest) -> None:
    manifest.complete = True
    write_manifest(folder, manifest)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(asdict(manifest), indent=1))


def read_parts(folder: Path, what: str, names: list[str] | None = None) -> pl.DataFrame:
    """The rows of the listed parts (default: all, the folder must be complete), in part order; each part's
    bytes checked against its sha256 and its footer key against the manifest's."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise PartsError(f"no {what} in {folder} ({MANIFEST} missing)")
    if names is None and not manifest.complete:
        raise PartsError(f"{what} in {folder} are incomplete ({len(manifest.parts)} of "
                         f"{manifest.layout.get('num_parts', '?')} parts); rerun the same command to finish them")
    frames = []
    for name in sorted(manifest.parts if names is None else names):
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError as err:
            raise PartsError(f"{path} is listed in {folder / MANIFEST} but cannot be read ({err}); rerun with "
                             "--overwrite") from err
        if hashlib.sha256(data).hexdigest() != manifest.parts[name].get("sha256"):
            raise PartsError(f"{path} does not hold the bytes {folder / MANIFEST} lists for it (changed or "
                             "damaged since it was written); rerun with --overwrite")
        try:
            table = pq.read_table(io.BytesIO(data))
        except (OSError, pa.ArrowException) as err:
            raise PartsError(f"{path} is not a readable Parquet part ({err}); rerun with --overwrite") from err
        footer = json.loads((table.schema.metadata or {}).get(KEY_METADATA.encode(), b"null"))
        if footer != manifest.key:
            raise PartsError(f"{path} belongs to other {what} than {folder / MANIFEST} describes; rerun with "
                             "--overwrite")
        frames.append(pl.from_arrow(table))
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame()


def holds_parts(folder: Path) -> bool:
    """Whether `folder` holds a manifest listing a finished part (work a rerun resumes from)."""
    try:
        manifest = read_manifest(Path(folder))
    except PartsError:
        return False
    return manifest is not None and bool(manifest.parts)


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest, or None where there is none; a manifest naming anything but its own parts is
    refused."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = Manifest(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
        raise PartsError(f"{path} is not a re-po manifest ({err}); remove the folder or choose another") from err
    foreign = [name for name in manifest.parts if not PART_NAME.fullmatch(str(name))]
    if foreign:
        raise PartsError(f"{path} lists {foreign[0]!r}, which is not a part of this folder (parts are "
                         "part-NNNNN.parquet beside it); re-po touches nothing it names: remove the folder")
    return manifest
