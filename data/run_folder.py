"""The run folder of `repo train`: where each output lives, and atomic writers and readers for them.

Layout (brief/contract.md):
    config.json                      the TrainConfig, the process count and the cache key of the run
    metrics.jsonl                    one JSON object per optimizer step (TRL's metric names + repo/*)
    eta_steps.parquet                step, epoch, event, annotator, eta: η after every change
    posteriors/epoch-000K.parquet    row_id, pair_id, annotator, z, p, w, flagged, epoch[, first_visit_z]
    annotators/epoch-000K.parquet    annotator, eta, labels, w_mean, flagged, epoch
    checkpoints/step-NNNNNNNN/       training state (data/checkpoint.py)
    eval/                            the score cache of --eval-data (the held-out pairs, scored by the reference)
    final/                           the trained policy (save_pretrained) and its tokenizer
Every file is written under a temporary name in its folder and renamed into place (os.replace).
"""
import json
from pathlib import Path

import numpy as np
import polars as pl

from re_po.data.atomic import atomic_write

CONFIG = "config.json"
METRICS = "metrics.jsonl"
ETA_STEPS = "eta_steps.parquet"
POSTERIORS = "posteriors"
ANNOTATORS = "annotators"
CHECKPOINTS = "checkpoints"
EVAL = "eval"
FINAL = "final"


def is_run(folder: Path) -> bool:
    """A run folder of `repo train`: its config.json."""
    return (Path(folder) / CONFIG).is_file()


def read_record(run: Path, made_by: str = "repo train", need_key: bool = False) -> dict:
    """config.json of a run: {"config": the TrainConfig's fields, "num_processes", "cache_key"}; `made_by` says
    what to run when there is none. One of another shape is refused in one line, as is one without the cache key
    where `need_key` (what reads the run's reference model and lengths from it)."""
    path = Path(run) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run}: not a run folder of `repo train` ({CONFIG} missing); run `{made_by}` "
                                "first, or name the run folder")
    try:
        record = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not a re-po run record: {err}") from err
    key = record.get("cache_key") if isinstance(record, dict) else None
    if not (isinstance(record, dict) and isinstance(record.get("config"), dict)
            and isinstance(record["config"].get("scores"), str) and (key is None or isinstance(key, dict))):
        raise ValueError(f"{path} is not a re-po run record (no \"config\" object naming the run's \"scores\", or a "
                         "\"cache_key\" that is no object); train the run again, or name another run folder")
    if need_key and key is None:
        raise ValueError(f"{path} names no cache key (the run's reference model and lengths): the run was trained by "
                         "an older re-po; train it again")
    return record


def epoch_file(run: Path, kind: str, epoch: int) -> Path:
    """run/<kind>/epoch-000K.parquet, kind = POSTERIORS or ANNOTATORS."""
    return Path(run) / kind / f"epoch-{epoch:04d}.parquet"


def epochs_written(run: Path, kind: str) -> list[int]:
    """The epochs with a <kind> file, ascending."""
    return sorted(int(path.stem.split("-")[1]) for path in (Path(run) / kind).glob("epoch-*.parquet"))


def read_epoch(run: Path, kind: str, epoch: int | None = None) -> pl.DataFrame:
    """The <kind> table of `epoch` (default: the last one written)."""
    written = epochs_written(run, kind)
    if not written:
        raise FileNotFoundError(f"{Path(run) / kind}: no epoch files; was the run trained with --robust?")
    return read_parquet(epoch_file(run, kind, written[-1] if epoch is None else epoch))


def write_epoch_tables(run: Path, epoch: int, pairs: pl.DataFrame, z: np.ndarray, w: np.ndarray,
                       flagged: np.ndarray, first_visit_z: np.ndarray | None, annotators: list[str], eta: np.ndarray,
                       labels: np.ndarray, w_mean: np.ndarray, flagged_labels: np.ndarray,
                       estimate: dict[str, list] | None = None) -> None:
    """posteriors/ and annotators/ files of one epoch.

    pairs: row_id, pair_id, annotator of the N pairs; z, w, flagged: (N,) fresh induced logits, posteriors and
    flags; first_visit_z: (N,) epoch 1 only. Per annotator (K,): its name, η after the epoch's update, and its
    labels, mean w and flagged labels (pipeline/noise_metrics.annotator_stats); estimate (epoch 0): eta_se and
    identified of the noise estimate.
    """
    posteriors = pairs.with_columns(z=z, p=0.5 * (1 + np.tanh(z / 2)), w=w, flagged=flagged, epoch=pl.lit(epoch, pl.Int32))
    if first_visit_z is not None:
        posteriors = posteriors.with_columns(first_visit_z=first_visit_z)
    write_parquet(posteriors, epoch_file(run, POSTERIORS, epoch))
    per_annotator = pl.DataFrame({
        "annotator": annotators, "eta": eta, "labels": labels, "w_mean": w_mean, "flagged": flagged_labels,
        "epoch": pl.Series([epoch] * len(annotators), dtype=pl.Int32)})
    if estimate is not None:
        per_annotator = per_annotator.with_columns(eta_se=pl.Series(estimate["eta_se"], dtype=pl.Float64),
                                                   identified=pl.Series(estimate["identified"], dtype=pl.Boolean))
    write_parquet(per_annotator, epoch_file(run, ANNOTATORS, epoch))


def write_eta_steps(run: Path, history: list[dict], annotators: list[str]) -> None:
    """eta_steps.parquet: one row per (η change, annotator); history items {"step", "epoch", "event", "eta": (K,)}."""
    k = len(annotators)
    write_parquet(pl.DataFrame({
        "step": np.repeat([h["step"] for h in history], k), "epoch": np.repeat([h["epoch"] for h in history], k),
        "event": np.repeat([h["event"] for h in history], k), "annotator": annotators * len(history),
        "eta": np.concatenate([np.asarray(h["eta"], dtype=np.float64) for h in history])}), Path(run) / ETA_STEPS)


def read_eta_steps(run: Path) -> pl.DataFrame:
    """eta_steps.parquet of a run: step, epoch, event, annotator, eta."""
    path = Path(run) / ETA_STEPS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the run's per-step η is written with its first checkpoint")
    return read_parquet(path)


def read_parquet(path: Path) -> pl.DataFrame:
    """A table of the run folder, or one line naming the file that does not read."""
    try:
        return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path} is not a readable Parquet file ({first}): the run folder is damaged; train the run "
                         "again (or inspect another epoch with --epoch)") from err


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, frame.write_parquet)


def write_json(obj: object, path: Path) -> None:
    text = json.dumps(obj, indent=1, default=str)
    atomic_write(path, lambda tmp: tmp.write_text(text))


class MetricsLog:
    """metrics.jsonl, appended one line per step, starting after `start_step` (the checkpoint a run resumes from,
    or 0): lines past it, written by a run killed after its checkpoint, are dropped."""

    def __init__(self, path: Path, start_step: int) -> None:
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
            atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))
        self.handle = open(path, "a")

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()
