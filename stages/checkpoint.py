"""Training checkpoints of `repo train`: what one holds, and how it is written atomically and found again.

A checkpoint is a folder run/checkpoints/step-NNNNNNNN/ written by `accelerate`'s save_state (so DDP, FSDP
and DeepSpeed shard or gather their own states): the policy, the optimizer, every object registered with
`accelerator.register_for_checkpointing` (the LR scheduler and the TrainState below), and each process's RNG
states. It is written under .tmp-step-NNNNNNNN and renamed into place by the main process once every process
has finished, then older checkpoints are deleted: a run killed at any moment keeps its last whole checkpoint.
"""
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import Accelerator
from torch import Tensor

PREFIX = "step-"


@dataclass
class TrainState:
    """Everything of the loop that a resumed run needs besides the policy, optimizer, scheduler and RNG.

    The data order of an epoch is rebuilt from (seed, epoch), so (epoch, step_in_epoch) is the data position.
    """

    eta: Tensor  # (K,) float64: annotator reliabilities in force (method.md §7.7)
    first_visit_z: Tensor  # (N,) float64: each pair's margin at its first training forward; NaN until then
    epoch: int = 1  # the epoch in progress, 1-based
    step_in_epoch: int = 0  # optimizer steps of that epoch already taken
    global_step: int = 0
    eta_history: list[dict] = field(default_factory=list)  # {"step", "epoch", "event", "eta": (K,)}

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def save(accelerator: Accelerator, folder: Path, step: int) -> Path:
    """Write the prepared/registered state as folder/step-NNNNNNNN, atomically; every process must call it."""
    final, tmp = folder / f"{PREFIX}{step:08d}", folder / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # the remains of a run killed while writing
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)  # a resumed run re-saving the same step
        tmp.rename(final)
        for old in folder.glob(f"{PREFIX}*"):
            if old != final:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def latest(folder: Path) -> Path | None:
    """The newest whole checkpoint in `folder`, or None."""
    done = sorted(folder.glob(f"{PREFIX}*")) if folder.exists() else []
    return done[-1] if done else None


def load(accelerator: Accelerator, path: Path) -> None:
    """Restore everything `save` wrote into the prepared/registered objects (and the RNG states)."""
    accelerator.load_state(str(path))
