"""`repo generate`: what the policy writes against what the reference writes, judged by a reward.

Reads   prompts (data/pairs.read_prompts: the prompts of held-out pairs, or a prompt column), the policy (the
        run's final/, or --policy), the reference (the model the run's cache was scored with, or --ref) and the
        judge (data/judges.py).
Writes  into `out`, a folder re-po marks as its own (data/folders.py):
        samples/         data/parts.py, one row per response: prompt_index, row_id, prompt (or prompt_json), side
                         (policy | reference), sample, response, response_ids, num_tokens, finished (an end token
                         was drawn), policy_logps and ref_logps (Σ log-prob of the response under each model),
                         reward (the judge's; null without one)
        generation.json  the comparison (pipeline/generation_metrics.py) and what was compared, with which settings
        rewards.png, report.html (data/generation_report.py)
Run     repo generate HELDOUT --judge JUDGE [--run RUN] [--num-samples 2] [--max-new-tokens 128]

Both models draw `num_samples` responses per prompt with the same settings and the same seeds (transformers'
generate, or vLLM's offline engine); every response is scored by both models with the trainer's own reduction
(pipeline/logprobs.py) and judged. Prompts go `part_size` at a time, and a part is the unit of resumption: a rerun
with the same settings does only the parts the manifest does not list, drawing what an uninterrupted run would
(every batch's seed derives from --seed and the batch's place, not from what ran before). With vLLM the two
models' engines run one after the other over every part left, then the parts are scored and written.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch

from re_po.data import folders, generation_report, models, parts, run_folder
from re_po.data.judges import Judge, load_judge
from re_po.data.pairs import PairValue, read_prompts
from re_po.data.tokenize import tokenize_prompt, tokenizer_fingerprint
from re_po.pipeline import generation_metrics
from re_po.pipeline.logprobs import summed_logps
from re_po.pipeline.sampling import end_token_ids, sample_responses
from re_po.stages.configs import Backend, GenerateConfig

SAMPLES = "samples"
SUMMARY = "generation.json"
SIDES = ("policy", "reference")
DEFAULT_PROMPT_LENGTH = 512  # without a run to say how its prompts were cut

Drawn = dict[str, list[list[list[int]]]]  # side -> [prompt][sample] -> response ids


def run(cfg: GenerateConfig) -> Path:
    """Generate, score, judge and compare; returns generation.json."""
    out = Path(cfg.out)
    folders.check(out, "generate")  # before any work: never the user's folder
    policy, ref, max_prompt_length = _models(cfg)
    folders.check_outputs({"--out": out}, {"the prompts": cfg.data, "the run folder": cfg.run, "the policy": policy,
                                          "the reference model": ref, "the judge": cfg.judge})
    read = read_prompts(cfg.data, cfg.columns)
    count = min(cfg.max_prompts or len(read.prompts), len(read.prompts))
    prompts, row_ids = read.prompts[:count], read.row_ids[:count]
    policy_dir, ref_dir = models.resolve_model(policy), models.resolve_model(ref)
    tokenizer = _tokenizer(policy_dir, ref_dir)
    prompt_ids = [tokenize_prompt(tokenizer, prompt)[-max_prompt_length:] for prompt in prompts]
    judge = load_judge(cfg.judge, cfg.device, cfg.batch_size) if cfg.judge else None  # a bad judge fails first
    backend = _backend(cfg)
    key = {"policy": policy, "policy_sha": models.weights_sha(policy_dir), "reference": ref,
           "reference_sha": models.weights_sha(ref_dir), **tokenizer_fingerprint(tokenizer),
           "prompts_sha": read.dataset_sha, "max_prompt_length": max_prompt_length,
           "sampling": dataclasses.asdict(cfg.sampling()), "seed": cfg.seed, "judge": cfg.judge,
           "backend": str(backend), "backend_version": models.backend_version(backend)}
    layout = {"part_size": cfg.part_size, "num_prompts": count, "num_parts": math.ceil(count / cfg.part_size)}
    samples = out / SAMPLES
    # a failure before the first part is written leaves no folder; after it, the parts to resume from
    with folders.removed_on_failure([out], keep=lambda: parts.holds_parts(samples)):
        folders.claim(out, "generate")
        manifest = parts.open_parts(samples, key, layout, cfg.overwrite, "generation cache")
        todo = [i for i in range(layout["num_parts"]) if parts.part_name(i) not in manifest.parts]
        part = Part(prompts, row_ids, prompt_ids, cfg.part_size)

        def write(index: int, drawn: Drawn, loaded: Models) -> None:
            parts.write_part(samples, manifest, index, part.frame(index, drawn, tokenizer, loaded, judge))

        if todo:
            print(f"generate: {count} prompts × {cfg.num_samples} samples from the policy and the reference "
                  f"({backend}); {len(todo)} of {layout['num_parts']} parts to do", file=sys.stderr)
            if backend is Backend.vllm:  # one engine at a time: every part's samples, then scoring part by part
                drawn = {index: {} for index in todo}
                for side, folder in zip(SIDES, (policy_dir, ref_dir)):
                    for index, responses in _vllm_draws(cfg, folder, tokenizer, part, todo).items():
                        drawn[index][side] = responses
                loaded = Models.load(cfg, policy_dir, ref_dir, tokenizer)
                for index in todo:
                    write(index, drawn[index], loaded)
            else:
                loaded = Models.load(cfg, policy_dir, ref_dir, tokenizer)
                for index in todo:
                    write(index, _hf_draws(cfg, loaded, part, index), loaded)
        parts.finish(samples, manifest)
    frame = read_samples(out)
    comparison = compare(frame, cfg.seed)
    summary = {"policy": policy, "reference": ref, "judge": cfg.judge, "data": cfg.data,
               "settings": {"sampling": key["sampling"], "seed": cfg.seed, "backend": str(backend),
                            "max_prompt_length": max_prompt_length}, **comparison.as_dict()}
    path = out / SUMMARY
    run_folder.write_json(summary, path)
    generation_report.write(out, summary, frame)
    print(generation_report.format_summary(summary), file=sys.stderr)
    return path


def read_samples(out: Path) -> pl.DataFrame:
    """Every response of a finished `repo generate` folder (data/parts.py: each part's bytes checked)."""
    _, frames = parts.read_complete(Path(out) / SAMPLES, "generation cache", "run `repo generate` again with "
                                    "--overwrite", "`repo generate`")
    return pl.concat(frames, how="vertical")


def compare(frame: pl.DataFrame, seed: int) -> generation_metrics.Comparison:
    """The comparison of a samples table."""
    return generation_metrics.compare(
        grid(frame, "policy", "reward"), grid(frame, "reference", "reward"), grid(frame, "policy", "policy_logps"),
        grid(frame, "policy", "ref_logps"), grid(frame, "policy", "num_tokens"), grid(frame, "reference", "num_tokens"),
        seed=seed)


def grid(frame: pl.DataFrame, side: str, column: str) -> np.ndarray | None:
    """One side's `column` as a (P, S) array, prompts and samples in order; None where it holds nulls (no judge)."""
    rows = frame.filter(pl.col("side") == side).sort("prompt_index", "sample")
    if rows[column].null_count():
        return None
    return rows[column].to_numpy().astype(float).reshape(rows["prompt_index"].n_unique(), -1)


@dataclasses.dataclass(frozen=True)
class Part:
    """The prompts, split into parts of `size`."""

    prompts: list[PairValue]
    row_ids: list[int]
    prompt_ids: list[list[int]]
    size: int

    def range(self, index: int) -> range:
        return range(index * self.size, min((index + 1) * self.size, len(self.prompts)))

    def frame(self, index: int, drawn: Drawn, tokenizer, loaded: "Models", judge: Judge | None) -> pl.DataFrame:
        """One row per response of part `index`: both models' log-probs, and the judge's reward."""
        rows = [(p, side, s, ids) for k, p in enumerate(self.range(index)) for side in SIDES
                for s, ids in enumerate(drawn[side][k])]
        prompt_ids = [self.prompt_ids[p] for p, _, _, _ in rows]
        responses = [ids for _, _, _, ids in rows]
        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        prompts = [self.prompts[p] for p, _, _, _ in rows]
        conversational = isinstance(prompts[0], list)
        return pl.DataFrame({
            "prompt_index": pl.Series([p for p, _, _, _ in rows], dtype=pl.Int64),
            "row_id": pl.Series([self.row_ids[p] for p, _, _, _ in rows], dtype=pl.Int64),
            "prompt_json" if conversational else "prompt":
                [json.dumps(p, ensure_ascii=False) if conversational else p for p in prompts],
            "side": [side for _, side, _, _ in rows],
            "sample": pl.Series([s for _, _, s, _ in rows], dtype=pl.Int32),
            "response": texts,
            "response_ids": pl.Series(responses, dtype=pl.List(pl.Int32)),
            "num_tokens": pl.Series([len(ids) for ids in responses], dtype=pl.Int32),
            "finished": [ids[-1] in loaded.end_ids for ids in responses],
            "policy_logps": summed_logps(loaded.policy, prompt_ids, responses, loaded.pad_id).numpy(),
            "ref_logps": summed_logps(loaded.reference, prompt_ids, responses, loaded.pad_id).numpy(),
            "reward": pl.Series(judge(prompts, texts) if judge else [None] * len(rows), dtype=pl.Float64),
        })


def batch_seed(seed: int, *place: int) -> int:
    """A seed for one batch (or one request) from the run's seed and its place: the same on a rerun."""
    return int(np.random.SeedSequence([seed, *place]).generate_state(1)[0])


def _hf_draws(cfg: GenerateConfig, loaded: Models, part: Part, index: int) -> Drawn:
    """Both models' samples of part `index` with transformers, batch by batch, each batch's seed shared."""
    span = part.range(index)
    drawn: Drawn = {side: [] for side in SIDES}
    for b, start in enumerate(range(span.start, span.stop, cfg.batch_size)):
        batch = part.prompt_ids[start:min(start + cfg.batch_size, span.stop)]
        for side in SIDES:
            drawn[side] += sample_responses(loaded.of(side), batch, cfg.sampling(), batch_seed(cfg.seed, index, b),
                                            loaded.end_ids, loaded.pad_id)
    return drawn


def _vllm_draws(cfg: GenerateConfig, model_dir: Path, tokenizer, part: Part,
                todo: list[int]) -> dict[int, list[list[list[int]]]]:
    """One model's samples of every part in `todo` with vLLM's engine; each prompt's request seeded by its place."""
    from transformers import GenerationConfig
    from vllm import SamplingParams, TokensPrompt

    sampling = cfg.sampling()
    try:
        generation_config = GenerationConfig.from_pretrained(model_dir)
    except OSError:  # a model folder without generation_config.json
        generation_config = None
    end_ids = sorted(end_token_ids(generation_config, tokenizer))
    # the context the drawn prompts need, not the prompt cap: a small model's positions may be fewer than the cap
    longest_prompt = max(len(part.prompt_ids[p]) for index in todo for p in part.range(index))
    engine = models.vllm_engine(model_dir, "float32", max_model_len=longest_prompt + sampling.max_new_tokens + 1,
                                seed=cfg.seed, gpu_memory_utilization=cfg.gpu_memory_utilization)
    try:
        drawn = {}
        for index in todo:
            span = part.range(index)
            params = [SamplingParams(n=sampling.num_samples, temperature=sampling.temperature, top_p=sampling.top_p,
                                     top_k=0, max_tokens=sampling.max_new_tokens, stop_token_ids=end_ids,
                                     seed=batch_seed(cfg.seed, index, k), detokenize=False)
                      for k in range(len(span))]
            outputs = engine.generate([TokensPrompt(prompt_token_ids=part.prompt_ids[p]) for p in span], params,
                                      use_tqdm=False)
            drawn[index] = [[list(sample.token_ids) for sample in output.outputs] for output in outputs]
        return drawn
    finally:
        engine.llm_engine.engine_core.shutdown()  # P5: frees the engine process now


@dataclasses.dataclass(frozen=True)
class Models:
    """The policy and the reference as transformers models (one model where both are the same folder), the ids
    that end a response, and a pad id (masked out): what the hf draws and the scoring use."""

    policy: torch.nn.Module
    reference: torch.nn.Module
    end_ids: set[int]
    pad_id: int

    @classmethod
    def load(cls, cfg: GenerateConfig, policy_dir: Path, ref_dir: Path, tokenizer) -> "Models":
        policy = models.load_for_inference(policy_dir, "float32", cfg.device)
        reference = policy if ref_dir == policy_dir else models.load_for_inference(ref_dir, "float32", cfg.device)
        pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        return cls(policy, reference, end_token_ids(policy.generation_config, tokenizer), pad_id)

    def of(self, side: str) -> torch.nn.Module:
        return self.policy if side == "policy" else self.reference


def _models(cfg: GenerateConfig) -> tuple[str, str, int]:
    """The policy, the reference and the prompt length: from the run folder, unless given."""
    if cfg.policy is not None and cfg.ref is not None:
        return cfg.policy, cfg.ref, cfg.max_prompt_length or DEFAULT_PROMPT_LENGTH
    if cfg.run is None:
        raise ValueError("name a run folder of `repo train` (--run), or both --policy and --ref")
    record = run_folder.read_record(Path(cfg.run), need_key=True)
    final = Path(cfg.run) / run_folder.FINAL
    if cfg.policy is None and not (final / "config.json").exists():
        raise FileNotFoundError(f"{cfg.run} has no trained policy in {final}; let `repo train` finish first, or "
                                "name one with --policy")
    key = record["cache_key"]
    return (cfg.policy or str(final), cfg.ref or key["ref_model"],
            cfg.max_prompt_length or int(key["max_prompt_length"]))


def _tokenizer(policy_dir: Path, ref_dir: Path):
    """The policy's tokenizer; refused where the reference's would give other ids (their log-probs of one token list
    would then be of different texts)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    if ref_dir != policy_dir and tokenizer_fingerprint(AutoTokenizer.from_pretrained(ref_dir)) != \
            tokenizer_fingerprint(tokenizer):
        raise ValueError(f"the policy ({policy_dir}) and the reference ({ref_dir}) tokenize differently (tokenizer or "
                         "chat template); compare models that share a tokenizer")
    return tokenizer


def _backend(cfg: GenerateConfig) -> Backend:
    if cfg.backend is not Backend.auto:
        return cfg.backend
    gpu, vllm = torch.cuda.is_available(), importlib.util.find_spec("vllm") is not None
    return Backend.vllm if gpu and vllm and cfg.device == "auto" else Backend.hf
