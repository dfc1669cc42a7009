"""Stage two, `repo train`: train the policy on the score cache with DPO, IPO, SimPO, CPO (plain or RE-PO
`--robust`), or the cDPO / rDPO baselines. The reference model is never loaded.

Reads   the score cache (data/schema.read_scores): token ids and reference log-probs of every pair, refused if
        its tokenizer or chat template differs from the policy's; the policy and its tokenizer.
Writes  the run folder (data/run_folder.py): config.json, metrics.jsonl (+ tensorboard/, or the --report-to tracker),
        eta_steps.parquet, posteriors/ and annotators/ per epoch (--robust), checkpoints/, final/.

One optimizer step (Algorithm 1): for each micro-batch, one forward of chosen and rejected together → induced
logit z → E-step w = σ(z.detach() + logit η + the other labels of the pair, method.md §9) with the η in force →
loss → backward; then clip, optimizer and
scheduler step, and the η EMA (Eq. 7) on the (Σw, count) of the whole global batch. Between epochs a no-grad
pass re-estimates every pair's posterior and persists it (method.md §7.5). The rules live in pipeline/robust.py.
With --robust's defaults (stages/configs.ROBUST_DEFAULTS), or --eta-init estimate / --e-step seeded|prior, the noise estimate of
the cache (stages/estimate.py) runs first and is written as epoch 0; η starts there, and its per-pair logits are
the E-step's evidence (prior) or join the policy's (seeded). configs.ALGORITHM_1 is the paper's loop exactly.

Several processes (`accelerate launch` with a config of docs/accelerate/: DDP, FSDP2 or DeepSpeed ZeRO-2/3; README
"Multi-GPU"): each runs its own share of every step (pipeline/batching.py deals rows out explicitly, so no pair is
padded in twice); per-pair results are gathered, so every process computes the same η; checkpoints go through
accelerate's save_state, which leaves sharding to the engine.
"""
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields, replace
from pathlib import Path

import polars as pl
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, parse_flag_from_env, set_seed
from tqdm.auto import tqdm

from re_po.data import folders, models, run_folder, schema, tokenize
from re_po.data.columns import TRUTH
from re_po.data.judges import load_judge
from re_po.data.noise_inputs import NoiseInputError
from re_po.data.pair_table import MissingReference, PairTable
from re_po.data.pairs import read_prompts
from re_po.data.tables import truth_column
from re_po.pipeline import batching, em, logprobs, losses, noise_metrics, robust, train_metrics
from re_po.pipeline.choices import LossSpec, Sampling
from re_po.pipeline.generation_eval import GenerationEval
from re_po.pipeline.losses import PairLogps
from re_po.pipeline.robust import EStep, EtaUpdate
from re_po.pipeline.sampling import end_token_ids
from re_po.stages import allocator, checkpoint, estimate, score
from re_po.stages.checkpoint import TrainState
from re_po.stages.configs import (
    EstimateConfig,
    EtaInit,
    ReportTo,
    Schedule,
    ScoreConfig,
    TrainConfig,
    algorithm_1_flags,
)

# Fields that may differ between a run and its --resume: they do not change what is trained.
RESUMABLE_CHANGES = ("resume", "save_every", "device", "report_to", "eval_data", "eval_every", "eval_judge",
                     "eval_prompts", "eval_max_new_tokens")
# Paths that only locate things: a run folder or cache may move; what the cache holds is checked by its key.
LOCATIONS = ("out_dir", "scores")
TENSORBOARD = "tensorboard"  # <run>/tensorboard: the TensorBoard tracker's folder
EVAL_BATCH = 32  # held-out pairs per no-grad forward (packed, so their lengths need no sorting)
RECORD = ("row", "loss", "z", "w", "logps_chosen", "logps_rejected", "rewards_chosen", "rewards_rejected")


def run(cfg: TrainConfig) -> Path:
    """Train; returns the run folder (cfg.out_dir), whose final/ holds the policy and tokenizer."""
    folders.check(cfg.out_dir, "run", run_folder.is_run)  # every process, before any work: never the user's folder
    # A run that fails before its first checkpoint leaves no folder; the main process removes it (RANK: accelerate's).
    with folders.removed_on_failure([cfg.out_dir], keep=lambda: os.environ.get("RANK", "0") != "0"
                                    or checkpoint.latest(cfg.out_dir / run_folder.CHECKPOINTS) is not None):
        return _train(cfg)


def _train(cfg: TrainConfig) -> Path:
    allocator.keep_freed_memory()
    tracker = _tracker(cfg)
    accelerator = _accelerator(cfg, tracker)
    set_seed(cfg.seed)
    out, spec, world = cfg.out_dir, cfg.loss_spec(), accelerator.num_processes
    pairs = _read_pairs(cfg)
    policy_name = cfg.policy or pairs.key["ref_model"]  # by default the policy starts as the reference
    folders.check_outputs({"--out": cfg.out_dir}, {"the score cache": cfg.scores, "--estimate-with": cfg.estimate_with,
                                                   "--eval-data": cfg.eval_data, "the policy": policy_name})
    tokenizer = _load_tokenizer(policy_name, pairs.key, cfg.scores)
    _start_run_folder(cfg, out, world, pairs.key, policy_name, accelerator)  # before the slow model load
    policy = _load_policy(policy_name, cfg)
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)

    model = SequenceLogps(policy)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay, fused=True)  # one kernel: 5× faster on CPU
    steps_per_epoch = math.ceil(pairs.num_pairs / (cfg.batch_size * cfg.grad_accum * world))
    total_steps = min(cfg.max_steps or math.inf, steps_per_epoch * cfg.epochs)
    scheduler = _scheduler(cfg, optimizer, total_steps)
    _fill_deepspeed_config(accelerator, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    eta = em.init_eta(pairs.num_annotators, min(cfg.eta0, em.ETA_MAX))
    state = TrainState(eta=eta, first_visit_z=torch.full((pairs.num_pairs,), math.nan, dtype=torch.float64))
    log = Logger(out, accelerator, pairs.annotators, 0 if not cfg.resume else None,
                 tracker, _tracker_config(cfg, world, pairs.key, policy_name))
    # the estimate before training: each row's prior logit, and the annotators whose η it did not identify
    prior, held = _epoch_zero(cfg, pairs, state, log) if uses_estimate(cfg) else (None, None)
    if cfg.resume:
        checkpoint.load(accelerator, checkpoint.latest(out / run_folder.CHECKPOINTS), state, scheduler)
    elif cfg.robust:
        state.eta_history.append({"step": 0, "epoch": 1, "event": "init", "eta": state.eta})
    log.start(state.global_step)
    held_out = _held_out(cfg, pairs.key, accelerator) if cfg.eval_data is not None else None  # scored by the reference once
    writes = _generation_eval(cfg, pairs.key, tokenizer, accelerator) if cfg.eval_judge is not None else None
    bar = tqdm(total=total_steps, initial=state.global_step, disable=not accelerator.is_main_process,
               desc=f"train {cfg.loss}{' robust' if cfg.robust else ''}")

    try:  # the bar is closed also when a step stops the run (NaN loss), so it prints nothing later
        model.train()
        while state.epoch <= cfg.epochs and state.global_step < total_steps:
            plan = batching.plan_epoch(pairs.lengths, cfg.batch_size * cfg.grad_accum * world, cfg.seed, state.epoch)
            while state.step_in_epoch < len(plan) and state.global_step < total_steps:
                started, step_rows = time.perf_counter(), plan[state.step_in_epoch]
                micro_batches = batching.split_step(step_rows, cfg.batch_size, world)
                others = _other_labels(pairs, state.eta) if cfg.robust else None  # η moves only between steps
                records = []
                for i, shards in enumerate(micro_batches):
                    rows = shards[accelerator.process_index]
                    # A process without rows here still runs a forward (DDP syncs every backward), on a real row
                    # whose loss is multiplied by 0 and whose record is dropped.
                    run_rows, keep = (rows, 1.0) if rows else (step_rows[:1], 0.0)
                    last = i == len(micro_batches) - 1
                    accelerator.sync_gradients = last  # DeepSpeed's backward steps after the last micro-batch only
                    with nullcontext() if last else accelerator.no_sync(model):
                        logps = pair_logps(model, pairs, run_rows, pad_id, cfg.packing)
                        if cfg.robust:  # Alg. 1: z → E-step with the η in force → robust loss
                            z = losses.induced_logit(spec, logps)
                            w = robust.posterior(cfg.e_step, z, None if prior is None else prior[run_rows],
                                                 others[run_rows],
                                                 state.eta[pairs.annotator[run_rows]])
                            per_pair = robust.per_pair_loss(cfg.robust_form, spec, logps, z, w)
                        else:  # the base method's own loss, not w ≡ 1
                            z = w = torch.full_like(logps.policy_chosen_logps, math.nan)
                            per_pair = losses.base_loss(spec, logps)
                        # The loss is the mean over the global batch (method.md §7.3); DDP averages over processes.
                        accelerator.backward(per_pair.sum() * (keep * world / len(step_rows)))
                    records.append(_records(spec, logps, per_pair, z, w, rows, cfg.batch_size))
                batch = dict(zip(RECORD, accelerator.gather(torch.cat(records)).T))  # same on every process
                valid = batch["row"] >= 0
                batch = {name: values[valid] for name, values in batch.items()}
                batch_rows = batch["row"].long()
                _stop_if_not_finite(batch["loss"], batch_rows, pairs, state.global_step + 1)

                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf)
                learning_rate = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.global_step += 1
                state.step_in_epoch += 1

                if cfg.robust:
                    if state.epoch == 1:  # out-of-sample margins: before the policy trained on these pairs (§7.6)
                        state.first_visit_z[batch_rows] = batch["z"]
                    # Eq. 7 after the optimizer step, on the global batch's w (method.md §7.4)
                    state.eta = robust.after_step(state.eta, batch["w"], pairs.annotator[batch_rows], cfg.eta_update,
                                                  cfg.eta_alpha, held)
                    state.eta_history.append({"step": state.global_step, "epoch": state.epoch, "event": "step",
                                              "eta": state.eta})
                pairs_per_s = len(step_rows) / (time.perf_counter() - started)
                due = cfg.eval_every and state.global_step % cfg.eval_every == 0
                evaluated = _evaluate(model, held_out, spec, pad_id, cfg.packing) if held_out and (
                    due or state.global_step == total_steps) else {}
                if writes is not None and evaluated and accelerator.is_main_process:  # what the policy writes
                    evaluated.update(writes(accelerator.unwrap_model(model).policy))
                log.step(state, batch, cfg, grad_norm=float(grad_norm), learning_rate=learning_rate,
                         epoch=state.epoch - 1 + state.step_in_epoch / len(plan), pairs_per_s=pairs_per_s,
                         **evaluated)
                bar.update()
                bar.set_postfix(loss=f"{float(batch['loss'].mean()):.4f}", pairs_s=f"{pairs_per_s:.1f}")
                if cfg.save_every and state.global_step % cfg.save_every == 0 and state.step_in_epoch < len(plan):
                    _save_checkpoint(accelerator, out, state, scheduler, log)

            if cfg.robust:  # between epochs: re-estimate every posterior with the current policy (method.md §7.5)
                _epoch_posteriors(cfg, spec, accelerator, model, pairs, state, pad_id, log, prior, held)
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
            _save_checkpoint(accelerator, out, state, scheduler, log)
    finally:
        bar.close()
    log.close()
    _save_final(accelerator, model, tokenizer, cfg, out)
    return out


class SequenceLogps(torch.nn.Module):
    """The policy behind a forward that returns summed response log-probs (logprobs.response_logps).

    response_logps calls the decoder and the LM head directly; wrapping the whole computation in one module
    lets DDP/FSDP and autocast see it as the model's forward.
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy
        # FSDP's transformer-layer wrapping (accelerate's TRANSFORMER_BASED_WRAP) finds the layer classes here
        self._no_split_modules = getattr(policy, "_no_split_modules", None)

    def forward(self, input_ids, response_mask, sequence, attention_mask=None, position_ids=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        packed = logprobs.Packed(input_ids, response_mask, sequence, attention_mask, position_ids)
        return logprobs.response_logps(self.policy, packed)


def pair_logps(model: torch.nn.Module, pairs: PairTable, rows: list[int], pad_id: int,
               packing: bool = True) -> PairLogps:
    """Policy log-probs of `rows`: chosen and rejected in one concatenated forward (packed several to a row, or
    right-padded); the reference from the cache. A pair with several labels among `rows` is forwarded once, and
    each of its rows takes the two log-probs in the order it states."""
    kept, position, swapped = pairs.distinct(rows)
    prompts = pairs.ids("prompt", kept)
    layout = logprobs.pack if packing else logprobs.pad
    packed = layout(prompts + prompts, pairs.ids("chosen", kept) + pairs.ids("rejected", kept), pad_id)
    first, second = model(packed.input_ids, packed.response_mask, packed.sequence,
                          packed.attention_mask, packed.position_ids)[0].split(len(kept))
    device, index = first.device, torch.tensor(rows)
    if len(kept) < len(rows):
        at, swap = torch.tensor(position, device=device), torch.tensor(swapped, device=device)
        first, second = first[at], second[at]
        first, second = torch.where(swap, second, first), torch.where(swap, first, second)
    ref = (None, None) if pairs.ref_chosen_logps is None else (pairs.ref_chosen_logps[index].to(device),
                                                               pairs.ref_rejected_logps[index].to(device))
    return PairLogps(first, second, *ref, pairs.chosen_len[index].to(device), pairs.rejected_len[index].to(device))


def _held_out(cfg: TrainConfig, key: dict, accelerator: Accelerator) -> tuple[PairTable, torch.Tensor | None]:
    """The held-out pairs of --eval-data, scored by the training cache's reference model with its lengths into
    <run>/eval (by the main process; resumed like any cache), and their truth column (True where the label is
    wrong) when they have one."""
    cache = cfg.out_dir / run_folder.EVAL
    if accelerator.is_main_process:
        score.run(ScoreConfig(data=cfg.eval_data, model=key["ref_model"], out=cache, embeddings=False,
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


@torch.no_grad()
def _evaluate(model, held_out: tuple[PairTable, torch.Tensor | None], spec: LossSpec, pad_id: int,
              packing: bool) -> dict[str, float]:
    """eval/* of the current policy on every held-out pair; every process computes the same (the forward of a
    DDP-wrapped model is collective)."""
    pairs, truth = held_out
    was_training = model.training
    model.eval()
    parts = []  # (loss, rewards_chosen, rewards_rejected) of each batch, in row order
    for start in range(0, pairs.num_pairs, EVAL_BATCH):
        logps = pair_logps(model, pairs, list(range(start, min(start + EVAL_BATCH, pairs.num_pairs))), pad_id, packing)
        parts.append((losses.base_loss(spec, logps), *losses.implicit_rewards(spec, logps)))
    model.train(was_training)
    loss, chosen, rejected = (torch.cat([part[i].double().cpu() for part in parts]) for i in range(3))
    return train_metrics.eval_metrics(loss, chosen, rejected, truth)


def _records(spec, logps, per_pair, z, w, rows, width) -> torch.Tensor:
    """Per-pair results as (width, len(RECORD)) float64 rows; padding rows have row = −1 (dropped after gather)."""
    rewards_chosen, rewards_rejected = losses.implicit_rewards(spec, logps)
    values = [torch.tensor(rows, dtype=torch.float64), per_pair, z, w, logps.policy_chosen_logps,
              logps.policy_rejected_logps, rewards_chosen, rewards_rejected]
    out = torch.full((width, len(RECORD)), -1.0, dtype=torch.float64, device=per_pair.device)
    if rows:
        out[: len(rows)] = torch.stack([v.detach().to(out)[: len(rows)] for v in values], dim=1)
    return out


def _stop_if_not_finite(loss: torch.Tensor, rows: torch.Tensor, pairs: PairTable, step: int) -> None:
    bad = rows[~torch.isfinite(loss)].tolist()
    if bad:
        ids = pairs.frame["pair_id"].gather(bad).to_list()
        raise FloatingPointError(f"non-finite loss at optimizer step {step} for {len(bad)} pairs; pair ids: "
                                 f"{ids[:20]}{' ...' if len(ids) > 20 else ''}; lower --lr, or check these pairs")


@torch.no_grad()
def _epoch_posteriors(cfg, spec, accelerator, model, pairs, state, pad_id, log, prior, held) -> None:
    """No-grad pass over all pairs: fresh z and the E-step's w with the η in force, written as Parquet; then
    robust.after_epoch (`--eta-update epoch|both`: one exact M-step)."""
    model.eval()
    pair_of = pairs.pair.tolist()  # a pair's labels side by side: pair_logps forwards the pair once
    order = sorted(range(pairs.num_pairs), key=lambda r: (-pairs.lengths[r], pair_of[r]))
    size, world, rank = 2 * cfg.batch_size, accelerator.num_processes, accelerator.process_index
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    z_sum = torch.zeros(pairs.num_pairs, dtype=torch.float64, device=accelerator.device)
    seen = torch.zeros_like(z_sum)
    for i in range(rank, math.ceil(len(batches) / world) * world, world):  # same number of forwards everywhere
        rows = batches[i] if i < len(batches) else batches[0]
        z = losses.induced_logit(spec, pair_logps(model, pairs, rows, pad_id, cfg.packing))
        if i < len(batches):
            z_sum[rows] += z.double()
            seen[rows] += 1
    z, seen = accelerator.reduce(z_sum, "sum").cpu(), accelerator.reduce(seen, "sum").cpu()
    if not bool((seen == 1).all()):
        raise RuntimeError(f"posterior pass covered {int((seen == 0).sum())} pairs 0 times and "
                           f"{int((seen > 1).sum())} more than once")
    model.train()
    w = robust.posterior(cfg.e_step, z, prior, _other_labels(pairs, state.eta), state.eta[pairs.annotator])
    if cfg.eta_update in (EtaUpdate.epoch, EtaUpdate.both):
        state.eta = robust.after_epoch(state.eta, w, pairs.annotator, cfg.eta_update, held)
        state.eta_history.append({"step": state.global_step, "epoch": state.epoch, "event": "epoch_pass",
                                  "eta": state.eta})
    log.epoch(state, pairs, z, w, cfg.flag_threshold)


def uses_estimate(cfg: TrainConfig) -> bool:
    return cfg.eta_init is EtaInit.estimate or cfg.e_step is not EStep.policy


def _epoch_zero(cfg: TrainConfig, pairs: PairTable, state: TrainState, log: "Logger"
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The noise estimate of the cache before any training (stages/estimate.py), persisted as epoch 0; η starts
    there with --eta-init estimate. Returns each row's prior logit (N,) float64 (the estimate's calibrated z), and
    with --eta-init estimate the annotators (K,) bool whose η the estimate did not identify: training holds
    their η where the estimate left it (robust.after_step), so that no update moves it silently.

    A resumed run reads epoch 0 back instead of estimating again, so it continues from the same prior."""
    if cfg.resume and 0 in run_folder.epochs_written(cfg.out_dir, run_folder.POSTERIORS):
        saved = run_folder.read_epoch(cfg.out_dir, run_folder.POSTERIORS, 0)
        found = run_folder.read_epoch(cfg.out_dir, run_folder.ANNOTATORS, 0)
        return (torch.tensor(saved.sort("row_id")["z"].to_numpy(), dtype=torch.float64),
                _held(cfg, pairs, dict(zip(found["annotator"], found["identified"]))))
    frame, key = schema.read_scores(cfg.scores)
    sources = [str(cfg.scores)]
    if cfg.estimate_with is not None:  # more pairs to learn the probe from; their rows go after the cache's
        extra, extra_key = schema.read_scores(cfg.estimate_with)
        differing = [f for f in ("weights_sha", "tokenizer_sha", "embed_layers") if extra_key.get(f) != key.get(f)]
        if differing:
            raise schema.CacheError(f"--estimate-with {cfg.estimate_with} was scored differently from {cfg.scores} "
                                    f"({', '.join(differing)}); score both with the same model and options")
        offset = int(frame["row_id"].max()) + 1
        shared = [c for c in frame.columns if c in extra.columns]
        frame = pl.concat([frame.select(shared), extra.select(shared).with_columns(pl.col("row_id") + offset)])
        sources.append(str(cfg.estimate_with))
    try:
        found = estimate.run(cfg.estimate, frame, key, " + ".join(sources))
    except NoiseInputError as err:  # say how training can go on, in train's own terms
        raise NoiseInputError(f"{err}.\n`repo train --robust` estimates the noise first: in repo.toml set [estimate] "
                              "probe = false (the labels' agreement alone) or prior_col = COLUMN, or train the "
                              f"paper's Algorithm 1: {algorithm_1_flags()}") from err
    rows = found.posteriors.head(pairs.num_pairs)  # the cache's own rows, in row_id order like `pairs`
    # by name: with --estimate-with the estimate may know annotators the cache does not have
    of = {a["annotator"]: a for a in found.annotators.iter_rows(named=True)}
    z, w = (torch.tensor(rows[name].to_numpy(), dtype=torch.float64) for name in ("z", "w"))
    eta = torch.tensor([of[a]["eta"] for a in pairs.annotators], dtype=torch.float64)
    log.epoch_tables(0, pairs, z, w, eta, cfg.flag_threshold, None,
                     {name: [of[a][name] for a in pairs.annotators] for name in ("eta_se", "identified")})
    held = _held(cfg, pairs, {a: of[a]["identified"] for a in pairs.annotators})
    if cfg.eta_init is EtaInit.estimate:
        state.eta = eta
    unidentified = " (not identified, held there)" if held is not None else " (not identified)"
    print(f"estimate before training ({found.model}, {found.seconds:.0f} s): " + ", ".join(
        f"{a} η {of[a]['eta']:.3f}{'' if of[a]['identified'] else unidentified}"
        for a in pairs.annotators[:8]) + (" ..." if pairs.num_annotators > 8 else ""), file=sys.stderr)
    return z, held


def _held(cfg: TrainConfig, pairs: PairTable, identified: dict[str, bool]) -> torch.Tensor | None:
    """(K,) True for the annotators whose η training must not move: with --eta-init estimate, those the estimate
    did not identify; None when η started at η0 (the paper's Algorithm 1 moves every η)."""
    if cfg.eta_init is not EtaInit.estimate:
        return None
    return torch.tensor([not identified[a] for a in pairs.annotators])


def _other_labels(pairs: PairTable, eta: torch.Tensor) -> torch.Tensor:
    """(N,) Σ ±logit η of the other labels of each row's pair (em.other_labels_logit); zero for single labels."""
    return em.other_labels_logit(eta, pairs.annotator, pairs.pair, pairs.orientation, pairs.num_groups)


class Logger:
    """metrics.jsonl (+ the tracker of --report-to, through accelerate) and the per-epoch Parquet files; writes on
    the main process. tracker: the accelerate tracker's name, or None; tracker_config: the run's settings for it."""

    def __init__(self, out: Path, accelerator: Accelerator, annotators: list[str], start_step: int | None,
                 tracker: str | None, tracker_config: dict):
        self.out, self.annotators, self.main = out, annotators, accelerator.is_main_process
        self.accelerator, self.tracker, self.tracker_config, self.metrics = accelerator, tracker, tracker_config, None
        if start_step is not None:
            self.start(start_step)

    def start(self, start_step: int) -> None:
        """Open metrics.jsonl (dropping lines past start_step) and the tracker; once the start step is known."""
        if self.metrics is not None:
            return
        self.metrics = run_folder.MetricsLog(self.out / run_folder.METRICS, start_step) if self.main else None
        if self.tracker is not None:  # TensorBoard writes into <run>/tensorboard, the others name a project
            self.accelerator.init_trackers(TENSORBOARD if self.tracker == "tensorboard" else "re-po",
                                           config=self.tracker_config)

    def step(self, state: TrainState, batch: dict, cfg: TrainConfig, **extra: float) -> None:
        if not self.main:
            return
        record = {"step": state.global_step, **extra,
                  **train_metrics.step_metrics(batch, cfg.flag_threshold if cfg.robust else None)}
        if cfg.robust:
            record.update(train_metrics.eta_metrics(state.eta, self.annotators))
        self.metrics.write(record)
        if self.tracker is not None:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state.global_step)

    def epoch(self, state: TrainState, pairs: PairTable, z: torch.Tensor, w: torch.Tensor, threshold: float) -> None:
        first_visit_z = state.first_visit_z if state.epoch == 1 else None
        self.epoch_tables(state.epoch, pairs, z, w, state.eta, threshold, first_visit_z)

    def epoch_tables(self, epoch: int, pairs: PairTable, z: torch.Tensor, w: torch.Tensor, eta: torch.Tensor,
                     threshold: float, first_visit_z: torch.Tensor | None, estimate: dict | None = None) -> None:
        if self.main:
            flagged = w.numpy() < threshold
            stats = noise_metrics.annotator_stats(pairs.annotator.numpy(), w.numpy(), flagged, len(self.annotators))
            run_folder.write_epoch_tables(self.out, epoch, pairs.frame, z.numpy(), w.numpy(), flagged,
                                          None if first_visit_z is None else first_visit_z.numpy(), self.annotators,
                                          eta.numpy(), stats.labels, stats.w_mean, stats.flagged, estimate)

    def eta_steps(self, state: TrainState) -> None:
        if self.main and state.eta_history:
            run_folder.write_eta_steps(self.out, state.eta_history, self.annotators)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.tracker is not None:  # not end_training(): it also ends the process group that final/ still needs
            for tracker in self.accelerator.trackers:
                tracker.finish()


def _save_checkpoint(accelerator: Accelerator, out: Path, state: TrainState, scheduler, log: Logger) -> None:
    log.eta_steps(state)  # the trajectory so far, beside the checkpoint that holds it
    checkpoint.save(accelerator, out / run_folder.CHECKPOINTS, state.global_step, state, scheduler)


def _accelerator(cfg: TrainConfig, tracker: str | None) -> Accelerator:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no CUDA device")
    on_gpu = cfg.device != "cpu" and torch.cuda.is_available()
    forget_accelerator_settings()
    accelerator = Accelerator(cpu=cfg.device == "cpu", mixed_precision="bf16" if cfg.bf16 and on_gpu else "no",
                              log_with=tracker, project_dir=str(cfg.out_dir))
    _check_launch(accelerator)
    return accelerator


def _check_launch(accelerator: Accelerator) -> None:
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


def _fill_deepspeed_config(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """DeepSpeed's engine scales the loss, clips and steps inside accelerator.backward, by its own config: its "auto"
    values come from re-po's settings, and one set otherwise is refused (accelerate lists it). The micro-batch per
    process, the clipping norm, and one accumulation step: re-po accumulates --grad-accum micro-batches itself and
    marks the last one with accelerator.sync_gradients."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.state.deepspeed_plugin.deepspeed_config_process(
            train_micro_batch_size_per_gpu=cfg.batch_size, gradient_accumulation_steps=1,
            train_batch_size=cfg.batch_size * accelerator.num_processes, gradient_clipping=cfg.max_grad_norm)


def _tracker(cfg: TrainConfig) -> str | None:
    """The accelerate tracker to log to, or None: --report-to, by default TensorBoard when it is installed."""
    choice = cfg.report_to or (ReportTo.tensorboard if importlib.util.find_spec("tensorboard") else ReportTo.none)
    if choice is ReportTo.none:
        return None
    if importlib.util.find_spec(str(choice)) is None:
        raise ModuleNotFoundError(f"--report-to {choice}: the {choice} package is not installed; pip install {choice}")
    return str(choice)


def _tracker_config(cfg: TrainConfig, world: int, key: dict, policy: str) -> dict:
    """The run's settings as a tracker's hyper-parameters: scalars as they are, anything else as text."""
    config = _config_record(cfg, world, key, policy)["config"]
    return {name: value if isinstance(value, (bool, int, float, str)) else str(value) for name, value in config.items()}


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


def _load_tokenizer(name: str, key: dict, scores: Path):
    """The policy's tokenizer; refused if the cache was tokenized with another tokenizer or chat template."""
    models.resolve_model(name)  # a hub id must be in the local cache: else one line saying so
    tokenizer = models.load_tokenizer(name)
    policy_key = tokenize.tokenizer_fingerprint(tokenizer)
    differing = [field for field, value in policy_key.items() if str(key.get(field)) != str(value)]
    if differing:
        shown = "\n".join(f"  {field}: cache {key.get(field)}, policy {policy_key[field]}" for field in differing)
        raise schema.CacheError(f"score cache {scores} was tokenized with another tokenizer or chat template than "
                                f"policy {name!r}; rescore with the policy's tokenizer.\n{shown}")
    return tokenizer


def _load_policy(name: str, cfg: TrainConfig) -> torch.nn.Module:
    """The starting policy in fp32 (autocast gives bf16 on GPU), dropout off as TRL's disable_dropout does."""
    policy = models.load_causal_lm(name, dtype=torch.float32)
    for module in policy.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if cfg.gradient_checkpointing:
        policy.config.use_cache = False
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora:
        try:
            import peft
        except ImportError as err:
            raise ImportError("--lora needs peft: pip install 're-po[peft]'") from err
        policy = peft.get_peft_model(policy, peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    return policy


def _scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    make = get_cosine_schedule_with_warmup if cfg.scheduler is Schedule.cosine else get_linear_schedule_with_warmup
    return make(optimizer, round(cfg.warmup_ratio * total_steps), total_steps)


def _config_record(cfg: TrainConfig, world: int, key: dict, policy: str) -> dict:
    config = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in RESUMABLE_CHANGES}
    record = {"config": {**config, "policy": policy}, "loss_spec": asdict(cfg.loss_spec()), "num_processes": world,
              "cache_key": key}
    return json.loads(json.dumps(record, default=str))


def resumed_config(cfg: TrainConfig, given: set[str]) -> TrainConfig:
    """With --resume, the run's own settings (its config.json, above repo.toml and the defaults) wherever `given`,
    the settings of the flags, names none: a bare `repo train --resume` goes on as the run was started, and a flag
    given with another value is refused, naming it (_start_run_folder). The score cache is the run's own while it
    is there."""
    if not (cfg.resume and run_folder.is_run(cfg.out_dir)):  # no run there: the stage says what to do
        return cfg
    saved = run_folder.read_record(cfg.out_dir)["config"]
    declared = {f.name for f in fields(TrainConfig)} - given - set(RESUMABLE_CHANGES) - {"out_dir"}
    taken = {name: value for name, value in saved.items() if name in declared}
    if "scores" in taken and not Path(taken["scores"]).exists():  # the run and its cache moved: the one given serves
        del taken["scores"]
    try:
        if isinstance(taken.get("estimate"), dict):
            taken["estimate"] = EstimateConfig(**taken["estimate"])
        return replace(cfg, **taken)
    except TypeError as err:  # a setting of another shape or name than TrainConfig's: not this re-po's record
        raise ValueError(f"{cfg.out_dir / run_folder.CONFIG}: its settings are not a run's of this re-po ({err}); "
                         "start the run again without --resume, or in another folder") from err


def _start_run_folder(cfg, out, world, key, policy, accelerator) -> None:
    """Write config.json for a new run; for --resume, check the run folder holds a checkpoint of this run."""
    record, path = _config_record(cfg, world, key, policy), out / run_folder.CONFIG
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
        folders.claim(out, "run", run_folder.is_run)
        run_folder.write_json(record, path)
    accelerator.wait_for_everyone()


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
