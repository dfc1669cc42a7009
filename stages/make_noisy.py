"""`repo make-noisy IN TARGET`: flip known labels of a preference dataset, for benchmarks and the demo.

Reads IN (.jsonl, .json, .parquet or .csv) and writes TARGET in the format of its extension, atomically,
with every input column. On exactly round(rate · n_k) rows of each annotator k, drawn at random with
`seed`, it swaps `chosen` and `rejected` (plain strings or message lists alike) and every other pair of
columns `chosen_<x>` / `rejected_<x>`, so per-response data follows its response. Truth columns:
  injected_flip  this tool swapped the row (XOR with the input's injected_flip, if any)
  is_flipped     the label disagrees with the truth: injected_flip XOR the input's is_flipped (if any)

Rates: `flip_rate` applies to every row (per annotator if the input names annotators); `annotators`
gives a rate per name. An input without an annotator column gets those names round-robin over a
seeded shuffle (sizes differ by at most one); an input with one must name exactly those annotators,
unless `reassign_annotators` replaces them (the old column is kept as `source_annotator`).
"""
from pathlib import Path

import numpy as np
import polars as pl

from re_po.data import folders
from re_po.data.columns import TRUTH
from re_po.data.tables import read_table, swap_where, swapped_column_pairs, truth_column, write_table
from re_po.stages.configs import MakeNoisyConfig

INJECTED, ANNOTATOR = "injected_flip", "annotator"


def run(cfg: MakeNoisyConfig) -> Path:
    folders.check_outputs({"TARGET": cfg.target}, {"the input file": cfg.source})
    df = read_table(cfg.source)
    if df.height == 0:
        raise ValueError(f"{cfg.source}: no rows")
    swapped_column_pairs(df, cfg.source)  # refuse a file that cannot be swapped before anything else
    df, rates = with_annotators(df, cfg)
    groups = df[ANNOTATOR].cast(pl.String).to_list() if ANNOTATOR in df.columns else [""] * df.height
    flip = pl.Series(INJECTED, choose_flips(groups, rates, cfg.seed))
    df = swap_where(df, flip, cfg.source).with_columns(
        (flip ^ truth_column(df, INJECTED, cfg.source, absent_is_false=True)).alias(INJECTED),
        (flip ^ truth_column(df, TRUTH, cfg.source, absent_is_false=True)).alias(TRUTH),
    )
    cfg.target.parent.mkdir(parents=True, exist_ok=True)
    write_table(df, cfg.target)
    return cfg.target



def with_annotators(df: pl.DataFrame, cfg: MakeNoisyConfig) -> tuple[pl.DataFrame, dict[str, float]]:
    """The table with its annotator column (assigned if needed) and the flip rate of each annotator."""
    has_column = ANNOTATOR in df.columns
    if has_column:
        missing = df.with_row_index("row").filter(pl.col(ANNOTATOR).is_null())["row"]
        if len(missing) and not cfg.reassign_annotators:
            raise ValueError(f"{cfg.source}: row {missing[0]}: field {ANNOTATOR!r} is empty")
    if cfg.annotators is None:
        names = df[ANNOTATOR].cast(pl.String).unique().to_list() if has_column else [""]
        return df, {name: cfg.flip_rate for name in names}
    if has_column and not cfg.reassign_annotators:
        found = set(df[ANNOTATOR].cast(pl.String).unique())
        if found != set(cfg.annotators):
            raise ValueError(f"{cfg.source}: the annotators in the data {sorted(found)} differ from those given "
                             f"{sorted(cfg.annotators)}; name each one, or reassign them")
        return df, cfg.annotators
    if has_column:
        df = df.rename({ANNOTATOR: "source_annotator"})
    names = list(cfg.annotators)
    order = np.random.default_rng([cfg.seed, 1]).permutation(df.height)  # stream 1: assignment, 0: flips
    assigned = np.empty(df.height, dtype=object)
    assigned[order] = [names[i % len(names)] for i in range(df.height)]
    return df.with_columns(pl.Series(ANNOTATOR, assigned.tolist(), dtype=pl.String)), cfg.annotators


def choose_flips(groups: list[str], rates: dict[str, float], seed: int) -> np.ndarray:
    """Boolean mask: exactly round(rate · n_k) rows of each group k, drawn without replacement."""
    rng = np.random.default_rng([seed, 0])
    groups_arr = np.asarray(groups, dtype=object)
    flip = np.zeros(len(groups), dtype=bool)
    for name in sorted(rates):                    # a fixed order keeps the draw reproducible
        rows = np.flatnonzero(groups_arr == name)
        count = int(np.floor(rates[name] * len(rows) + 0.5))
        flip[rng.choice(rows, size=count, replace=False)] = True
    return flip
