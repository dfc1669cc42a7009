"""Stage two, `repo train`: train the policy on the score cache with DPO, IPO, SimPO, CPO (plain or RE-PO
`--robust`), or the cDPO / rDPO baselines. The reference model is never loaded.

Reads   the score cache (data/schema.read_scores): token ids and reference log-probs of every pair, refused if
        its tokenizer or chat template differs from the policy's; the policy and its tokenizer.
Writes  the run folder (data/run_folder.py): config.json, metrics.jsonl (+ tensorboard/, or the --report-to tracker),
        eta_steps.parquet, posteriors/ and annotators/ per epoch (--robust), checkpoints/, final/.

`_setup` builds the model, optimizer, scheduler, accelerator, trackers and the EM (pipeline/robust.py: `EM` for
--robust, `Plain` otherwise; --robust-mode estimate first runs the noise estimate of the cache, written as epoch 0,
data/epoch_zero.py). `_loop` is Algorithm 1's order: for each micro-batch one forward of chosen and rejected
together → induced logit z → E-step w with the η in force → loss → backward; then clip, optimizer and scheduler
step, and `em.after_step` on the whole global batch. Between epochs a no-grad pass gives every pair's z, and
`em.after_epoch` its posterior (method.md §7.5, §10).

Several processes (`accelerate launch` with a config of docs/accelerate/: DDP, FSDP2 or DeepSpeed ZeRO-2/3; README
"Multi-GPU"): each runs its own share of every step (pipeline/batching.py deals rows out explicitly, so no pair is
padded in twice); per-pair results are gathered, so every process computes the same η; checkpoints go through
accelerate's save_state, which leaves sharding to the engine.
"""
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from re_po.data import (
    allocator,
    checkpoint,
    epoch_zero,
    folders,
    launch,
    models,
    run_folder,
    schema,
    scoring,
    tokenize,
)
from re_po.data.checkpoint import TrainState
from re_po.data.columns import TRUTH
from re_po.data.judges import load_judge
from re_po.data.pair_table import MissingReference, PairTable
from re_po.data.pairs import read_prompts
from re_po.data.tables import truth_column
from re_po.data.train_log import TENSORBOARD, Logger
from re_po.pipeline import batching, forward, losses, robust
from re_po.pipeline.choices import Sampling
from re_po.pipeline.em import ETA_MAX, init_eta
from re_po.pipeline.forward import SequenceLogps, pair_logps
from re_po.pipeline.generation_eval import GenerationEval
from re_po.pipeline.reliability import Labels
from re_po.pipeline.sampling import end_token_ids
from re_po.stages import configs
from re_po.stages.configs import EStep, EtaInit, TrainConfig

__all__ = ["TENSORBOARD", "SequenceLogps", "TrainConfig", "pair_logps", "run"]  # SequenceLogps, pair_logps and
# TENSORBOARD live in pipeline/forward.py and data/train_log.py; tests reach them through the stage that uses them


def run(cfg: TrainConfig) -> Path:
    """Train; returns the run folder (cfg.out_dir), whose final/ holds the policy and tokenizer."""
    folders.check(cfg.out_dir, "run")  # every process, before any work: never the user's folder
    # A run that fails before its first checkpoint leaves no folder; the main process removes it (RANK: accelerate's).
    with folders.removed_on_failure([cfg.out_dir], keep=lambda: os.environ.get("RANK", "0") != "0"
                                    or checkpoint.latest(cfg.out_dir / run_folder.CHECKPOINTS) is not None):
        training = _setup(cfg)
        try:  # the bar is closed also when a step stops the run (NaN loss), so it prints nothing later
            _loop(cfg, training)
        finally:
            training.bar.close()
        training.log.close()
        _save_final(training.accelerator, training.model, training.tokenizer, cfg, cfg.out_dir)
        return cfg.out_dir


@dataclass
class Training:
    """What `_setup` builds and `_loop` runs."""

    accelerator: Accelerator
    pairs: PairTable
    tokenizer: object
    model: torch.nn.Module  # SequenceLogps around the policy, prepared by accelerate
    optimizer: torch.optim.Optimizer
    scheduler: object
    em: robust.EM | robust.Plain
    state: TrainState
    log: Logger
    bar: tqdm
    pad_id: int
    total_steps: int
    held_out: tuple | None  # (PairTable, truth) of --eval-data
    writes: GenerationEval | None  # what the policy writes, judged (--eval-judge)


def _setup(cfg: TrainConfig) -> Training:
    """The accelerator and tracker, the pairs, the policy, optimizer and scheduler (prepared), the EM, the logger,
    the held-out evaluations; and on --resume, the checkpoint's state."""
    allocator.keep_freed_memory()
    tracker = launch.tracker(cfg)
    accelerator = _accelerator(cfg, tracker)
    set_seed(cfg.seed)
    out, world = cfg.out_dir, accelerator.num_processes
    pairs = _read_pairs(cfg)
    policy_name = cfg.policy or pairs.key["ref_model"]  # by default the policy starts as the reference
    folders.check_outputs({"--out": cfg.out_dir}, {"the score cache": cfg.scores, "--estimate-with": cfg.estimate_with,
                                                   "--eval-data": cfg.eval_data, "the policy": policy_name})
    tokenizer = models.load_matching_tokenizer(policy_name, pairs.key, cfg.scores)
    launch.start_run_folder(cfg, out, world, pairs.key, policy_name, accelerator)  # before the slow model load
    model = SequenceLogps(models.load_policy(policy_name, cfg))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay, fused=True)  # one kernel: 5× faster on CPU
    steps_per_epoch = math.ceil(pairs.num_pairs / (cfg.batch_size * cfg.grad_accum * world))
    total_steps = min(cfg.max_steps or math.inf, steps_per_epoch * cfg.epochs)
    scheduler = _scheduler(cfg, optimizer, total_steps)
    launch.fill_deepspeed_config(accelerator, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    log = Logger(out, accelerator, pairs.annotators, tracker, launch.tracker_config(cfg, world, pairs.key, policy_name))
    state, reweighting = TrainState(), _em(cfg, pairs, log)
    if cfg.resume:
        checkpoint.load(accelerator, checkpoint.latest(out / run_folder.CHECKPOINTS), state, reweighting, scheduler)
    else:
        reweighting.start(0, 1)
    log.start(state.global_step)  # metrics.jsonl drops what a killed run wrote past its checkpoint
    held_out = _held_out(cfg, pairs.key, accelerator) if cfg.eval_data is not None else None  # scored by the reference once
    writes = _generation_eval(cfg, pairs.key, tokenizer, accelerator) if cfg.eval_judge is not None else None
    bar = tqdm(total=total_steps, initial=state.global_step, disable=not accelerator.is_main_process,
               desc=f"train {cfg.loss}{' robust' if cfg.robust else ''}")
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    return Training(accelerator, pairs, tokenizer, model, optimizer, scheduler, reweighting, state, log, bar, pad_id,
                    total_steps, held_out, writes)


def _loop(cfg: TrainConfig, t: Training) -> None:
    """Algorithm 1's order, step by step and epoch by epoch, from wherever `t.state` stands."""
    accelerator, pairs, model, em, state = t.accelerator, t.pairs, t.model, t.em, t.state
    world = accelerator.num_processes
    model.train()
    while state.epoch <= cfg.epochs and state.global_step < t.total_steps:
        plan = batching.plan_epoch(pairs.lengths, cfg.batch_size * cfg.grad_accum * world, cfg.seed, state.epoch)
        while state.step_in_epoch < len(plan) and state.global_step < t.total_steps:
            started, step_rows = time.perf_counter(), plan[state.step_in_epoch]
            micro_batches, gathered = batching.split_step(step_rows, cfg.batch_size, world), []
            for i, shards in enumerate(micro_batches):
                rows = shards[accelerator.process_index]
                # A process without rows here still runs a forward (DDP syncs every backward), on a real row
                # whose loss is multiplied by 0 and whose record is dropped.
                run_rows, keep = (rows, 1.0) if rows else (step_rows[:1], 0.0)
                last = i == len(micro_batches) - 1
                accelerator.sync_gradients = last  # DeepSpeed's backward steps after the last micro-batch only
                with nullcontext() if last else accelerator.no_sync(model):
                    logps = pair_logps(model, pairs, run_rows, t.pad_id, cfg.packing)
                    z = em.logit(logps)  # the induced logit (Eq. 2)
                    w = em.weights(run_rows, z)  # E-step with the η in force (Eq. 4, method.md §9)
                    per_pair = em.loss(run_rows, logps, z, w)  # Eq. 5; the base method's own loss without --robust
                    # The loss is the mean over the global batch (method.md §7.3); DDP averages over processes.
                    accelerator.backward(per_pair.sum() * (keep * world / len(step_rows)))
                gathered.append(forward.records(cfg.loss_spec(), logps, per_pair, z, w, rows, cfg.batch_size))
            batch = dict(zip(forward.RECORD, accelerator.gather(torch.cat(gathered)).T))  # same on every process
            batch = {name: values[batch["row"] >= 0] for name, values in batch.items()}
            forward.stop_if_not_finite(batch["loss"], batch["row"].long(), pairs, state.global_step + 1)

            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf)
            learning_rate = t.scheduler.get_last_lr()[0]
            t.optimizer.step()
            t.scheduler.step()
            t.optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            state.step_in_epoch += 1
            em.after_step(batch["row"].long(), batch["z"], batch["w"], state.global_step, state.epoch)  # Eq. 7

            _log_step(cfg, t, batch, float(grad_norm), learning_rate, len(step_rows) / (time.perf_counter() - started),
                      state.epoch - 1 + state.step_in_epoch / len(plan))
            if cfg.save_every and state.global_step % cfg.save_every == 0 and state.step_in_epoch < len(plan):
                _save_checkpoint(t)

        if em.active:  # between epochs: every pair's posterior with the current policy (method.md §7.5)
            z = forward.every_logit(model, pairs, em, accelerator, t.pad_id, cfg.batch_size, cfg.packing)
            w = em.after_epoch(z, state.global_step, state.epoch)
            t.log.epoch_tables(state.epoch, pairs, z, w, em.eta, cfg.flag_threshold,
                               em.first_visit_z if state.epoch == 1 else None)
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        _save_checkpoint(t)


def _log_step(cfg: TrainConfig, t: Training, batch: dict, grad_norm: float, learning_rate: float,
              pairs_per_s: float, epoch: float) -> None:
    """metrics.jsonl and the tracker after a step: the batch's metrics, η, and --eval-data's (and --eval-judge's)
    when an evaluation is due (every --eval-every steps and at the last step)."""
    step, accelerator = t.state.global_step, t.accelerator
    due = (cfg.eval_every and step % cfg.eval_every == 0) or step == t.total_steps
    evaluated = forward.evaluate(t.model, t.held_out, cfg.loss_spec(), t.pad_id, cfg.packing) if (
        t.held_out and due) else {}
    if t.writes is not None and evaluated and accelerator.is_main_process:  # what the policy writes
        evaluated.update(t.writes(accelerator.unwrap_model(t.model).policy))
    t.log.step(step, batch, t.em.eta if t.em.active else None, cfg.flag_threshold if t.em.active else None,
               grad_norm=grad_norm, learning_rate=learning_rate, epoch=epoch, pairs_per_s=pairs_per_s, **evaluated)
    t.bar.update()
    t.bar.set_postfix(loss=f"{float(batch['loss'].mean()):.4f}", pairs_s=f"{pairs_per_s:.1f}")


def uses_estimate(cfg: TrainConfig) -> bool:
    """Whether the run starts with the noise estimate of its cache (epoch 0)."""
    return cfg.eta_init is EtaInit.estimate or cfg.e_step is not EStep.policy


def _em(cfg: TrainConfig, pairs: PairTable, log: Logger) -> robust.EM | robust.Plain:
    """The run's EM (pipeline/robust.py) from its settings; with the estimate, epoch 0 is written (or read back on
    resume) first. With --eta-init estimate η starts at the estimate's, and the annotators it did not identify are
    held there: no update moves them silently."""
    if not cfg.robust:
        return robust.Plain(cfg.loss_spec())
    eta, prior, held = init_eta(pairs.num_annotators, min(cfg.eta0, ETA_MAX)), None, None
    if uses_estimate(cfg):
        zero = epoch_zero.read_or_estimate(pairs, cfg.out_dir, cfg.resume, cfg.scores, cfg.estimate_with,
                                           cfg.estimate, configs.algorithm_1_flags())
        if not zero.resumed:
            log.epoch_tables(0, pairs, zero.z, zero.w, zero.eta, cfg.flag_threshold, None,
                             {"eta_se": zero.eta_se, "identified": zero.identified.tolist()})
        prior = zero.z
        if cfg.eta_init is EtaInit.estimate:
            eta = eta if zero.resumed else zero.eta
            held = ~zero.identified
    labels = Labels(pairs.annotator, pairs.pair, pairs.orientation, pairs.num_annotators, pairs.num_groups)
    em = robust.EM(cfg.loss_spec(), cfg.e_step, cfg.eta_update, cfg.eta_alpha, cfg.robust_form, labels, eta, prior,
                   held)
    if em.base_rows is not None and em.base_rows.any() and not zero.resumed:
        print(f"--robust: {int(em.base_rows.sum())} of {len(em.base_rows)} labels are alone on their pair, by an "
              f"annotator not identified, without model evidence: w would be eta0; they train with the plain "
              f"{cfg.loss} loss (method.md §10)", file=sys.stderr)
    return em


def _save_checkpoint(t: Training) -> None:
    t.log.eta_steps(t.em.history if t.em.active else [])  # the trajectory so far, beside the checkpoint that holds it
    checkpoint.save(t.accelerator, t.log.out / run_folder.CHECKPOINTS, t.state.global_step, t.state, t.em, t.scheduler)


def _accelerator(cfg: TrainConfig, tracker: str | None) -> Accelerator:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no CUDA device")
    on_gpu = cfg.device != "cpu" and torch.cuda.is_available()
    forget_accelerator_settings()
    accelerator = Accelerator(cpu=cfg.device == "cpu", mixed_precision="bf16" if cfg.bf16 and on_gpu else "no",
                              log_with=tracker, project_dir=str(cfg.out_dir))
    launch.check_launch(accelerator)
    return accelerator


def forget_accelerator_settings() -> None:
    """Drop accelerate's per-process AcceleratorState (mixed precision, device placement) but keep the process
    group (PartialState), so that a later run in the same process (the demo, the robustness benchmark) may ask for
    other settings. accelerate has no public call for this; the private one is used here only, and
    tests/test_train.py fails loudly if accelerate renames or changes it."""
    AcceleratorState._reset_state(reset_partial_state=False)


def _read_pairs(cfg: TrainConfig) -> PairTable:
    try:
        return PairTable.read(cfg.scores, with_reference=losses.needs_reference(cfg.loss))
    except MissingReference as err:
        raise MissingReference(f"loss {cfg.loss} needs reference log-probs: {err}; rescore with `repo score`, or "
                               "use a reference-free loss (simpo, cpo)") from err


def _held_out(cfg: TrainConfig, key: dict, accelerator: Accelerator) -> tuple[PairTable, torch.Tensor | None]:
    """The held-out pairs of --eval-data, scored by the training cache's reference model with its lengths into
    <run>/eval (by the main process; resumed like any cache), and their truth column (True where the label is
    wrong) when they have one."""
    cache = cfg.out_dir / run_folder.EVAL
    if accelerator.is_main_process:
        scoring.run(configs.ScoreConfig(data=cfg.eval_data, model=key["ref_model"], out=cache, embeddings=False,
                              max_length=int(key["max_length"]), max_prompt_length=int(key["max_prompt_length"])))
    accelerator.wait_for_everyone()
    frame, _ = schema.read_scores(cache)
    truth = torch.from_numpy(truth_column(frame, TRUTH, cache).to_numpy()) if TRUTH in frame.columns else None
    return PairTable.read(cache, with_reference=True), truth


def _generation_eval(cfg: TrainConfig, key: dict, tokenizer, accelerator: Accelerator) -> GenerationEval | None:
    """eval/win_rate, eval/reward, eval/kl of --eval-judge on the first --eval-prompts prompts of --eval-data, on
    the main process: the reference model is loaded for it (its samples, drawn once, and the KL)."""
    if not accelerator.is_main_process:
        return None
    reference = models.load_for_inference(models.resolve_model(key["ref_model"]), "float32", str(accelerator.device))
    prompts = read_prompts(cfg.eval_data).prompts[:cfg.eval_prompts]
    cut = int(key["max_prompt_length"])
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    return GenerationEval(reference, prompts, [tokenize.tokenize_prompt(tokenizer, p)[-cut:] for p in prompts],
                          load_judge(cfg.eval_judge, str(accelerator.device)),
                          lambda ids: tokenizer.batch_decode(ids, skip_special_tokens=True),
                          Sampling(max_new_tokens=cfg.eval_max_new_tokens), cfg.seed,
                          end_token_ids(reference.generation_config, tokenizer), pad_id)


def _scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    make = get_cosine_schedule_with_warmup if cfg.scheduler is configs.Schedule.cosine else get_linear_schedule_with_warmup
    return make(optimizer, round(cfg.warmup_ratio * total_steps), total_steps)


def _save_final(accelerator: Accelerator, model, tokenizer, cfg: TrainConfig, out: Path) -> None:
    """final/: the policy (LoRA merged in) via save_pretrained, plus its tokenizer; loadable by transformers/vLLM."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP shards; every process must call it
    if accelerator.is_main_process:
        policy = accelerator.unwrap_model(model).policy
        tmp, final = out / (run_folder.FINAL + ".tmp"), out / run_folder.FINAL
        shutil.rmtree(tmp, ignore_errors=True)
        if cfg.lora:
            policy.merge_and_unload().save_pretrained(tmp)
        else:
            policy.save_pretrained(tmp, state_dict={k.removeprefix("policy."): v for k, v in state_dict.items()})
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    accelerator.wait_for_everyone()
