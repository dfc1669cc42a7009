"""The flagged pairs as Label Studio tasks, for people to label them again (`repo inspect-noise --review FILE`).

FILE (JSON) holds one task per flagged pair; FILE with the suffix .xml holds the labeling config to paste
into the project's Labeling Interface. A reviewer sees the prompt and the two responses as A and B, in an
order drawn per pair from its row_id (never "chosen" first, so the recorded label does not steer the
review), and picks the better one with Label Studio's Pairwise control. Each task's data also carries
row_id, pair_id, annotator, w, z and `recorded_better` ("answer_a" or "answer_b": the response the dataset
calls chosen); an exported annotation's `value.selected` is "left" for answer_a and "right" for answer_b,
so the label was wrong where the reviewers' pick differs from recorded_better.
"""

from __future__ import annotations

import hashlib

import polars as pl

from re_po.data.pairs import PairValue

LABEL_CONFIG = """<View>
  <Header value="Which response answers the prompt better?"/>
  <Text name="prompt" value="$prompt"/>
  <Pairwise name="better" toName="answer_a,answer_b" leftClass="answer_a" rightClass="answer_b"/>
  <View style="display: flex; gap: 1em;">
    <View style="flex: 1;"><Header value="A" size="5"/><Text name="answer_a" value="$answer_a"/></View>
    <View style="flex: 1;"><Header value="B" size="5"/><Text name="answer_b" value="$answer_b"/></View>
  </View>
</View>
"""


def tasks(flagged: pl.DataFrame, texts: list[tuple[PairValue, PairValue, PairValue]]) -> list[dict]:
    """One Label Studio task per row of flagged (row_id, pair_id, annotator, w, z), texts its (prompt, chosen,
    rejected)."""
    made = []
    for row, (prompt, chosen, rejected) in zip(flagged.iter_rows(named=True), texts):
        chosen_is_a = shown_first(row["row_id"])
        a, b = (chosen, rejected) if chosen_is_a else (rejected, chosen)
        made.append({"data": {
            "prompt": plain_text(prompt), "answer_a": plain_text(a), "answer_b": plain_text(b),
            "recorded_better": "answer_a" if chosen_is_a else "answer_b",
            "row_id": row["row_id"], "pair_id": row["pair_id"], "annotator": row["annotator"],
            "w": row["w"], "z": row["z"],
        }})
    return made


def shown_first(row_id: int) -> bool:
    """Whether the chosen response is shown as A: a fair coin per row_id, the same on every export."""
    return hashlib.sha256(f"review:{row_id}".encode()).digest()[0] < 128


def plain_text(value: PairValue) -> str:
    """A text, or a message list as "role: content" paragraphs."""
    if isinstance(value, list):
        return "\n\n".join(f"{m.get('role')}: {m.get('content')}" for m in value)
    return value
