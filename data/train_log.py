"""What `repo train` writes as it goes: metrics.jsonl (+ the tracker of --report-to, through accelerate), the
per-epoch posteriors/ and annotators/ tables and eta_steps.parquet (data/run_folder.py), on the main process."""
from pathlib import Path

import torch
from accelerate import Accelerator

from re_po.data import run_folder
from re_po.data.pair_table import PairTable
from re_po.pipeline import noise_metrics, train_metrics

TENSORBOARD = "tensorboard"  # <run>/tensorboard: the TensorBoard tracker's folder


class Logger:
    """tracker: the accelerate tracker's name, or None; tracker_config: the run's settings for it."""

    def __init__(self, out: Path, accelerator: Accelerator, annotators: list[str], tracker: str | None,
                 tracker_config: dict):
        self.out, self.annotators, self.main = out, annotators, accelerator.is_main_process
        self.accelerator, self.tracker, self.tracker_config, self.metrics = accelerator, tracker, tracker_config, None

    def start(self, start_step: int) -> None:
        """Open metrics.jsonl (dropping lines past start_step) and the tracker; once the start step is known."""
        self.metrics = run_folder.MetricsLog(self.out / run_folder.METRICS, start_step) if self.main else None
        if self.tracker is not None:  # TensorBoard writes into <run>/tensorboard, the others name a project
            self.accelerator.init_trackers(TENSORBOARD if self.tracker == "tensorboard" else "re-po",
                                           config=self.tracker_config)

    def step(self, step: int, batch: dict, eta: torch.Tensor | None, threshold: float | None, **extra: float) -> None:
        """One line of metrics: TRL's names from the batch's per-pair records, RE-PO's w and η where given."""
        if not self.main:
            return
        record = {"step": step, **extra, **train_metrics.step_metrics(batch, threshold)}
        if eta is not None:
            record.update(train_metrics.eta_metrics(eta, self.annotators))
        self.metrics.write(record)
        if self.tracker is not None:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def epoch_tables(self, epoch: int, pairs: PairTable, z: torch.Tensor, w: torch.Tensor, eta: torch.Tensor,
                     threshold: float, first_visit_z: torch.Tensor | None, estimate: dict | None = None) -> None:
        if self.main:
            flagged = w.numpy() < threshold
            stats = noise_metrics.annotator_stats(pairs.annotator.numpy(), w.numpy(), flagged, len(self.annotators))
            run_folder.write_epoch_tables(self.out, epoch, pairs.frame, z.numpy(), w.numpy(), flagged,
                                          None if first_visit_z is None else first_visit_z.numpy(), self.annotators,
                                          eta.numpy(), stats.labels, stats.w_mean, stats.flagged, estimate)

    def eta_steps(self, history: list[dict]) -> None:
        if self.main and history:
            run_folder.write_eta_steps(self.out, history, self.annotators)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.tracker is not None:  # not end_training(): it also ends the process group that final/ still needs
            for tracker in self.accelerator.trackers:
                tracker.finish()
