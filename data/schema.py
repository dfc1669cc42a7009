"""The score cache: the ONLY code that reads or writes it.

A cache is a folder written by `repo score` and read by `repo train` / `repo inspect-noise`:
    manifest.json        cache key, how the input rows are split into parts, the finished parts
                         (with the rows each rejected and the sha256 of the part's bytes), and whether the
                         whole cache is complete
    part-NNNNN.parquet   scored rows of part NNNNN (SCORE_COLUMNS, the embedding columns of each layer in
                         the key's embed_layers, carried input columns); the cache key is also in each
                         file's footer metadata
    rejects.jsonl        rows skipped with --on-bad-row skip: row_id, file, field, reason
Every file is written to a temporary name in the same folder and then renamed (os.replace), and the
manifest lists a part only after its file is in place: a scorer killed at any moment leaves either a
finished part or none, never half of one, and a rerun redoes only unlisted parts.

A manifest names its parts only as part-NNNNN.parquet in its own folder (PART_NAME): one that names anything else
was not written by re-po, and is refused before any file is read or deleted. Each part is read once into memory,
its sha256 checked against the manifest's and parsed from the same bytes: a part changed after it was written (a
flipped bit, a copy cut short) is refused naming it.
"""
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from re_po.data.atomic import atomic_write, atomic_write_bytes

SCHEMA_VERSION = 3  # 2: response and prompt embeddings (embed_layers); 3: each part's sha256 in the manifest
# Everything that can change a stored log-prob (or the token ids): a cache is reused only if all agree.
CACHE_KEY_FIELDS = (
    "schema_version",
    "ref_model",  # the model path or id as given
    "weights_sha",  # sha256 over the model folder's weight files
    "tokenizer_sha",
    "chat_template_sha",
    "max_length",
    "max_prompt_length",
    "dtype",
    "backend",  # hf | vllm
    "backend_version",  # transformers or vllm version
    "dataset_sha",
    "embed_layers",  # the layers whose mean-pooled hidden states are stored, e.g. "15,30"; "" for none
)
SCORE_COLUMNS = pl.Schema(
    {
        "row_id": pl.Int64,  # 0-based index of the input row over the whole source
        "pair_id": pl.String,
        "annotator": pl.String,
        "prompt_ids": pl.List(pl.Int32),  # tokens exactly as scored: stage two never re-tokenizes
        "chosen_ids": pl.List(pl.Int32),
        "rejected_ids": pl.List(pl.Int32),
        "ref_chosen_logps": pl.Float64,  # Σ log π_ref over the response tokens
        "ref_rejected_logps": pl.Float64,
        "chosen_len": pl.Int32,  # response tokens in those sums (EOS included)
        "rejected_len": pl.Int32,
        "truncated": pl.Boolean,  # the prompt or a response was cut to fit the max lengths
    }
)
TOKEN_ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")  # the token ids of each part, as scored
# Per layer l of embed_layers: the hidden state mean-pooled over the prompt's / each response's tokens, (H,) float16
# (data for the noise estimator, pipeline/reliability.py: a float32 mean rounded once; ample for a linear probe).
EMBEDDING_DTYPE = pl.Float16


def embedding_columns(layer: int) -> tuple[str, str, str]:
    """The (prompt, chosen, rejected) embedding column names of one layer."""
    return f"prompt_emb_{layer}", f"chosen_emb_{layer}", f"rejected_emb_{layer}"


def embed_layers(key: dict) -> tuple[int, ...]:
    """The layers a cache stores embeddings of, from its key."""
    text = str(key.get("embed_layers") or "")
    return tuple(int(layer) for layer in text.split(",") if layer)


def stored_embedding_columns(key: dict) -> list[str]:
    """Every embedding column of a cache with key `key`."""
    return [name for layer in embed_layers(key) for name in embedding_columns(layer)]


MANIFEST = "manifest.json"
PART_NAME = re.compile(r"part-(\d{5,})\.parquet")  # part_name's names: nothing else is ever read or deleted
REJECTS = "rejects.jsonl"
KEY_METADATA = "re_po.cache_key"  # Parquet footer entry holding the JSON cache key


class CacheError(ValueError):
    """A missing, incomplete, foreign or stale score cache; the message says which and shows the keys."""


@dataclass
class Manifest:
    key: dict
    layout: dict  # how the writer split its input into parts (part_size, num_parts, num_rows, ...)
    parts: dict[str, dict] = field(default_factory=dict)  # part -> {"rows", "truncated", "rejects", "sha256"}
    complete: bool = False


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def make_key(**fields: object) -> dict:
    """The cache key, checked to have exactly CACHE_KEY_FIELDS (schema_version filled in)."""
    key = {"schema_version": SCHEMA_VERSION, **fields}
    if set(key) != set(CACHE_KEY_FIELDS):
        missing, extra = set(CACHE_KEY_FIELDS) - set(key), set(key) - set(CACHE_KEY_FIELDS)
        raise ValueError(f"cache key fields wrong: missing {sorted(missing)}, unknown {sorted(extra)}")
    return {name: key[name] for name in CACHE_KEY_FIELDS}


def open_cache(folder: Path, key: dict, layout: dict, overwrite: bool) -> Manifest:
    """Start a cache in `folder`, or resume the one there if it was made with the same key and layout.

    overwrite: delete an existing cache first (only the files it lists). A cache with another key or layout is
    refused otherwise, and so is a non-empty folder that holds no cache (the user's own shards, say). A cache
    that holds no part yet (its run failed first) is started afresh.
    """
    check_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    existing = _read_manifest(folder)
    if existing is not None and not existing.parts and not existing.complete:
        existing = None  # a run that failed before its first part: nothing to keep, nothing to block the next
    if overwrite and existing is not None:
        for path in _owned_files(folder, existing):  # only what this cache wrote: the user's files stay
            path.unlink(missing_ok=True)
        existing = None
    if existing is None:
        manifest = Manifest(key=key, layout=layout)
        write_manifest(folder, manifest)
        return manifest
    if _differing(existing.key, key) or existing.layout != layout:
        shown = [_show_keys(existing.key, key, "expected"),
                 f"  cache layout:    {existing.layout}\n  expected layout: {layout}" if existing.layout != layout else ""]
        raise CacheError(f"{folder} holds a score cache made with other options; pass --overwrite to replace it, "
                         "or another --out.\n" + "\n".join(filter(None, shown)))
    return existing


def check_folder(folder: Path) -> None:
    """Refuse a folder that is neither absent, empty, nor a score cache (the user's own shards, say), and a cache
    whose manifest re-po did not write. Reads only."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / MANIFEST).exists())):
        raise CacheError(f"{folder} is not empty and holds no re-po score cache ({MANIFEST} missing); re-po did "
                         "not make it and never writes into a folder it did not make: choose another --out "
                         "(or empty this one)")
    if folder.is_dir():
        _read_manifest(folder)


def holds_parts(folder: Path) -> bool:
    """Whether `folder` holds a scored part: work a rerun resumes from."""
    return folder.is_dir() and any(PART_NAME.fullmatch(path.name) for path in folder.iterdir())


def _owned_files(folder: Path, manifest: Manifest) -> list[Path]:
    """The files a cache's writer made: manifest, rejects, its listed parts and the other parts of its layout there
    (a part written just before a kill), and their temporary files. Every name is checked (_check_manifest)."""
    num_parts = manifest.layout.get("num_parts", 0)
    unlisted = [path.name for path in folder.iterdir()
                if (match := PART_NAME.fullmatch(path.name)) and int(match[1]) < num_parts]
    names = sorted({MANIFEST, REJECTS, *manifest.parts, *unlisted})
    return [folder / name for name in names] + [folder / f".{name}.tmp" for name in names]


def write_part(folder: Path, manifest: Manifest, index: int, df: pl.DataFrame, rejects: list[dict]) -> None:
    """Write part `index` atomically, then record it (with the rows it rejected) in the manifest."""
    wrong = {n: (df.schema.get(n), dtype) for n, dtype in SCORE_COLUMNS.items() if df.schema.get(n) != dtype}
    if wrong:
        raise ValueError(f"score part columns wrong (found, expected): {wrong}")
    table = df.to_arrow()
    metadata = {**(table.schema.metadata or {}), KEY_METADATA.encode(): json.dumps(manifest.key).encode()}
    buffer = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(metadata), buffer)
    data = buffer.getvalue().to_pybytes()
    name = part_name(index)
    atomic_write_bytes(folder / name, data)
    manifest.parts[name] = {"rows": df.height, "truncated": int(df["truncated"].sum()), "rejects": rejects,
                            "sha256": hashlib.sha256(data).hexdigest()}
    write_manifest(folder, manifest)


def finish_cache(folder: Path, manifest: Manifest, rejects: list[dict]) -> None:
    """Write the rejects file (all rows skipped, sorted by row_id) and mark the cache complete."""
    lines = "".join(json.dumps(r) + "\n" for r in sorted(rejects, key=lambda r: r["row_id"]))
    atomic_write(folder / REJECTS, lambda tmp: tmp.write_text(lines))
    manifest.complete = True
    write_manifest(folder, manifest)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    text = json.dumps(asdict(manifest), indent=1)
    atomic_write(folder / MANIFEST, lambda tmp: tmp.write_text(text))


def read_scores(folder: str | Path, expect: dict | None = None) -> tuple[pl.DataFrame, dict]:
    """All scored rows of a complete cache, sorted by row_id, and its cache key.

    expect: key fields the caller relies on (e.g. ref_model, max_length); any difference is refused,
    showing both keys. Values are compared as strings, so a Path and its str agree.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    if manifest is None:
        raise CacheError(f"no score cache in {folder} ({MANIFEST} missing); run `repo score` first")
    if not manifest.complete:
        total = manifest.layout.get("num_parts", "?")
        raise CacheError(
            f"score cache {folder} is incomplete ({len(manifest.parts)} of {total} parts); "
            "rerun `repo score` with the same options to finish it"
        )
    if expect is not None:
        unknown = set(expect) - set(CACHE_KEY_FIELDS)
        if unknown:
            raise ValueError(f"read_scores: unknown cache key fields {sorted(unknown)}")
        if _differing(manifest.key, expect):
            raise CacheError(f"score cache {folder} does not match.\n{_show_keys(manifest.key, expect, 'expected')}")
    frames = [_read_part(folder, name, manifest) for name in sorted(manifest.parts)]
    try:
        df = pl.concat(frames, how="vertical") if frames else _empty_scores()
    except pl.exceptions.PolarsError as err:
        raise CacheError(f"score cache {folder}: its parts do not hold the same columns ({err}); they were not "
                         "written by one `repo score` run; rescore with --overwrite") from err
    repeated = df["row_id"].filter(df["row_id"].is_duplicated())
    if repeated.len():
        raise CacheError(f"score cache {folder} holds row_id {repeated[0]} more than once: its parts were not written "
                         "by one `repo score` run; rescore with --overwrite")
    return df.sort("row_id"), manifest.key


def _read_part(folder: Path, name: str, manifest: Manifest) -> pl.DataFrame:
    """One part, read once: its bytes checked against the manifest's sha256, then parsed from the same bytes."""
    path, entry = folder / name, manifest.parts[name]
    rescore = "rescore with `repo score ... --overwrite`"
    if "sha256" not in entry:
        raise CacheError(f"{path}: the manifest holds no checksum of it (a cache of an older re-po); {rescore}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CacheError(f"{path}: cannot read this part of the cache ({err.strerror or err}); {rescore}") from err
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CacheError(f"{path}: its content is not what `repo score` wrote (its sha256 differs from the "
                         f"manifest's: changed or damaged since); {rescore}")
    try:
        footer = pq.read_schema(pa.BufferReader(data)).metadata or {}
        part_key = json.loads(footer.get(KEY_METADATA.encode(), b"null"))
        frame = pl.read_parquet(data)
    except (OSError, ValueError, pa.ArrowException, pl.exceptions.PolarsError) as err:
        raise CacheError(f"{path} is not a readable Parquet part ({err}); {rescore}") from err
    if part_key != manifest.key:
        raise CacheError(f"{path} belongs to another cache.\n{_show_keys(part_key or {}, manifest.key, 'manifest')}")
    expected = {**SCORE_COLUMNS, **{n: None for n in stored_embedding_columns(manifest.key)}}
    wrong = [n for n, dtype in expected.items()
             if n not in frame.schema or (dtype is not None and frame.schema[n] != dtype)]
    if wrong or frame.height != entry["rows"]:
        raise CacheError(f"{path} does not hold what the manifest says ({entry['rows']} rows of the cache's columns; "
                         f"found {frame.height} rows{', columns ' + ', '.join(wrong) + ' missing or of another type' if wrong else ''}); "
                         f"{rescore}")
    return frame


def read_rejects(folder: str | Path) -> list[dict]:
    path = Path(folder) / REJECTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _empty_scores() -> pl.DataFrame:
    return pl.DataFrame(schema=SCORE_COLUMNS)


def _read_manifest(folder: Path) -> Manifest | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = Manifest(**json.loads(path.read_text()))
    except (ValueError, TypeError, OSError) as err:  # ValueError: malformed JSON, or not UTF-8
        raise CacheError(f"{path} is not a re-po score manifest ({err}); {_NOT_OURS.format(folder=folder)}") from err
    _check_manifest(path, manifest)
    return manifest


_NOT_OURS = ("re-po reads and deletes nothing by it: remove {folder} yourself if it is not yours to keep, or choose "
             "another --out")


def _check_manifest(path: Path, manifest: Manifest) -> None:
    """The shape `write_manifest` writes; above all, parts named only as part-NNNNN.parquet in the cache's own
    folder (a name like ../../x or /x would make --overwrite delete, and a read open, a file outside it)."""
    def refuse(what: str) -> None:
        raise CacheError(f"{path} {what}, so it was not written by re-po; {_NOT_OURS.format(folder=path.parent)}")

    if not all(isinstance(v, dict) for v in (manifest.key, manifest.layout, manifest.parts)):
        refuse("does not hold key, layout and parts as objects")
    if not isinstance(manifest.complete, bool) or not _count(manifest.layout.get("num_parts", 0)):
        refuse("does not hold `complete` as true or false and `layout.num_parts` as a count")
    for name, entry in manifest.parts.items():
        if not PART_NAME.fullmatch(name):
            refuse(f"lists a part named {name!r}, where a score cache's parts are part-NNNNN.parquet files in its own "
                   "folder")
        if not (isinstance(entry, dict) and _count(entry.get("rows")) and _count(entry.get("truncated"))
                and isinstance(entry.get("rejects"), list) and all(map(_is_reject, entry["rejects"]))
                and isinstance(entry.get("sha256", ""), str)):
            refuse(f"describes part {name} with other fields than rows, truncated, rejects and sha256")


def _is_reject(value: object) -> bool:
    """A rejected row as write_part records it (data/pairs.Reject's fields)."""
    return (isinstance(value, dict) and _count(value.get("row_id")) and isinstance(value.get("reason"), str)
            and isinstance(value.get("field"), (str, type(None))))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _differing(found: dict, expected: dict) -> list[str]:
    return [name for name in expected if str(found.get(name)) != str(expected[name])]


def _show_keys(found: dict, expected: dict, label: str) -> str:
    """The fields that differ and both keys; nothing where the keys agree (a layout-only difference)."""
    diff = _differing(found, expected)
    if not diff:
        return ""
    return (
        f"  differing fields: {', '.join(diff)}\n"
        f"  cache key:    {json.dumps(found, sort_keys=True)}\n"
        f"  {label} key: {json.dumps(expected, sort_keys=True)}"
    )


