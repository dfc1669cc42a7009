"""The noise estimator's inputs, read off a score cache's rows: who labelled which pair which way, and the features.

Reads a frame of data/schema.read_scores (rows sorted by row_id); writes nothing. The estimator itself is
pipeline/reliability.py.

- Pairs: rows sharing a pair_id are labels of one pair (data/pairs.py gives every label of the same two responses
  after the same prompt one id, whichever way round). A pair's reference order is the order of its first row;
  a row's orientation is +1 where it states that order, −1 where it states the reverse.
- Features: per pair and per layer the cache stores (data/schema.embedding_columns), the embeddings of the
  reference order's first and second response and of the prompt.
- Prior: a user's column of log-odds that each row's observed order is right, turned into the reference order's.
read_streamed gives the same from the cache's parts one at a time, the states left in a scratch folder, for an
estimate whose memory does not grow with the pairs (data/estimate.run_streamed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from re_po.data import schema


class NoiseInputError(ValueError):
    """The cache cannot feed the estimator (no embeddings, a bad prior column); the message says what to do."""


@dataclass(frozen=True)
class NoiseInputs:
    annotators: list[str]  # sorted ids; η_k belongs to annotators[k]
    annotator: np.ndarray  # (N,) int64 index into annotators
    pair: np.ndarray  # (N,) int64 pair index, pairs numbered by their first row
    orientation: np.ndarray  # (N,) int64 ±1
    num_pairs: int
    # layer -> (first, second, prompt), each (G, H) float32: the reference order's preferred response, the other
    # response, the prompt; empty without embeddings
    embeddings: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
    prior: np.ndarray | None  # (G,) float64 log-odds that the reference order is right, from the prior column


def read_inputs(frame: pl.DataFrame, key: dict, source: str, prior_col: str | None = None,
                embeddings: bool = True) -> NoiseInputs:
    """The estimator's inputs from the cache rows `frame` (sorted by row_id) with cache key `key`.

    source names the cache in errors. prior_col: take the model's evidence from this carried column instead of
    the embeddings; embeddings=False: neither (the labels' agreement alone).
    """
    if frame.height == 0:
        raise NoiseInputError(f"{source}: the score cache holds no pairs")
    annotators, annotator = annotator_index(frame)
    pair, orientation, first_row = pair_structure(frame, source)
    num_pairs = len(first_row)
    pooled, prior = {}, None
    if prior_col is not None:
        prior = _prior(frame, prior_col, orientation, pair, num_pairs, source)
    elif embeddings:
        layers = schema.embed_layers(key)
        if not layers:
            raise NoiseInputError(f"{source} was scored without embeddings (repo score --no-embeddings); rescore it "
                                  "with embeddings, give your own judge with --prior-col, or use --no-probe")
        reference = frame[first_row]  # whose chosen is the reference order's first response
        for layer in layers:
            names = schema.embedding_columns(layer)
            prompt, chosen, rejected = (reference[name].to_numpy().astype(np.float32) for name in names)
            for name, values in zip(names, (prompt, chosen, rejected)):
                bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
                if bad.size:
                    raise NoiseInputError(f"{source}: row_id {reference['row_id'][int(bad[0])]}: {name} holds inf or NaN "
                                          "(a hidden state beyond float16's range); use --no-probe or --prior-col")
            pooled[layer] = (chosen, rejected, prompt)
    return NoiseInputs(annotators, annotator, pair, orientation, num_pairs, pooled, prior)


def annotator_index(frame: pl.DataFrame) -> tuple[list[str], np.ndarray]:
    """The sorted annotator ids, and each row's index (N,) int64 into them: η_k belongs to ids[k]."""
    annotators = sorted(frame["annotator"].unique().to_list())
    return annotators, frame["annotator"].cast(pl.Enum(annotators)).to_physical().to_numpy().astype(np.int64)


def pair_structure(frame: pl.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pair (N,), orientation (N,), first_row (G,)) of cache rows with pair_id, chosen_ids and rejected_ids:
    pairs numbered in the order of their first rows; orientation ±1 against each pair's first row."""
    number: dict[str, int] = {}  # pair_id -> pair index
    pair = np.array([number.setdefault(p, len(number)) for p in frame["pair_id"].to_list()], dtype=np.int64)
    first_row = np.full(len(number), frame.height, dtype=np.int64)
    np.minimum.at(first_row, pair, np.arange(frame.height))
    if frame.height == len(number):  # one label per pair: every row is its pair's reference
        return pair, np.ones(frame.height, dtype=np.int64), first_row
    return pair, _orientation(frame, pair, first_row, source), first_row


def _orientation(frame: pl.DataFrame, pair: np.ndarray, first_row: np.ndarray, source: str) -> np.ndarray:
    """+1 where a row's chosen tokens are its pair's first row's chosen tokens, −1 where they are its rejected; the
    prompt must be the same too (the trainer forwards a pair's labels as one)."""
    prompt = frame["prompt_ids"].to_list()
    chosen = frame["chosen_ids"].to_list()
    rejected = frame["rejected_ids"].to_list()
    orientation = np.ones(frame.height, dtype=np.int64)
    for i, g in enumerate(pair):
        reference = first_row[g]
        same_prompt = prompt[i] == prompt[reference]
        if same_prompt and chosen[i] == chosen[reference] and rejected[i] == rejected[reference]:
            continue
        if same_prompt and chosen[i] == rejected[reference] and rejected[i] == chosen[reference]:
            orientation[i] = -1
            continue
        raise NoiseInputError(f"{source}: row_id {frame['row_id'][i]} and row_id {frame['row_id'][int(reference)]} share "
                              f"pair_id {frame['pair_id'][i]!r} but not the same prompt and two responses; give each pair "
                              "its own pair_id")
    return orientation


def _prior(frame: pl.DataFrame, name: str, orientation: np.ndarray, pair: np.ndarray, num_pairs: int,
           source: str) -> np.ndarray:
    """The reference orders' log-odds: the mean over each pair's rows of o_i × the row's value."""
    if name not in frame.columns:
        raise NoiseInputError(f"{source}: prior column {name!r} is not in the cache (columns: "
                              f"{', '.join(c for c in frame.columns if not c.endswith('_ids'))})")
    column = frame[name]
    if not column.dtype.is_numeric():
        raise NoiseInputError(f"{source}: prior column {name!r} has type {column.dtype}; expected numbers "
                              "(log-odds that the observed order is right)")
    values = column.cast(pl.Float64).to_numpy()
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise NoiseInputError(f"{source}: prior column {name!r} at row_id {frame['row_id'][int(bad[0])]} holds "
                              f"{column[int(bad[0])]!r}; every row needs a finite log-odds")
    sums = np.bincount(pair, weights=orientation * values, minlength=num_pairs)
    return sums / np.bincount(pair, minlength=num_pairs)


@dataclass(frozen=True)
class StreamedInputs:
    """The estimator's inputs with the states left on disk (read_streamed): `labels` as read_inputs gives them
    without embeddings, every row's ids, and per part of the cache a scratch file of the states of the pairs whose
    first row it holds (float16 as stored), read back one at a time by `chunks`."""

    labels: NoiseInputs  # embeddings {} (they are the chunks'), prior None
    rows: pl.DataFrame  # row_id, pair_id, annotator of every row, in row_id order
    widths: dict[int, int]  # layer -> width of its stored states; {} without embeddings
    files: list[Path]

    def chunks(self) -> Iterator[dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """Per file, layer -> (first, second, prompt) (B, width) float16 of its pairs, in pair order."""
        for path in self.files:
            with np.load(path) as stored:
                yield {layer: tuple(stored[f"{side}_{layer}"] for side in ("first", "second", "prompt"))
                       for layer in self.widths}


def read_streamed(folder: str | Path, scratch: Path, source: str, embeddings: bool = True) -> StreamedInputs:
    """read_inputs' labels and states from a score cache read part by part: memory holds the rows' ids and one
    part, the states go to `scratch` (a folder the caller owns and removes). The pairs, their reference orders and
    the orientations are read_inputs' (a row states its pair's reference order where its prompt and responses,
    hashed, are its pair's first row's; the reverse where they are the first row's swapped)."""
    key, frames = schema.read_score_parts(folder)
    layers = schema.embed_layers(key) if embeddings else ()
    if embeddings and not layers:
        raise NoiseInputError(f"{source} was scored without embeddings (repo score --no-embeddings); rescore it "
                              "with embeddings, give your own judge with --prior-col, or use --no-probe")
    number: dict[str, int] = {}  # pair_id -> pair index
    rows, pairs, stated, reversed_, files, widths, last = [], [], [], [], [], {}, -1
    for index, frame in enumerate(frames):
        if frame.height == 0:
            continue
        row_id = frame["row_id"].to_numpy()
        if row_id[0] <= last or np.any(np.diff(row_id) <= 0):
            raise NoiseInputError(f"{source}: its rows are not in row_id order across parts; read it whole "
                                  "(data/schema.read_scores)")
        last = int(row_id[-1])
        pair, new = np.empty(frame.height, dtype=np.int64), np.zeros(frame.height, dtype=bool)
        for i, pair_id in enumerate(frame["pair_id"].to_list()):
            g = number.get(pair_id)
            if g is None:
                g = number[pair_id] = len(number)
                new[i] = True
            pair[i] = g
        hashes = frame.select(stated=pl.struct("prompt_ids", "chosen_ids", "rejected_ids").hash(),
                              reversed=pl.struct("prompt_ids", pl.col("rejected_ids").alias("chosen_ids"),
                                                 pl.col("chosen_ids").alias("rejected_ids")).hash())
        rows.append(frame.select("row_id", "pair_id", "annotator"))
        pairs.append(pair)
        stated.append(hashes["stated"].to_numpy())
        reversed_.append(hashes["reversed"].to_numpy())
        if layers and new.any():
            reference = frame.filter(pl.Series(new))
            arrays = {}
            for layer in layers:
                names = schema.embedding_columns(layer)
                for side, name in zip(("prompt", "first", "second"), names):
                    values = reference[name].to_numpy()
                    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
                    if bad.size:
                        raise NoiseInputError(f"{source}: row_id {reference['row_id'][int(bad[0])]}: {name} holds inf "
                                              "or NaN (a hidden state beyond float16's range); use --no-probe or "
                                              "--prior-col")
                    arrays[f"{side}_{layer}"] = values
                widths[layer] = arrays[f"first_{layer}"].shape[1]
            files.append(scratch / f"states-{index:05d}.npz")
            np.savez(files[-1], **arrays)
    if not rows:
        raise NoiseInputError(f"{source}: the score cache holds no pairs")
    table = pl.concat(rows)
    pair, stated, reversed_ = np.concatenate(pairs), np.concatenate(stated), np.concatenate(reversed_)
    first_row = np.full(len(number), table.height, dtype=np.int64)
    np.minimum.at(first_row, pair, np.arange(table.height))
    reference = stated[first_row][pair]
    orientation = np.where(stated == reference, 1, -1).astype(np.int64)
    wrong = np.flatnonzero((stated != reference) & (reversed_ != reference))
    if wrong.size:
        i = int(wrong[0])
        raise NoiseInputError(f"{source}: row_id {table['row_id'][i]} and row_id {table['row_id'][int(first_row[pair[i]])]} "
                              f"share pair_id {table['pair_id'][i]!r} but not the same prompt and two responses; give "
                              "each pair its own pair_id")
    annotators, annotator = annotator_index(table)
    labels = NoiseInputs(annotators, annotator, pair, orientation, len(number), {}, None)
    return StreamedInputs(labels, table, widths, files)
