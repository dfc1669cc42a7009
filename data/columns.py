"""What the columns and files are called: the input's column names, the truth column's, the table formats.

No polars, no torch: the stage Configs (stages/configs.py) and the command line declare their settings with these.
"""

from dataclasses import dataclass
from pathlib import Path

TRUTH = "is_flipped"  # the truth column make-noisy writes and the other stages read by default


@dataclass(frozen=True)
class Columns:
    """Input column names. annotator/pair_id None: use a column named "annotator"/"pair_id" if present."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    annotator: str | None = None
    pair_id: str | None = None


FORMATS = (".jsonl", ".json", ".parquet", ".csv")


def table_format(path: str | Path) -> str:
    """The format named by the extension (".jsonl", ...); raises ValueError for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown table format {suffix or '(no extension)'!r}; use one of {', '.join(FORMATS)}")
    return suffix
