"""Read preference pairs into one normalized table: row_id, pair_id, annotator, prompt, chosen, rejected, ...

Reads: a JSON Lines / JSON / Parquet / CSV file, a folder of such shards (one format, read in sorted
path order), or an `hf://` path (polars reads it from the Hugging Face Hub). Writes nothing.

    read = read_pairs("data/train.jsonl", Columns(prompt="question"), on_bad_row="skip")
    read.table      # one row per valid input row, see below
    read.rejects    # the rows left out, each with file, position, field and reason

Table columns, in order:
- row_id (Int64): 0-based index of the input row over the whole source (shards in sorted order),
  counted before any row is rejected, so it is stable and points back at the input.
- pair_id (String): the pair id column if there is one, else a hash of the prompt and the two
  responses in sorted order, so every label of the same pair (by any annotator, either way round)
  shares it.
- annotator (String): the annotator column if there is one, else "default" (one virtual annotator).
- Plain text: prompt, chosen, rejected (String).
  Conversational: prompt_json, chosen_json, rejected_json (String): the JSON text of the message list,
  with the prompt split off (explicit, or the shared leading messages of chosen and rejected).
  JSON text keeps any message keys exactly, has one schema whatever the messages hold, and survives
  Parquet round trips; the `_json` names say which form a table holds. `pair_values` decodes either.
- every other input column, untouched (a benchmark's truth column such as `is_flipped` survives).
"""
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Literal, NamedTuple

import polars as pl

from re_po.data.columns import Columns, how_to_name

DEFAULT_ANNOTATOR = "default"
TEXT_COLUMNS = ("prompt", "chosen", "rejected")
MESSAGE_COLUMNS = ("prompt_json", "chosen_json", "rejected_json")
FORMAT_OF_SUFFIX = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv",
}

Message = dict[str, str]
PairValue = str | list[Message]


class DataError(ValueError):
    """Input that cannot be read as preference pairs (missing file, missing column, unreachable Hub)."""


class Reject(NamedTuple):
    row_id: int
    file: str
    position: str  # "line 12" (JSON Lines) or "row 11" (0-based, within the file)
    field: str | None  # None when the whole row is unreadable (malformed JSON)
    reason: str


class BadRowError(DataError):
    """One bad input row; the message names file, position, row_id and field once they are known."""

    def __init__(self, reason: str, field: str | None = None, file: str | None = None,
                 row_id: int | None = None, position: str | None = None):
        self.reason, self.field, self.file, self.row_id, self.position = reason, field, file, row_id, position
        row = f"(row_id {row_id})" if row_id is not None else None
        location = " ".join(filter(None, [file, position, row]))
        subject = ", ".join(filter(None, [location, f"field '{field}'" if field else None]))
        super().__init__(f"{subject}: {reason}" if subject else reason)

    def as_reject(self) -> Reject:
        return Reject(self.row_id, self.file, self.position, self.field, self.reason)


@dataclass(frozen=True)
class Shard:
    """One input file and the row_ids it holds."""

    file: str
    first_row_id: int
    num_rows: int
    lines: tuple[int, ...] | None = None  # JSON Lines: the line of each row (blank lines are not rows)

    def position(self, row_id: int) -> str:
        offset = row_id - self.first_row_id
        return f"line {self.lines[offset]}" if self.lines is not None else f"row {offset}"


@dataclass(frozen=True)
class PairsRead:
    table: pl.DataFrame
    rejects: list[Reject]
    dataset_sha: str  # sha256 of the table's column names and values (changes with any kept row or rejection)
    conversational: bool
    implicit_prompt: bool  # conversational, prompt taken from the shared leading messages of chosen/rejected
    columns: Columns  # the input names used; annotator/pair_id None when the input has none
    shards: tuple[Shard, ...] = field(repr=False)

    @property
    def repeated_labels(self) -> int:
        """Labels of a pair that the same annotator labelled before: without an annotator column, the repeats of the
        anonymous annotator `default` (with one, a repeat is a bad row)."""
        return self.table.height - self.table.select("pair_id", "annotator").n_unique()

    def locate(self, error: BadRowError, row_id: int) -> BadRowError:
        """The same error naming file, position and row_id (a row failing after reading: tokenizing)."""
        shard = next(s for s in self.shards if s.first_row_id <= row_id < s.first_row_id + s.num_rows)
        input_names = dict(zip(TEXT_COLUMNS, (self.columns.prompt, self.columns.chosen, self.columns.rejected)))
        field = input_names.get(error.field, error.field)  # "chosen" is the user's "good" column, say so
        return BadRowError(error.reason, field, shard.file, row_id, shard.position(row_id))


def pair_values(table: pl.DataFrame) -> list[tuple[PairValue, PairValue, PairValue]]:
    """(prompt, chosen, rejected) per row: strings, or message lists decoded from the `_json` columns."""
    if MESSAGE_COLUMNS[0] in table.columns:
        decoded = [[json.loads(v) for v in table[name]] for name in MESSAGE_COLUMNS]
        return list(zip(*decoded))
    return list(table.select(TEXT_COLUMNS).iter_rows())


def read_pairs(source: str | Path, columns: Columns = Columns(),
               on_bad_row: Literal["error", "skip"] = "error") -> PairsRead:
    """Read every shard of `source`, validate and normalize each row; see the module docstring.

    on_bad_row="error" raises BadRowError at the first bad row; "skip" leaves it out and lists it in
    `rejects`. Problems with a whole file (missing column, unreadable file or Hub) always raise DataError.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', not {on_bad_row!r}")
    return _pairs_of(_read_shards(source, columns), columns, on_bad_row)


def _pairs_of(raws: "list[_RawShard]", columns: Columns, on_bad_row: str) -> PairsRead:
    resolved = replace(columns, annotator=columns.annotator or _present(raws[0], "annotator"),
                       pair_id=columns.pair_id or _present(raws[0], "pair_id"))
    kept: dict[str, list] = {"row_id": [], "pair_id": [], "annotator": [], "texts": []}
    labelled: dict[tuple[str, str], int] = {}  # (pair_id, annotator) -> its first row's index in `kept`
    carried_parts, rejects, shards, layout = [], [], [], None
    for raw in raws:
        shard = Shard(raw.file, sum(s.num_rows for s in shards), raw.num_rows, raw.lines)
        shards.append(shard)
        carried, layout = _normalize_shard(raw, shard, resolved, layout, on_bad_row, kept, rejects, labelled)
        carried_parts.append(carried)
    conversational, implicit = layout or (False, False)
    table = _assemble(kept, MESSAGE_COLUMNS if conversational else TEXT_COLUMNS, carried_parts)
    return PairsRead(table, rejects, _table_sha(table), conversational, implicit, resolved, tuple(shards))


@dataclass(frozen=True)
class PromptsRead:
    """The distinct prompts of a source, in the order they first appear."""

    prompts: list[PairValue]
    row_ids: list[int]  # the input row each prompt first appears in
    dataset_sha: str  # sha256 of the prompts, in order


def read_prompts(source: str | Path, columns: Columns = Columns()) -> PromptsRead:
    """The distinct prompts of `source`: of preference pairs (anything read_pairs reads, whose bad rows it
    refuses), or of a file with a prompt column alone (a string or a message list per row)."""
    raws = _read_shards(source, columns)
    if all(name in raws[0].names for name in (columns.chosen, columns.rejected)):
        table = _pairs_of(raws, columns, "error").table
        values, row_ids = [p for p, _, _ in pair_values(table)], table["row_id"].to_list()
    else:
        values, row_ids, first = [], [], 0
        for raw in raws:
            _require_columns(raw, [columns.prompt])
            shard = Shard(raw.file, first, raw.num_rows, raw.lines)
            for offset, value in enumerate(raw.values(columns.prompt)):
                try:
                    if offset in raw.unreadable:
                        raise BadRowError(raw.unreadable[offset])
                    values.append(_string(value, columns.prompt) if not isinstance(value, list)
                                  else _messages(value, columns.prompt))
                    if not values[-1]:
                        raise BadRowError("empty prompt", columns.prompt)
                except BadRowError as err:
                    raise BadRowError(err.reason, err.field, shard.file, first + offset, shard.position(first + offset)
                                      ) from None
                row_ids.append(first + offset)
            first += raw.num_rows
    distinct: dict[str, int] = {}
    for index, value in enumerate(values):
        distinct.setdefault(json.dumps(value, ensure_ascii=False, sort_keys=True), index)
    kept = list(distinct.values())
    digest = hashlib.sha256("\n".join(distinct).encode()).hexdigest()
    return PromptsRead([values[i] for i in kept], [row_ids[i] for i in kept], digest)


def _assemble(kept: dict[str, list], text_names: tuple[str, ...],
              carried_parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The table in column order: row_id, pair_id, annotator, the three texts, then the carried columns."""
    texts = kept.pop("texts")
    columns = {**kept, **{name: [row[i] for row in texts] for i, name in enumerate(text_names)}}
    table = pl.DataFrame(columns, schema={"row_id": pl.Int64, **dict.fromkeys(list(columns)[1:], pl.String)})
    carried = pl.concat(carried_parts, how="diagonal_relaxed").drop("row_id")
    return table.hstack(carried.get_columns())


# ---- files -> raw rows -------------------------------------------------------------------------------------

@dataclass
class _RawShard:
    """One input file as read, before validation."""

    file: str
    num_rows: int
    names: list[str]
    frame: pl.DataFrame | None = None  # Parquet, CSV, hf://: the file as polars read it
    records: list[dict] | None = None  # JSON: the objects as parsed ({} for an unreadable row)
    lines: tuple[int, ...] | None = None
    unreadable: dict[int, str] = field(default_factory=dict)  # row offset -> why (malformed JSON line)

    def values(self, name: str) -> list:
        """Python values of one column; JSON keeps each row's own type, so type errors are found per row."""
        if name not in self.names:
            return [None] * self.num_rows
        if self.records is not None:
            return [record.get(name) for record in self.records]
        return self.frame[name].to_list()

    def carried(self, names: list[str]) -> list[pl.Series]:
        if not names:
            return []
        if self.records is None:
            return self.frame.select(names).get_columns()
        rows = [{name: record.get(name) for name in names} for record in self.records]
        try:  # strict=False: a carried column with mixed types takes polars' common type instead of failing
            return pl.from_dicts(rows, infer_schema_length=None, strict=False).get_columns()
        except (pl.exceptions.PolarsError, TypeError, ValueError) as err:
            raise DataError(f"{self.file}: cannot carry columns {names} through: {err}") from err


def _read_shards(source: str | Path, columns: Columns) -> "list[_RawShard]":
    """Every non-empty shard of `source` as read, in order."""
    string_columns = {columns.prompt, columns.chosen, columns.rejected, columns.annotator or "annotator",
                      columns.pair_id or "pair_id"}  # CSV: read as text even where they look like numbers
    source_text = str(source)
    if source_text.startswith("hf:/") and not source_text.startswith("hf://"):  # Path("hf://x") is "hf:/x"
        source_text = "hf://" + source_text.removeprefix("hf:/")
    raws = ([_read_hf(source_text, string_columns)] if source_text.startswith("hf://")
            else [_read_file(path, string_columns) for path in _files(source)])
    raws = [raw for raw in raws if raw.num_rows]  # an empty shard has no rows and may lack the columns
    if not raws:
        raise DataError(f"{source}: no rows")
    return raws


def _present(raw: _RawShard, name: str) -> str | None:
    return name if name in raw.names else None


def _files(source: str | Path) -> list[Path]:
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() not in FORMAT_OF_SUFFIX:
            raise DataError(f"{path}: unsupported file type; expected one of {', '.join(FORMAT_OF_SUFFIX)}")
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMAT_OF_SUFFIX
         and not any(part.startswith(".") for part in p.relative_to(path).parts)),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise DataError(f"{path}: the folder holds no data files ({', '.join(FORMAT_OF_SUFFIX)})")
    formats = {FORMAT_OF_SUFFIX[p.suffix.lower()] for p in files}
    if len(formats) > 1:  # e.g. a stray dataset_info.json beside Parquet shards: refuse rather than guess
        raise DataError(f"{path}: the folder mixes data formats {sorted(formats)}; keep one per folder")
    return files


def _read_file(path: Path, string_columns: set[str]) -> _RawShard:
    fmt = FORMAT_OF_SUFFIX[path.suffix.lower()]
    try:
        if fmt in ("json", "jsonl"):
            return _read_json(path)
        frame = _read_frame(str(path), fmt, string_columns)
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it as {fmt}: {_reader_error(err)}") from err
    return _RawShard(str(path), frame.height, frame.columns, frame=frame)


def _reader_error(err: Exception) -> str:
    """A reader's error in one line: polars' CSV errors run over many lines (the field's text, then hints on its own
    options, which re-po sets), so only their first line is kept, or what an unclosed quote means."""
    text = str(err).strip()
    if "is not properly escaped" in text:
        return 'a quoted field is never closed (an opening " without its closing one)'
    return text.splitlines()[0] if text else type(err).__name__


def _read_frame(path: str, fmt: str, string_columns: set[str]) -> pl.DataFrame:
    if fmt == "csv":  # "42" is a valid answer: pair fields stay text; other columns get inferred types
        overrides = dict.fromkeys(string_columns, pl.String)
        return pl.read_csv(path, infer_schema_length=None, schema_overrides=overrides)
    return pl.read_parquet(path) if fmt == "parquet" else pl.read_ndjson(path, infer_schema_length=None)


def _read_json(path: Path) -> _RawShard:
    """A JSON array of objects, or JSON Lines (a .json file that does not start with '[' is read as lines)."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            where = f"line {err.lineno} column {err.colno}"
            raise DataError(f"{path}: malformed JSON at {where}: {err.msg}") from err
        numbers, parsed = None, [(item, None) for item in items]
    else:  # split on \n only: str.splitlines would also cut at U+2028, which JSON strings may hold
        numbered = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
        numbers, parsed = tuple(n for n, _ in numbered), [_parse_line(line) for _, line in numbered]
    unreadable = {}
    for offset, (value, error) in enumerate(parsed):
        if error is None and not isinstance(value, dict):
            error = f"expected a JSON object, got {_type_name(value)}"
        if error is not None:
            unreadable[offset] = error
    records = [value if offset not in unreadable else {} for offset, (value, _) in enumerate(parsed)]
    names = list(dict.fromkeys(name for record in records for name in record))
    return _RawShard(str(path), len(records), names, records=records, lines=numbers, unreadable=unreadable)


def _parse_line(line: str) -> tuple[object, str | None]:
    try:
        return json.loads(line), None
    except json.JSONDecodeError as err:
        return None, f"malformed JSON at column {err.colno}: {err.msg}"


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _read_hf(source: str, string_columns: set[str]) -> _RawShard:
    """hf://datasets/owner/name[/path]: a file or glob by its suffix (.json must be JSON Lines), else every
    Parquet file under the path. polars fetches it and ignores HF_HUB_OFFLINE, so that is checked here."""
    if _hub_offline():
        raise DataError(f"{source}: hf:// paths are read from the Hugging Face Hub, but HF_HUB_OFFLINE is "
                        "set, so the Hub is not contacted; download the files and pass a local path instead")
    fmt = FORMAT_OF_SUFFIX.get(PurePosixPath(source).suffix.lower())
    path = source if fmt else source.rstrip("/") + "/**/*.parquet"
    try:
        frame = _read_frame(path, "jsonl" if fmt == "json" else fmt or "parquet", string_columns)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"{source}: cannot read it from the Hugging Face Hub (is the Hub reachable from "
                        f"here, and does the dataset/file exist?): {err}") from err
    return _RawShard(source, frame.height, frame.columns, frame=frame)


# ---- raw rows -> normalized table --------------------------------------------------------------------------

Layout = tuple[bool, bool]  # (conversational, implicit prompt)


def _normalize_shard(raw: _RawShard, shard: Shard, columns: Columns, layout: Layout | None, on_bad_row: str,
                     kept: dict[str, list], rejects: list[Reject], labelled: dict[tuple[str, str], int]
                     ) -> tuple[pl.DataFrame, Layout | None]:
    """Validate and normalize one shard's rows into `kept` (bad ones into `rejects`); returns the kept rows'
    carried columns (with row_id) and the data layout so far. `labelled` spans the shards: an annotator who
    labels a pair_id twice must have seen the same two responses both times."""
    if len(raw.unreadable) < raw.num_rows:  # a file of malformed lines only has no columns to check
        _require_columns(raw, [columns.chosen, columns.rejected, columns.annotator, columns.pair_id])
    prompts, chosens, rejecteds = (raw.values(name) for name in (columns.prompt, columns.chosen,
                                                                 columns.rejected))
    annotators, pair_ids = raw.values(columns.annotator), raw.values(columns.pair_id)
    keep = []
    for offset in range(raw.num_rows):
        row_id = shard.first_row_id + offset
        try:
            if offset in raw.unreadable:
                raise BadRowError(raw.unreadable[offset])
            if layout is None:
                layout = _layout_of(raw, columns, prompts[offset], chosens[offset])
            texts = _normalize_texts(prompts[offset], chosens[offset], rejecteds[offset], columns, layout)
            annotator = (_label(annotators[offset], columns.annotator) if columns.annotator
                         else DEFAULT_ANNOTATOR)
            pair_id = _label(pair_ids[offset], columns.pair_id) if columns.pair_id else _pair_hash(*texts)
            first = labelled.get((pair_id, annotator))
            if first is not None and not _same_pair(kept["texts"][first], texts):
                raise BadRowError(f"annotator {annotator!r} labels pair_id {pair_id!r} here and at row_id "
                                  f"{kept['row_id'][first]} with other texts; give each pair its own pair_id",
                                  columns.pair_id)
            if first is not None and columns.annotator:  # a second label of one person would count twice
                raise BadRowError(f"annotator {annotator!r} labelled this pair already at row_id "
                                  f"{kept['row_id'][first]}; keep one label per annotator and pair", columns.annotator)
        except BadRowError as err:
            located = BadRowError(err.reason, err.field, shard.file, row_id, shard.position(row_id))
            if on_bad_row == "error":
                raise located from None
            rejects.append(located.as_reject())
            keep.append(False)
            continue
        keep.append(True)
        labelled.setdefault((pair_id, annotator), len(kept["row_id"]))
        for name, value in zip(kept, (row_id, pair_id, annotator, texts)):  # kept's keys are in this order
            kept[name].append(value)
    row_ids = pl.Series("row_id", range(shard.first_row_id, shard.first_row_id + raw.num_rows), pl.Int64)
    carried = pl.DataFrame(row_ids).hstack(raw.carried(_carried_names(raw, columns, layout)))
    return carried.filter(pl.Series(keep, dtype=pl.Boolean)), layout


def _same_pair(a: tuple, b: tuple) -> bool:
    """The same prompt and the same two responses, in either order: (prompt, chosen, rejected) texts."""
    return a[0] == b[0] and {a[1], a[2]} == {b[1], b[2]}


def _require_columns(raw: _RawShard, names: list[str | None]) -> None:
    missing = [name for name in names if name is not None and name not in raw.names]
    if missing:
        there = ", ".join(map(repr, raw.names)) or "none"
        raise DataError(f"{raw.file}: missing column(s) {', '.join(map(repr, missing))}; the columns there "
                        f"are: {there}; {how_to_name()}")


def _layout_of(raw: _RawShard, columns: Columns, prompt: object, chosen: object) -> Layout | None:
    """The data's layout, decided by the first row whose response is a string or a list (TRL's rule:
    message-list responses with no message-list prompt carry their prompt as their shared first messages)."""
    if not isinstance(chosen, (str, list)):
        return None
    if isinstance(chosen, str):
        _require_columns(raw, [columns.prompt])
        return False, False
    frame_prompt_is_list = raw.frame is not None and isinstance(raw.frame.schema.get(columns.prompt), pl.List)
    return True, not (isinstance(prompt, list) or frame_prompt_is_list)


def _carried_names(raw: _RawShard, columns: Columns, layout: Layout | None) -> list[str]:
    """Input columns not used as pair fields; an implicit-prompt dataset's text prompt column is carried."""
    prompt_used = not (layout and layout[1])
    consumed = {columns.chosen, columns.rejected, columns.annotator, columns.pair_id}
    consumed |= {columns.prompt} if prompt_used else set()
    carried = [name for name in raw.names if name not in consumed]
    added = {"row_id", "pair_id", "annotator", *(MESSAGE_COLUMNS if layout and layout[0] else TEXT_COLUMNS)}
    clashes = [name for name in carried if name in added]
    if clashes:
        raise DataError(f"{raw.file}: input column(s) {', '.join(map(repr, clashes))} clash with the columns "
                        f"re-po adds; rename them, or use them as pair fields: {how_to_name()}")
    return carried


def _normalize_texts(prompt: object, chosen: object, rejected: object, columns: Columns,
                     layout: Layout | None) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) as stored: plain strings, or JSON text of message lists, prompt apart."""
    if layout is None:  # neither this row nor any before it had a string or list response
        reason = f"expected a string or a list of messages, got {_type_name(chosen)}"
        raise BadRowError("missing value (null)" if chosen is None else reason, columns.chosen)
    conversational, implicit = layout
    if not conversational:
        texts = tuple(_string(value, name) for value, name in
                      ((prompt, columns.prompt), (chosen, columns.chosen), (rejected, columns.rejected)))
        for text, name in zip(texts[1:], (columns.chosen, columns.rejected)):
            if not text:
                raise BadRowError("empty response", name)
        return texts
    chosen_messages = _messages(chosen, columns.chosen)
    rejected_messages = _messages(rejected, columns.rejected)
    if implicit:
        shared = _shared_prefix_length(chosen_messages, rejected_messages)
        if shared == 0:
            raise BadRowError("mismatched message lists: chosen and rejected share no leading message, so "
                              "there is no prompt to split off; give a prompt column or full conversations",
                              columns.chosen)
        prompt_messages = chosen_messages[:shared]
    else:
        prompt_messages = _messages(prompt, columns.prompt)
        shared = _repeated_prompt_length(prompt_messages, chosen_messages, rejected_messages, columns)
    responses = chosen_messages[shared:], rejected_messages[shared:]
    for messages, name in zip(responses, (columns.chosen, columns.rejected)):
        if not any(message["content"] for message in messages):
            detail = " (all its messages belong to the shared prompt)" if not messages and implicit else ""
            raise BadRowError(f"empty response{detail}", name)
    return tuple(json.dumps(messages, ensure_ascii=False) for messages in (prompt_messages, *responses))


def _repeated_prompt_length(prompt: list[Message], chosen: list[Message], rejected: list[Message],
                            columns: Columns) -> int:
    """len(prompt) when both responses repeat the explicit prompt as their first messages, else 0."""
    repeats = [bool(prompt) and messages[:len(prompt)] == prompt for messages in (chosen, rejected)]
    if repeats[0] != repeats[1]:
        name = columns.chosen if repeats[0] else columns.rejected
        raise BadRowError(f"mismatched message lists: {name} starts with the prompt's messages but the other "
                          "response does not", name)
    return len(prompt) if repeats[0] else 0


def _shared_prefix_length(a: list[Message], b: list[Message]) -> int:
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return length


def _messages(value: object, name: str) -> list[Message]:
    """A validated message list; keys in a fixed order (role, content, the rest sorted), null keys dropped."""
    if value is None:
        raise BadRowError("missing value (null)", name)
    if not isinstance(value, list):
        expected = "expected a list of messages [{role, content}, ...]"
        raise BadRowError(f"{expected}, got {_type_name(value)}", name)
    messages = []
    for index, message in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise BadRowError(f"expected a message {{role, content}}, got {_type_name(message)}", where)
        role, content = (_string(message.get(key), f"{where}.{key}") for key in ("role", "content"))
        extra = {key: message[key] for key in sorted(message) if key not in ("role", "content")
                 and message[key] is not None}
        messages.append({"role": role, "content": content, **extra})
    return messages


def _string(value: object, name: str) -> str:
    if value is None:
        raise BadRowError("missing value (null)", name)
    if not isinstance(value, str):
        raise BadRowError(f"expected a string, got {_type_name(value)}", name)
    return value


def _label(value: object, name: str) -> str:
    """An annotator or pair id: a non-empty string, or an integer taken as its decimal text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if _string(value, name) == "":
        raise BadRowError("empty value", name)
    return value


def _type_name(value: object) -> str:
    return {list: "a list", dict: "an object", str: "a string"}.get(type(value), type(value).__name__)


def _pair_hash(prompt: str, chosen: str, rejected: str) -> str:
    """Stable id of a pair: the same whichever response a label calls chosen."""
    payload = json.dumps([prompt, sorted([chosen, rejected])], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _table_sha(table: pl.DataFrame) -> str:
    digest = hashlib.sha256(json.dumps(table.columns).encode())
    for row in table.iter_rows():
        digest.update(json.dumps(row, ensure_ascii=False, default=str).encode() + b"\n")
    return digest.hexdigest()
