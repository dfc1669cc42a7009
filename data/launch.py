"""How `repo train` is launched and where it stands: accelerate's checks and DeepSpeed's config, the tracker of
--report-to, and the run's record (config.json) for a new run and for --resume (data/run_folder.py's layout).
Reads and writes config.json only; the settings come as the stage's TrainConfig."""
import importlib.util
import json
import os
from dataclasses import asdict, fields, replace
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DistributedType, parse_flag_from_env

from re_po.data import checkpoint, folders, run_folder

# Fields that may differ between a run and its --resume: they do not change what is trained.
RESUMABLE_CHANGES = ("resume", "save_every", "device", "report_to", "eval_data", "eval_every", "eval_judge",
                     "eval_prompts", "eval_max_new_tokens")
# Paths that only locate things: a run folder or cache may move; what the cache holds is checked by its key.
LOCATIONS = ("out_dir", "scores")


def check_launch(accelerator: Accelerator) -> None:
    """Refuse what accelerate would run as something else, silently: FSDP or DeepSpeed asked for by the accelerate
    config, where accelerate applies them to GPU processes only (on CPU it runs DDP, each process holding the
    whole model and optimizer); or processes launched that accelerate does not join into one group (on a machine
    without GPUs, unless --device cpu: each would train alone into the same run folder)."""
    for engine in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        if parse_flag_from_env(f"ACCELERATE_USE_{engine.value}") and accelerator.distributed_type != engine:
            raise ValueError(f"the accelerate config asks for {engine.value}, but accelerate runs these processes as "
                             f"{accelerator.distributed_type.value} on {accelerator.device.type}: it applies "
                             f"{engine.value} to GPU processes only; on CPU launch with docs/accelerate/ddp.yaml")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ValueError(f"{launched} processes were launched, but accelerate sees {accelerator.num_processes} in "
                         "its group: on a machine without GPUs pass --device cpu to `repo train`")


def fill_deepspeed_config(accelerator: Accelerator, cfg) -> None:
    """DeepSpeed's engine scales the loss, clips and steps inside accelerator.backward, by its own config: its "auto"
    values come from re-po's settings, and one set otherwise is refused (accelerate lists it). The micro-batch per
    process, the clipping norm, and one accumulation step: re-po accumulates --grad-accum micro-batches itself and
    marks the last one with accelerator.sync_gradients."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.state.deepspeed_plugin.deepspeed_config_process(
            train_micro_batch_size_per_gpu=cfg.batch_size, gradient_accumulation_steps=1,
            train_batch_size=cfg.batch_size * accelerator.num_processes, gradient_clipping=cfg.max_grad_norm)


def tracker(cfg) -> str | None:
    """The accelerate tracker to log to, or None: --report-to, by default TensorBoard when it is installed."""
    choice = str(cfg.report_to or ("tensorboard" if importlib.util.find_spec("tensorboard") else "none"))
    if choice == "none":
        return None
    if importlib.util.find_spec(str(choice)) is None:
        raise ModuleNotFoundError(f"--report-to {choice}: the {choice} package is not installed; pip install {choice}")
    return str(choice)


def tracker_config(cfg, world: int, key: dict, policy: str) -> dict:
    """The run's settings as a tracker's hyper-parameters: scalars as they are, anything else as text."""
    config = config_record(cfg, world, key, policy)["config"]
    return {name: value if isinstance(value, (bool, int, float, str)) else str(value) for name, value in config.items()}


def config_record(cfg, world: int, key: dict, policy: str) -> dict:
    config = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in RESUMABLE_CHANGES}
    record = {"config": {**config, "policy": policy}, "loss_spec": asdict(cfg.loss_spec()), "num_processes": world,
              "cache_key": key}
    return json.loads(json.dumps(record, default=str))


def resumed_config(cfg, given: set[str]):
    """With --resume, the run's own settings (its config.json, above repo.toml and the defaults) wherever `given`,
    the settings of the flags, names none: a bare `repo train --resume` goes on as the run was started, and a flag
    given with another value is refused, naming it (start_run_folder). The score cache is the run's own while it
    is there."""
    if not (cfg.resume and run_folder.is_run(cfg.out_dir)):  # no run there: the stage says what to do
        return cfg
    saved = run_folder.read_record(cfg.out_dir)["config"]
    declared = {f.name for f in fields(cfg)} - given - set(RESUMABLE_CHANGES) - {"out_dir"}
    taken = {name: value for name, value in saved.items() if name in declared}
    if "scores" in taken and not Path(taken["scores"]).exists():  # the run and its cache moved: the one given serves
        del taken["scores"]
    try:
        if isinstance(taken.get("estimate"), dict):
            taken["estimate"] = type(cfg.estimate)(**taken["estimate"])
        return replace(cfg, **taken)
    except TypeError as err:  # a setting of another shape or name than TrainConfig's: not this re-po's record
        raise ValueError(f"{cfg.out_dir / run_folder.CONFIG}: its settings are not a run's of this re-po ({err}); "
                         "start the run again without --resume, or in another folder") from err


def start_run_folder(cfg, out: Path, world: int, key: dict, policy: str, accelerator: Accelerator) -> None:
    """Write config.json for a new run; for --resume, check the run folder holds a checkpoint of this run."""
    record, path = config_record(cfg, world, key, policy), out / run_folder.CONFIG
    if cfg.resume:
        if checkpoint.latest(out / run_folder.CHECKPOINTS) is None:
            raise FileNotFoundError(f"--resume: {out / run_folder.CHECKPOINTS} holds no checkpoint; "
                                    "start the run again without --resume")
        saved = run_folder.read_record(out)
        changed = sorted(k for k in {**saved["config"], **record["config"]}
                         if k not in LOCATIONS and saved["config"].get(k) != record["config"].get(k))
        changed += [k for k in ("num_processes", "cache_key") if saved.get(k) != record[k]]
        if changed:
            then_now = "; ".join(f"{'--' + k.replace('_', '-') if k in record['config'] else k} "
                                 f"{json.dumps(saved['config'].get(k, saved.get(k)))} then, "
                                 f"{json.dumps(record['config'].get(k, record.get(k)))} now" for k in changed)
            raise ValueError(f"--resume: {out} was started with other settings than this command gives ({then_now}); "
                             "leave those flags out to go on as the run was started, or train a new run with another "
                             "--out")
        accelerator.wait_for_everyone()  # every process has compared before the main one writes
        if accelerator.is_main_process and saved != record:  # moved: config.json names where things are now
            run_folder.write_json(record, path)
        return
    if checkpoint.latest(out / run_folder.CHECKPOINTS) is not None:  # a run started without one lost nothing
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    accelerator.wait_for_everyone()  # every process has looked before the main one writes
    if accelerator.is_main_process:
        folders.claim(out, "run")
        run_folder.write_json(record, path)
    accelerator.wait_for_everyone()
