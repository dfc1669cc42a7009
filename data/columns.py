"""What the columns and files are called: the input's column names, the truth column's, the table formats.

No polars, no torch: the stage Configs (stages/configs.py) and the command line declare their settings with these.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from re_po.data.settings import setting

TRUTH = "is_flipped"  # the truth column make-noisy writes and the other stages read by default


@dataclass(frozen=True)
class Columns:
    """Input column names, from repo.toml's [data] table and the --*-col flags of the commands that read the
    dataset. annotator/pair_id None: use a column named "annotator"/"pair_id" if present."""

    prompt: str = setting("prompt", "Input column of the prompts.", flag="--prompt-col")
    chosen: str = setting("chosen", "Input column of the preferred responses.", flag="--chosen-col")
    rejected: str = setting("rejected", "Input column of the other responses.", flag="--rejected-col")
    annotator: str | None = setting(None, "Input column of who gave each label.", flag="--annotator-col",
                                    default_text="annotator if present, else one annotator")
    pair_id: str | None = setting(None, "Input column of pair ids.", flag="--pair-id-col",
                                  default_text="pair_id if present, else a hash of the texts")


def how_to_name() -> str:
    """How a user names their columns: the flags and repo.toml's [data] keys."""
    fields = dataclasses.fields(Columns)
    return (f"name yours with {', '.join(f.metadata['setting'].flag for f in fields)}, or under [data] in repo.toml "
            f"({', '.join(f.name for f in fields)})")


FORMATS = (".jsonl", ".json", ".parquet", ".csv")


def table_format(path: str | Path) -> str:
    """The format named by the extension (".jsonl", ...); raises ValueError for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown table format {suffix or '(no extension)'!r}; use one of {', '.join(FORMATS)}")
    return suffix
