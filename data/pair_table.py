"""The score cache as the trainer holds it in memory: token ids, reference log-probs and annotators per row.

Reads the cache through data/schema.read_scores (the only reader of its files); writes nothing. Token ids are kept
as one flat int32 array per column plus offsets, not as Python lists: a cache of 100k pairs stays compact.
A row index is the position in the cache sorted by row_id.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from re_po.data import schema
from re_po.data.noise_inputs import annotator_index, pair_structure

REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


class MissingReference(ValueError):
    """The cache lacks reference log-probs (null, NaN or inf) that the caller needs."""


@dataclass
class PairTable:
    frame: pl.DataFrame  # row_id, pair_id, annotator
    key: dict  # the cache key
    annotators: list[str]  # sorted annotator ids; η_k belongs to annotators[k]
    annotator: torch.Tensor  # (N,) long index into annotators
    tokens: dict[str, tuple[np.ndarray, np.ndarray]]  # prompt|chosen|rejected -> (flat int32 ids, (N+1,) offsets)
    ref_chosen_logps: torch.Tensor | None  # (N,) float64; None when not asked for
    ref_rejected_logps: torch.Tensor | None
    chosen_len: torch.Tensor  # (N,) long response token counts (EOS included)
    rejected_len: torch.Tensor
    lengths: list[int]  # prompt + the longer response: the padded width of the pair in a forward
    pair: torch.Tensor  # (N,) long index of the pair (rows sharing a pair_id: several labels of one pair)
    orientation: torch.Tensor  # (N,) long ±1: the order each row states against its pair's first row
    num_groups: int  # distinct pairs; < num_pairs when some pair has several labels

    @property
    def num_pairs(self) -> int:
        return self.frame.height

    @property
    def num_annotators(self) -> int:
        return len(self.annotators)

    @classmethod
    def read(cls, folder: str | Path, with_reference: bool) -> "PairTable":
        """Read a complete cache; with_reference: the reference log-probs must be there and finite for every row."""
        df, key = schema.read_scores(folder, embeddings=False)  # the noise estimate reads its states itself
        if df.height == 0:
            raise ValueError(f"score cache {folder} holds no pairs")
        refs = None
        if with_reference:
            bad = df.filter(pl.any_horizontal(pl.col(c).is_null() | ~pl.col(c).is_finite() for c in REFERENCE_COLUMNS))
            if bad.height:
                raise MissingReference(f"score cache {folder} lacks finite reference log-probs for {bad.height} rows "
                                 f"(first row_id {bad['row_id'][0]})")
            refs = [torch.tensor(df[c].to_numpy(), dtype=torch.float64) for c in REFERENCE_COLUMNS]
        tokens = {name.removesuffix("_ids"): _flat(df[name]) for name in schema.TOKEN_ID_COLUMNS}
        length = {name: np.diff(offsets) for name, (_, offsets) in tokens.items()}
        annotators, annotator = annotator_index(df)
        pair, orientation, first_row = pair_structure(df, str(folder))
        return cls(
            frame=df.select("row_id", "pair_id", "annotator"), key=key, annotators=annotators,
            annotator=torch.from_numpy(annotator),
            tokens=tokens, ref_chosen_logps=refs[0] if refs else None, ref_rejected_logps=refs[1] if refs else None,
            chosen_len=torch.tensor(df["chosen_len"].to_numpy(), dtype=torch.long),
            rejected_len=torch.tensor(df["rejected_len"].to_numpy(), dtype=torch.long),
            lengths=(length["prompt"] + np.maximum(length["chosen"], length["rejected"])).tolist(),
            pair=torch.from_numpy(pair), orientation=torch.from_numpy(orientation), num_groups=len(first_row),
        )

    def distinct(self, rows: list[int]) -> tuple[list[int], list[int], list[bool]]:
        """(one row per pair among `rows`, in first-seen order; each row's position in that list; whether the row
        states the other order than that pair's row): a pair's labels share one forward of its two responses."""
        slot: dict[int, int] = {}  # pair index -> its position in `kept`
        kept, position, swapped = [], [], []
        for row in rows:
            pair = int(self.pair[row])
            if pair not in slot:
                slot[pair] = len(kept)
                kept.append(row)
            position.append(slot[pair])
            swapped.append(bool(self.orientation[row] != self.orientation[kept[slot[pair]]]))
        return kept, position, swapped

    def ids(self, name: str, rows: list[int]) -> list[list[int]]:
        """Token ids of column `name` (prompt|chosen|rejected) for `rows`."""
        flat, offsets = self.tokens[name]
        return [flat[offsets[r] : offsets[r + 1]].tolist() for r in rows]


def _flat(column: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(column.len() + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(column.list.len().to_numpy())
    return column.explode().to_numpy().astype(np.int32), offsets
