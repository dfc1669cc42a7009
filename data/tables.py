"""Whole tables in the formats users bring their data in, chosen by the file's extension.

.jsonl (one JSON object a line), .json (an array of objects), .parquet, .csv. For tools that hand a
dataset back in the user's own format (make-noisy, inspect-noise's dumps and exports). Every write is
atomic: a temporary file in the same folder, then os.replace.
"""
from pathlib import Path

import polars as pl

from re_po.data.atomic import atomic_write
from re_po.data.columns import table_format


def read_table(path: str | Path) -> pl.DataFrame:
    """The whole file as a frame; a file that does not parse is refused naming it (no partial read)."""
    path = Path(path)
    reader = {".jsonl": pl.read_ndjson, ".json": pl.read_json, ".parquet": pl.read_parquet}.get(
        table_format(path), pl.read_csv)
    try:
        return reader(path)
    except (pl.exceptions.PolarsError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: cannot be read as a whole {table_format(path)} table ({first}); "
                         "fix the file (`repo score --on-bad-row skip` lists its bad rows)") from err


def write_table(df: pl.DataFrame, path: str | Path) -> None:
    """Write df in the format of path's extension, atomically. CSV refuses nested columns (say which)."""
    path = Path(path)
    fmt = table_format(path)
    nested = [name for name, dtype in df.schema.items() if dtype.is_nested()]
    if fmt == ".csv" and nested:
        raise ValueError(f"{path}: CSV cannot hold the nested columns {nested}; write .jsonl, .json or .parquet")
    writer = {".jsonl": df.write_ndjson, ".json": df.write_json, ".parquet": df.write_parquet}.get(fmt, df.write_csv)
    atomic_write(path, writer)


TRUTH_TEXT = {"true": True, "false": False, "1": True, "0": False}
TRUTH_EXPECTED = "expected true/false or 0/1 (True where the label is wrong)"


def swap_where(df: pl.DataFrame, swap: pl.Series, source: Path,
               pairs: list[tuple[str, str]] | None = None) -> pl.DataFrame:
    """df with chosen/rejected (and every chosen_<x>/rejected_<x> pair) exchanged on the rows where `swap`;
    `pairs` names other column pairs to exchange instead."""
    pairs = swapped_column_pairs(df, source) if pairs is None else pairs
    return df.with_columns(
        *[pl.when(swap).then(pl.col(b)).otherwise(pl.col(a)).alias(a) for a, b in pairs],
        *[pl.when(swap).then(pl.col(a)).otherwise(pl.col(b)).alias(b) for a, b in pairs],
    )


def swapped_column_pairs(df: pl.DataFrame, source: Path) -> list[tuple[str, str]]:
    """(chosen, rejected) and every (chosen_<x>, rejected_<x>) present; their dtypes must agree."""
    for name in ("chosen", "rejected"):
        if name not in df.columns:
            raise ValueError(f"{source}: no column {name!r}; the columns are {df.columns}")
    pairs = [("chosen", "rejected")] + [
        (name, "rejected" + name.removeprefix("chosen"))
        for name in df.columns
        if name.startswith("chosen_") and "rejected" + name.removeprefix("chosen") in df.columns
    ]
    for a, b in pairs:
        if df.schema[a] != df.schema[b]:
            raise ValueError(f"{source}: columns {a!r} ({df.schema[a]}) and {b!r} ({df.schema[b]}) differ in type, "
                             "so they cannot be swapped")
    return pairs


def truth_column(df: pl.DataFrame, name: str, source: str | Path, absent_is_false: bool = False) -> pl.Series:
    """Column `name` as Boolean: true/false, 0/1, or their text (a CSV's); no gaps. Absent: all False if
    `absent_is_false` (an input make-noisy has not touched), else refused. A bad row is named by its row_id where
    df has one, else by its position."""
    if name not in df.columns:
        if absent_is_false:
            return pl.Series(name, [False] * df.height)
        raise ValueError(f"{source}: no column {name!r}; the columns are {', '.join(df.columns)}")
    column = df[name]
    if column.dtype == pl.String:
        parsed = column.str.to_lowercase().replace_strict(TRUTH_TEXT, default=None, return_dtype=pl.Boolean)
    elif column.dtype.is_integer():
        parsed = column.replace_strict({0: False, 1: True}, default=None, return_dtype=pl.Boolean)
    elif column.dtype == pl.Boolean:
        parsed = column
    else:
        raise ValueError(f"{source}: field {name!r} has type {column.dtype}; {TRUTH_EXPECTED}")
    if parsed.null_count():
        bad = parsed.is_null().arg_true()
        i = int(bad[df["row_id"].gather(bad).arg_min()] if "row_id" in df.columns else bad[0])  # the first one
        where = f"row_id {df['row_id'][i]}" if "row_id" in df.columns else f"row {i}"
        raise ValueError(f"{source}: {where}: field {name!r} holds {column[i]!r}; {TRUTH_EXPECTED}")
    return parsed.alias(name)


def sample_pairs(df: pl.DataFrame, n: int, seed: int = 0) -> pl.DataFrame:
    """n pairs (by pair_id) drawn with a fixed seed, with all their labels, kept in input order (all rows when n is
    0 or not fewer than the pairs)."""
    pairs = df["pair_id"].unique(maintain_order=True)
    if n <= 0 or n >= pairs.len():
        return df
    return df.filter(pl.col("pair_id").is_in(pairs.sample(n, seed=seed).implode()))


def sample_rows(df: pl.DataFrame, n: int, seed: int = 0) -> pl.DataFrame:
    """n rows drawn with a fixed seed, kept in their input order (all rows when n is 0 or more than there are)."""
    if n <= 0 or n >= df.height:
        return df
    return df.with_row_index("_row").sample(n, seed=seed).sort("_row").drop("_row")
