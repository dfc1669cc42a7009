"""Where the time of stage one and stage two goes: torch.profiler over `repo score` and a few steps of `repo train`.

On SmolLM2-135M-Instruct (float32, this CPU) and the first --pairs bundled pairs, max length 128. The operators'
own time (self CPU time on the calling thread, which waits for the intra-op threads) is summed by kind, and the
rest of the wall time is Python and everything outside an operator:
  matmul          aten::mm/addmm/bmm/linear: the decoder's projections and MLP, the LM head, their gradients
  attention       scaled-dot-product attention and its backward
  log-softmax     logsumexp/log_softmax/exp over the vocabulary, and their backward
  elementwise     RMSNorm, rotary, SiLU, residual adds, the optimizer's updates
  copy/index      copies, gathers, scatters, concatenation, the packing layout's index work
  other ops       every other operator
  outside ops     wall time minus the operators' own time: Python, tokenization, Parquet, the data loader
Also: the real-token rate as a share of this machine's fp32 matmul rate (2 × parameters × tokens for scoring,
6 × for training), the number that the profile explains.

Run on a quiet machine:  .venv/bin/python bench/profile_stages.py [--pairs 256] [--steps 12] [--json out.json]
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import child
from score_throughput import SAMPLE, count_parameters, matmul_flops
from torch.profiler import ProfilerActivity, profile

from re_po.data import scoring as score
from re_po.pipeline import logprobs
from re_po.stages import train
from re_po.stages.prepare_model import ensure_default_model

KINDS = {  # the first kind whose words the operator's name holds
    "attention": ("attention", "sdpa", "flash"),
    "log-softmax": ("logsumexp", "log_softmax", "logsoftmax", "aten::exp", "expbackward"),
    "matmul": ("aten::mm", "addmm", "aten::bmm", "aten::linear", "aten::matmul"),
    "copy/index": ("copy", "index", "gather", "scatter", "aten::cat", "select", "slice", "masked", "nonzero",
                   "aten::to", "contiguous", "clone"),
    "elementwise": ("add", "mul", "div", "sub", "pow", "rsqrt", "mean", "silu", "neg", "sigmoid", "sqrt", "lerp",
                    "addcdiv", "addcmul", "foreach", "where", "fill", "zero", "cos", "sin", "sum"),
}


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, words in KINDS.items() if any(w in lowered for w in words)), "other ops")


def by_kind(prof, wall_seconds: float) -> dict[str, float]:
    """Seconds per kind from the operators' self CPU time; the remainder of the wall time is "outside ops"."""
    seconds = dict.fromkeys([*KINDS, "other ops"], 0.0)
    for event in prof.key_averages():
        if event.key.startswith(("aten::", "autograd::")) or "Backward" in event.key:
            seconds[kind_of(event.key)] += event.self_cpu_time_total / 1e6
    seconds["outside ops"] = max(0.0, wall_seconds - sum(seconds.values()))
    return seconds


def top_ops(prof, limit: int = 8) -> list[tuple[str, float]]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e6) for e in events[:limit]]


def profiled(fn) -> tuple[object, float]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    return prof, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    model = ensure_default_model()
    parameters, flops = count_parameters(model), matmul_flops()
    rows = SAMPLE.read_text().splitlines()[: args.pairs]
    tokens = {"score": 0, "train": 0}
    pack, pad = logprobs.pack, logprobs.pad

    def counting(layout, stage):
        def lay_out(*a, **k):
            batch = layout(*a, **k)
            tokens[stage[0]] += int((batch.sequence >= 0).sum())
            return batch
        return lay_out

    stage = ["score"]
    score.pack, score.pad = counting(pack, stage), counting(pad, stage)
    logprobs.pack, logprobs.pad = score.pack, score.pad
    results = {"pairs": len(rows), "parameters": parameters, "matmul_flops": flops, "cpus": os.cpu_count(),
               "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "pairs.jsonl").write_text("\n".join(rows) + "\n")
        config = score.ScoreConfig(data=str(work / "pairs.jsonl"), model=str(model), out=work / "scores",
                                   device="cpu", max_length=128, max_prompt_length=64)
        prof, wall = profiled(lambda: score.run(config))
        results["score"] = {"wall": wall, "kinds": by_kind(prof, wall), "top": top_ops(prof),
                            "rate": 2 * parameters * tokens["score"] / wall / flops}
        stage[0] = "train"
        train_config = train.TrainConfig(scores=work / "scores", out_dir=work / "run", policy=str(model),
                                         batch_size=8, max_steps=args.steps, device="cpu", lr=1e-6)
        prof, wall = profiled(lambda: train.run(train_config))
        loop, _ = child.loop_seconds(work / "run", 8)
        results["train"] = {"wall": wall, "loop": loop, "kinds": by_kind(prof, wall), "top": top_ops(prof),
                            "rate": 6 * parameters * tokens["train"] / loop / flops}
    results["load_after"] = os.getloadavg()[0]
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def report(results: dict) -> None:
    print(f"{results['pairs']} pairs, {results['cpus']} CPUs (load {results['load_before']:.2f} before, "
          f"{results['load_after']:.2f} after), {results['parameters'] / 1e6:.1f}M parameters, fp32 matmul "
          f"{results['matmul_flops'] / 1e9:.0f} GFLOP/s")
    for stage in ("score", "train"):
        r = results[stage]
        what = "2 × params × real tokens / wall" if stage == "score" else "6 × params × real tokens / loop time"
        print(f"\n{stage}: {r['wall']:.1f} s wall; {what} = {r['rate']:.0%} of the matmul rate")
        for kind, seconds in sorted(r["kinds"].items(), key=lambda kv: -kv[1]):
            print(f"  {kind:<12} {seconds:7.2f} s {seconds / r['wall']:6.1%}")
        print("  top operators (self time): " + ", ".join(f"{name} {s:.2f} s" for name, s in r["top"]))


if __name__ == "__main__":
    main()
