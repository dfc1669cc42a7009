"""The score cache: the ONLY code that reads or writes it.

A cache is a folder written by `repo score` and read by `repo train` / `repo inspect-noise`:
    manifest.json        cache key, how the input rows are split into parts, the finished parts
                         (with the rows each rejected and the sha256 of the part's bytes), and whether the
                         whole cache is complete
    part-NNNNN.parquet   scored rows of part NNNNN (SCORE_COLUMNS, the embedding columns of each layer in
                         the key's embed_layers, carried input columns); the cache key is also in each
                         file's footer metadata
    rejects.jsonl        rows skipped with --on-bad-row skip: row_id, file, field, reason
The manifest and the parts are data/parts.py's (atomic parts listed with their sha256 once in place, resumed by a
rerun; a manifest naming anything but its own part-NNNNN.parquet refused before any file is read or deleted; a part
changed since it was written refused naming it). This module adds what makes them a score cache: the key's fields,
the columns of every part, the rows each part rejected, and the rejects file.
"""
import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from re_po.data import parts
from re_po.data.atomic import atomic_write

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
    "embed_projection",  # pipeline/projection.describe: the seeded projection of those states; "" for full width
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
# (data for the noise estimator, pipeline/reliability.py: a float32 mean rounded once; ample for a linear probe),
# or, where the key's embed_projection names one, that mean times its seeded matrix (k,) (pipeline/projection.py).
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


MANIFEST = parts.MANIFEST
REJECTS = "rejects.jsonl"
WHAT = "score cache"
RESCORE = "rescore with `repo score ... --overwrite`"
CacheError = parts.PartsError  # a missing, incomplete, foreign, stale or altered score cache


def _is_reject(value: object) -> bool:
    """A rejected row as write_part records it (data/pairs.Reject's fields)."""
    return (isinstance(value, dict) and parts.is_count(value.get("row_id")) and isinstance(value.get("reason"), str)
            and isinstance(value.get("field"), (str, type(None))))


# What a score part's manifest entry holds beside its rows and sha256.
ENTRY_FIELDS = {"truncated": parts.is_count,
                "rejects": lambda value: isinstance(value, list) and all(map(_is_reject, value))}


def make_key(**fields: object) -> dict:
    """The cache key, checked to have exactly CACHE_KEY_FIELDS (schema_version filled in; embed_projection "" unless
    given: full-width states, or none)."""
    key = {"schema_version": SCHEMA_VERSION, "embed_projection": "", **fields}
    if set(key) != set(CACHE_KEY_FIELDS):
        missing, extra = set(CACHE_KEY_FIELDS) - set(key), set(key) - set(CACHE_KEY_FIELDS)
        raise ValueError(f"cache key fields wrong: missing {sorted(missing)}, unknown {sorted(extra)}")
    return {name: key[name] for name in CACHE_KEY_FIELDS}


def open_cache(folder: Path, key: dict, layout: dict, overwrite: bool) -> parts.Manifest:
    """Start a cache in `folder`, or resume the one there if it was made with the same key and layout (data/parts.py:
    overwrite deletes only the cache's own files; a non-empty folder that holds no cache is refused)."""
    return parts.open_parts(folder, key, layout, overwrite, WHAT, own_files=(REJECTS,), entry_fields=ENTRY_FIELDS)


def check_folder(folder: Path) -> None:
    """Refuse a folder that is neither absent, empty, nor a score cache (the user's own shards, say), and a cache
    whose manifest re-po did not write. Reads only."""
    parts.check_folder(folder, WHAT, ENTRY_FIELDS)


holds_parts = parts.holds_parts  # a scored part: work a rerun resumes from


def write_part(folder: Path, manifest: parts.Manifest, index: int, df: pl.DataFrame, rejects: list[dict]) -> None:
    """Write part `index` atomically, then record it (with the rows it rejected) in the manifest."""
    wrong = {n: (df.schema.get(n), dtype) for n, dtype in SCORE_COLUMNS.items() if df.schema.get(n) != dtype}
    if wrong:
        raise ValueError(f"score part columns wrong (found, expected): {wrong}")
    parts.write_part(folder, manifest, index, df, truncated=int(df["truncated"].sum()), rejects=rejects)


def finish_cache(folder: Path, manifest: parts.Manifest, rejects: list[dict]) -> None:
    """Write the rejects file (all rows skipped, sorted by row_id) and mark the cache complete."""
    lines = "".join(json.dumps(r) + "\n" for r in sorted(rejects, key=lambda r: r["row_id"]))
    atomic_write(folder / REJECTS, lambda tmp: tmp.write_text(lines))
    parts.finish(folder, manifest)


def read_scores(folder: str | Path, expect: dict | None = None, embeddings: bool = True, token_ids: bool = True
                ) -> tuple[pl.DataFrame, dict]:
    """All scored rows of a complete cache, sorted by row_id, and its cache key.

    expect: key fields the caller relies on (e.g. ref_model, max_length); any difference is refused,
    showing both keys. Values are compared as strings, so a Path and its str agree.
    embeddings, token_ids: False drops those columns part by part, as read (the bulk of a row: a reader that does
    not need them holds a fraction of the cache).
    """
    folder = Path(folder)
    manifest = _complete_manifest(folder, expect)
    dropped = [*([] if embeddings else stored_embedding_columns(manifest.key)),
               *([] if token_ids else TOKEN_ID_COLUMNS)]
    frames = [_read_part(folder, name, manifest).drop(dropped) for name in sorted(manifest.parts)]
    try:
        df = pl.concat(frames, how="vertical") if frames else _empty_scores().drop(dropped, strict=False)
    except pl.exceptions.PolarsError as err:
        raise CacheError(f"score cache {folder}: its parts do not hold the same columns ({err}); they were not "
                         f"written by one `repo score` run; {RESCORE}") from err
    repeated = df["row_id"].filter(df["row_id"].is_duplicated())
    if repeated.len():
        raise CacheError(f"score cache {folder} holds row_id {repeated[0]} more than once: its parts were not written "
                         f"by one `repo score` run; {RESCORE}")
    return df.sort("row_id"), manifest.key


def read_score_parts(folder: str | Path, expect: dict | None = None) -> tuple[dict, Iterator[pl.DataFrame]]:
    """The key of a complete cache and its parts one at a time, in part order (each checked as read_scores checks
    it): for readers whose memory must not grow with the rows (the streamed noise estimate). The rows are in input
    order, so row_id rises within and across parts; the reader checks that where it relies on it."""
    folder = Path(folder)
    manifest = _complete_manifest(folder, expect)
    return manifest.key, (_read_part(folder, name, manifest) for name in sorted(manifest.parts))


def _complete_manifest(folder: Path, expect: dict | None) -> parts.Manifest:
    """The manifest of a complete cache whose key has `expect`'s values (read_scores)."""
    manifest = parts.read_manifest(folder, WHAT, ENTRY_FIELDS)
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
        if parts.differing(manifest.key, expect):
            raise CacheError(f"score cache {folder} does not match.\n"
                             f"{parts.show_keys(manifest.key, expect, 'expected')}")
    return manifest


def _read_part(folder: Path, name: str, manifest: parts.Manifest) -> pl.DataFrame:
    """One part (data/parts.read_part: its bytes, key and rows checked), holding the cache's columns."""
    frame = parts.read_part(folder, name, manifest, RESCORE, "`repo score`")
    expected = {**SCORE_COLUMNS, **{n: None for n in stored_embedding_columns(manifest.key)}}
    wrong = [n for n, dtype in expected.items()
             if n not in frame.schema or (dtype is not None and frame.schema[n] != dtype)]
    if wrong:
        raise CacheError(f"{folder / name} does not hold the cache's columns ({', '.join(wrong)} missing or of "
                         f"another type); {RESCORE}")
    return frame


def read_rejects(folder: str | Path) -> list[dict]:
    path = Path(folder) / REJECTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _empty_scores() -> pl.DataFrame:
    return pl.DataFrame(schema=SCORE_COLUMNS)
