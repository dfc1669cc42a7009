"""Throughput of stage two (`repo train`) against TRL's DPOTrainer, on the same pairs, model, batch and max length.

The first --pairs rows of the bundled sample are scored once (`repo score`, hf backend, not timed here), then each
run trains one epoch in its own process (so each peak RSS is its own), one after the other:
  dpo, re-dpo, simpo, re-simpo   `repo train --loss L [--robust]`, float32, AdamW
  dpo-padded                     dpo with --no-packing: one sequence per forward row, right-padded
  dpo-glibc-malloc               dpo with glibc's default malloc (data/allocator.py not applied): fresh pages
                                 for every step's tensors
  trl-precompute                 trl.DPOTrainer(precompute_ref_log_probs=True): reference log-probs computed
                                 before training (that pass is reported apart, not in the training rate)
  trl                            trl.DPOTrainer with the reference model run at every step
Reported per run: pairs/s of the training loop (re-po: the optimizer steps, from metrics.jsonl; TRL: train()),
end-to-end seconds (model load, checkpoint and final save included), peak RSS; for the robust runs the
between-epoch posterior pass in seconds and as a fraction of the epoch's training time; for re-po runs the share
of the computed positions that hold no real token (padding); the RE-PO overhead of re-dpo over dpo and re-simpo
over simpo. Targets (issue 4): overhead ≤ 5%, epoch pass ≤ 40% of an epoch,
≥ 2× TRL-precompute pairs/s in the same precision, lower peak RSS.

Run on a quiet machine (timings of a shared one are meaningless):
    .venv/bin/python bench/train_throughput.py [--pairs 128] [--batch-size 8] [--max-length 128] [--json out.json]
Needs the `bench` extra (trl) unless `--skip trl trl-precompute`. `--model DIR` replaces SmolLM2-135M-Instruct
(a tiny model makes a smoke run).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import child

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "train.jsonl"
REPO_RUNS = {"dpo": ("dpo", False, True), "re-dpo": ("dpo", True, True), "simpo": ("simpo", False, True),
             "re-simpo": ("simpo", True, True), "dpo-padded": ("dpo", False, False),
             "dpo-glibc-malloc": ("dpo", False, True)}  # (loss, robust, packing)
VARIANTS = ("dpo-padded", "dpo-glibc-malloc")  # dpo with one thing changed: compared with dpo, not with TRL
TRL_RUNS = {"trl-precompute": True, "trl": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-prompt-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--model", help="a model folder, or random:NAME for a random-init model "
                        "(bench/random_models.py; default: the prepared SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA, as users train (weights fp32)")
    parser.add_argument("--skip", nargs="*", default=[], choices=[*REPO_RUNS, *TRL_RUNS])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one run, in its own process
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = child_repo(spec) if spec["run"] in REPO_RUNS else child_trl(spec)
        if spec["device"] != "cpu":
            import torch

            result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        child.send(result)
        return
    if args.pairs % args.batch_size:
        raise SystemExit("--pairs must be a multiple of --batch-size (every step then trains a full batch)")

    from score_throughput import count_parameters, peak_flops, prepare_model  # bench/ is on sys.path

    from re_po.data import scoring as score

    bf16 = args.bf16 and args.device != "cpu"
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[: args.pairs]]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = prepare_model(args.model, workdir, "cpu", "float32")  # training keeps fp32 weights
        results: dict = {"pairs": len(rows), "batch_size": args.batch_size, "max_length": args.max_length,
                         "model": args.model or str(model_dir), "cpus": os.cpu_count(), "device": args.device,
                         "precision": "bf16 autocast" if bf16 else "float32",
                         "parameters": count_parameters(model_dir), "runs": {}}
        results["peak_flops"], results["peak_source"] = peak_flops(args.device, "float32" if results["precision"]
                                                                   == "float32" else "bfloat16")
        (workdir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        scores = score.run(score.ScoreConfig(
            data=str(workdir / "pairs.jsonl"), model=str(model_dir), out=workdir / "scores", device=args.device,
            backend=score.Backend.hf, max_length=args.max_length, max_prompt_length=args.max_prompt_length))
        for name in [*REPO_RUNS, *TRL_RUNS]:
            if name in args.skip:
                continue
            spec = {"run": name, "model": str(model_dir), "scores": str(scores), "out": str(workdir / name),
                    "data": str(workdir / "pairs.jsonl"), "batch_size": args.batch_size, "lr": args.lr,
                    "max_length": args.max_length, "max_prompt_length": args.max_prompt_length,
                    "device": args.device, "bf16": bf16}
            results["runs"][name] = child.run(__file__, spec, f"run {name}")
            print(f"{name}: {results['runs'][name]}", file=sys.stderr)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def child_repo(spec: dict) -> dict:
    """One epoch of `repo train`; the training loop's time is the sum of the step times in metrics.jsonl."""
    from re_po.data import allocator
    from re_po.pipeline import forward, logprobs
    from re_po.stages import train

    loss, robust, packing = REPO_RUNS[spec["run"]]
    if spec["run"] == "dpo-glibc-malloc":
        allocator.keep_freed_memory = lambda: False
    passes, epoch_posteriors = [], forward.every_logit
    positions = {"computed": 0, "real": 0}

    def counted(layout):
        def lay_out(*args, **kwargs):
            batch = layout(*args, **kwargs)
            positions["computed"] += batch.input_ids.numel()
            positions["real"] += int((batch.sequence >= 0).sum())
            return batch
        return lay_out

    logprobs.pack, logprobs.pad = counted(logprobs.pack), counted(logprobs.pad)

    def timed_epoch_posteriors(*args, **kwargs):
        counted_before, start = dict(positions), time.perf_counter()
        z = epoch_posteriors(*args, **kwargs)
        passes.append(time.perf_counter() - start)
        positions.update(counted_before)  # the pass's forwards are not training tokens
        return z

    forward.every_logit = timed_epoch_posteriors
    config = train.TrainConfig(scores=Path(spec["scores"]), out_dir=Path(spec["out"]), policy=spec["model"],
                               loss=loss, robust=robust, batch_size=spec["batch_size"], lr=spec["lr"],
                               epochs=1, device=spec["device"], bf16=spec["bf16"], packing=packing)
    start = time.perf_counter()
    out = train.run(config)
    end_to_end = time.perf_counter() - start
    loop_seconds, steps = child.loop_seconds(out, spec["batch_size"])
    return {"pairs": steps * spec["batch_size"], "train_seconds": loop_seconds, "end_to_end_seconds": end_to_end,
            "epoch_pass_seconds": sum(passes) if passes else None,
            "padding": 1 - positions["real"] / positions["computed"], "tokens": positions["real"]}


def child_trl(spec: dict) -> dict:
    """One epoch of TRL's DPOTrainer, fp32 weights (bf16 autocast with --bf16, as re-po); train() timed, the
    precompute pass (in __init__) apart."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    precompute = TRL_RUNS[spec["run"]]
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines()]
    config = DPOConfig(output_dir=spec["out"], precompute_ref_log_probs=precompute, max_length=spec["max_length"],
                       per_device_train_batch_size=spec["batch_size"], learning_rate=spec["lr"], num_train_epochs=1,
                       report_to=[], use_cpu=spec["device"] == "cpu", bf16=spec["bf16"], save_strategy="no",
                       dataloader_num_workers=0,
                       disable_tqdm=True)
    start = time.perf_counter()
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32), args=config,
                         train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                                          for r in rows]),
                         processing_class=AutoTokenizer.from_pretrained(spec["model"]))
    setup = time.perf_counter() - start
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    return {"pairs": len(rows), "train_seconds": train_seconds, "setup_seconds": setup,
            "end_to_end_seconds": time.perf_counter() - start}


def report(results: dict) -> None:
    runs = results["runs"]
    print(f"{results['pairs']} pairs, batch {results['batch_size']}, max length {results['max_length']}, "
          f"{results['cpus']} CPUs, device {results['device']}, {results['precision']}; model {results['model']}")
    print(f"MFU: 6 × {results['parameters'] / 1e6:.1f}M parameters × real tokens / s against "
          f"{results['peak_source']}, {results['peak_flops'] / 1e12:.2f} TFLOP/s (the tokens of both responses; "
          "the forward of the prompt counted once per response)")
    memory = "peak GPU GB" if results["device"] != "cpu" else "peak RSS GB"
    print(f"{'run':<15} {'pairs/s':>8} {'tok/s':>8} {'MFU':>6} {'end-to-end s':>12} {memory:>11} {'epoch pass':>16} "
          f"{'padding':>8}")
    rate = {name: r["pairs"] / r["train_seconds"] for name, r in runs.items()}
    for name, r in runs.items():
        passed = r.get("epoch_pass_seconds")
        epoch_pass = f"{passed:.1f}s ({passed / r['train_seconds']:.0%})" if passed is not None else ""
        padding = f"{r['padding']:.0%}" if "padding" in r else ""
        tokens = f"{r['tokens'] / r['train_seconds']:8.0f}" if "tokens" in r else " " * 8
        mfu = (f"{6 * results['parameters'] * r['tokens'] / r['train_seconds'] / results['peak_flops']:6.1%}"
               if "tokens" in r else " " * 6)
        peak_memory = r.get("peak_gpu_bytes", r["peak_rss_bytes"])
        print(f"{name:<15} {rate[name]:8.2f} {tokens} {mfu} {r['end_to_end_seconds']:12.1f} {peak_memory / 1e9:11.2f} "
              f"{epoch_pass:>16} {padding:>8}")
    for variant, what in zip(VARIANTS, ("packing", "keeping freed memory")):
        if "dpo" in rate and variant in rate:
            print(f"{what}: dpo / {variant} {rate['dpo'] / rate[variant]:.2f}× pairs/s, "
                  f"{runs['dpo']['peak_rss_bytes'] / runs[variant]['peak_rss_bytes']:.2f}× peak RSS")
    for robust, plain in (("re-dpo", "dpo"), ("re-simpo", "simpo")):
        if robust in rate and plain in rate:
            print(f"RE-PO overhead, {robust} over {plain}: {rate[plain] / rate[robust] - 1:+.1%} (target ≤ 5%)")
    for name in [run for run in REPO_RUNS if run not in VARIANTS]:
        for trl in TRL_RUNS:
            if name in rate and trl in rate:
                print(f"{name} / {trl}: {rate[name] / rate[trl]:.2f}× pairs/s, "
                      f"{runs[name]['peak_rss_bytes'] / runs[trl]['peak_rss_bytes']:.2f}× peak RSS")


if __name__ == "__main__":
    main()
