"""Training checkpoints of `repo train`: what one holds, and how it is written atomically and found again.

A checkpoint is a folder run/checkpoints/step-NNNNNNNN/ holding
- what `accelerate`'s save_state writes for the prepared objects (so DDP, FSDP and DeepSpeed shard or gather their
  own states): the policy (safetensors), the optimizer and each process's RNG states, which accelerate reads back
  with torch.load(weights_only=True): tensors, numbers and numpy arrays, never arbitrary objects. Not so the
  sharded engines' own files: FSDP's SHARDED_STATE_DICT (torch.distributed.checkpoint reads its .metadata with
  pickle.load) and DeepSpeed (torch.load(weights_only=False)); a pickle planted there ran on --resume under both
  (measured), so resume those only from checkpoints you wrote;
- re-po's own state, never pickled: the TrainState below (the data position), the EM's share
  (pipeline/robust.EM.state_dict: η, first-visit margins, η's history) and the LR scheduler's state as STATE_JSON,
  the tensors as STATE_TENSORS (safetensors). Nothing is registered with `accelerator.register_for_checkpointing`, whose
  files accelerate unpickles with weights_only=False: a crafted pickle there could run code on --resume.
It is written under .tmp-step-NNNNNNNN and renamed into place by the main process once every process has
finished, then older checkpoints are deleted: a run killed at any moment keeps its last whole checkpoint.
"""
import json
import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import Tensor

PREFIX = "step-"
STATE_JSON, STATE_TENSORS = "repo_state.json", "repo_state.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored; the message names it."""


@dataclass
class TrainState:
    """The loop's position, which a resumed run needs besides the policy, optimizer, scheduler, RNG and the EM.

    The data order of an epoch is rebuilt from (seed, epoch), so (epoch, step_in_epoch) is the data position.
    """

    epoch: int = 1  # the epoch in progress, 1-based
    step_in_epoch: int = 0  # optimizer steps of that epoch already taken
    global_step: int = 0


def save(accelerator: Accelerator, folder: Path, step: int, state: TrainState, em, scheduler) -> Path:
    """Write the prepared objects, `state`, the EM's share (method.md §7.7) and the scheduler as
    folder/step-NNNNNNNN, atomically; every process must call it (η and the rest are the same on every process)."""
    final, tmp = folder / f"{PREFIX}{step:08d}", folder / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # the remains of a run killed while writing
    accelerator.wait_for_everyone()
    with _tied_weights_unannounced():
        accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        _save_own_state(tmp, state, em, scheduler)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)  # a resumed run re-saving the same step
        tmp.rename(final)
        for old in folder.glob(f"{PREFIX}*"):
            if old != final:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


@contextmanager
def _tied_weights_unannounced():
    """accelerate's save_state warns on every save that it left out a tied weight (the LM head that shares the
    embedding's tensor, "Removed shared tensor {'policy.lm_head.weight'}"): expected, and restored by load_state
    (tests/test_train.py resumes bit-identically), so that one message is dropped while saving."""
    class Tied(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Removed shared tensor" not in record.getMessage()

    logger, tied = logging.getLogger("accelerate.utils.other"), Tied()
    logger.addFilter(tied)
    try:
        yield
    finally:
        logger.removeFilter(tied)


def latest(folder: Path) -> Path | None:
    """The newest whole checkpoint in `folder`, or None."""
    done = sorted(folder.glob(f"{PREFIX}*")) if folder.exists() else []
    return done[-1] if done else None


def load(accelerator: Accelerator, path: Path, state: TrainState, em, scheduler) -> None:
    """Restore everything `save` wrote: the prepared objects and RNG states, then `state`, the EM and the
    scheduler."""
    missing = [name for name in (STATE_JSON, STATE_TENSORS) if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} has no {' or '.join(missing)}: it was not written by this "
                                "version of re-po (older ones pickled their state); start the run again")
    try:  # whatever is wrong with the files, say which checkpoint and what to do
        _check_rng_states(path / f"random_states_{accelerator.process_index}.pkl")
        accelerator.load_state(str(path))
        record = json.loads((path / STATE_JSON).read_text())
        tensors = load_file(path / STATE_TENSORS)
    except Exception as err:  # noqa: BLE001 (torch, safetensors and accelerate raise many kinds)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"checkpoint {path} cannot be restored ({type(err).__name__}: {first}); delete it "
                              "to resume from an earlier one, or start the run again") from err
    state.epoch, state.step_in_epoch, state.global_step = record["epoch"], record["step_in_epoch"], record["global_step"]
    em.load_state_dict({**record["em"], **tensors})
    scheduler.load_state_dict(record["scheduler"])


def _check_rng_states(path: Path) -> None:
    """Read a process's RNG states as accelerate's load_state does (weights-only), raising what it would meet:
    load_state itself swallows any failure there and resumes with other random states, so a damaged or crafted file
    would go unnoticed and the resumed run would silently differ."""
    from accelerate.utils import load

    states = load(path, map_location="cpu")
    if not (isinstance(states, dict) and "torch_manual_seed" in states):
        raise ValueError(f"{path.name} holds no random states")


def _save_own_state(folder: Path, state: TrainState, em, scheduler) -> None:
    """The EM's tensors into STATE_TENSORS, everything else (its plain values included) into STATE_JSON."""
    share = em.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in share.items() if isinstance(v, Tensor)}
    save_file(tensors, str(folder / STATE_TENSORS))
    record = {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step,
              "em": {k: v for k, v in share.items() if k not in tensors}, "scheduler": scheduler.state_dict()}
    (folder / STATE_JSON).write_text(json.dumps(record))  # the folder is renamed into place whole
