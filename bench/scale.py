"""Cost per pair as the data grows: `repo score` and `repo train --robust` on 1k, 10k and 100k generated pairs.

The model is random-init (bench/random_models.py "tiny", float32 on this CPU) and the pairs are generated from the
bundled sample's words (a prompt of 4–20 words, responses of 5–40, three annotators, one label per pair), so
the work per pair is the same at every size and only the size changes. Each stage runs in its own process (its
peak RSS is its own), one size after the other:
  score   pairs/s over the whole stage (tokenization, forward, Parquet parts), peak RSS, the cache's bytes per pair
          (token ids, log-probs, texts, and the float16 embeddings the noise estimate reads)
  train   one epoch of RE-DPO (--robust: the noise estimate first, then the loop, then the epoch's posterior
          pass); pairs/s of the loop (from metrics.jsonl), the estimate's seconds, end to end, peak RSS, the run
          folder's bytes per pair
Flat cost per pair means pairs/s about equal and peak RSS growing by much less than the data.

Run on a quiet machine:  .venv/bin/python bench/scale.py [--sizes 1000 10000 100000] [--max-steps N] [--json out.json]
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import child
import random_models

WORDS = sorted({w for line in random_models.SAMPLE.read_text().splitlines()
                for key in ("prompt", "chosen", "rejected") for w in json.loads(line)[key].split()})
BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--max-steps", type=int, default=0,
                        help="cap the training loop (0: one whole epoch); the estimate still reads every pair")
    parser.add_argument("--algorithm-1", action="store_true",
                        help="train with the paper's Algorithm 1 (no noise estimate before the loop)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one stage, in its own process
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        child.send(child_score(spec) if spec["stage"] == "score" else child_train(spec))
        return
    results = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = random_models.model_folder("tiny", work / "model")
        for n in args.sizes:
            folder = work / str(n)
            folder.mkdir()
            write_pairs(folder / "pairs.jsonl", n)
            spec = {"model": str(model), "data": str(folder / "pairs.jsonl"), "scores": str(folder / "scores"),
                    "out": str(folder / "run")}
            scored = child.run(__file__, {**spec, "stage": "score"}, f"score {n}")
            trained = child.run(__file__, {**spec, "stage": "train", "pairs": n, "max_steps": args.max_steps,
                                           "algorithm_1": args.algorithm_1}, f"train {n}")
            results["sizes"][n] = {"score": scored, "train": trained}
            print(f"{n}: {results['sizes'][n]}", file=sys.stderr)
    results["load_after"] = os.getloadavg()[0]
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def write_pairs(path: Path, n: int) -> None:
    rng = random.Random(n)
    def text(low, high):
        return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))
    with path.open("w") as out:
        for i in range(n):
            out.write(json.dumps({"prompt": text(4, 20), "chosen": text(5, 40), "rejected": text(5, 40),
                                  "annotator": f"rater-{i % 3}"}) + "\n")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def child_score(spec: dict) -> dict:
    from re_po.data import scoring as score

    start = time.perf_counter()
    score.run(score.ScoreConfig(data=spec["data"], model=spec["model"], out=Path(spec["scores"]), device="cpu",
                                max_length=128, max_prompt_length=64))
    return {"seconds": time.perf_counter() - start, "cache_bytes": folder_bytes(Path(spec["scores"]))}


def child_train(spec: dict) -> dict:
    from re_po.data import estimate
    from re_po.stages import train

    timed = {}
    estimate_run = estimate.run

    def timed_estimate(*args, **kwargs):
        begin = time.perf_counter()
        found = estimate_run(*args, **kwargs)
        timed["estimate_seconds"] = time.perf_counter() - begin
        return found

    estimate.run = timed_estimate
    start = time.perf_counter()
    out = train.run(train.TrainConfig(scores=Path(spec["scores"]), out_dir=Path(spec["out"]), policy=spec["model"],
                                      robust=True, batch_size=BATCH, epochs=1, lr=1e-5, device="cpu",
                                      max_steps=spec["max_steps"], robust_mode="paper" if spec["algorithm_1"] else "estimate"))
    end_to_end = time.perf_counter() - start
    loop, steps = child.loop_seconds(out, BATCH)
    return {"pairs": min(spec["pairs"], BATCH * steps), "steps": steps, "loop_seconds": loop, "end_to_end_seconds": end_to_end,
            "run_bytes": folder_bytes(out), **timed}


def report(results: dict) -> None:
    print(f"{results['cpus']} CPUs, load {results['load_before']:.2f} before and {results['load_after']:.2f} after; "
          f"random-init tiny Llama, float32; train: RE-DPO, batch {BATCH}, one epoch")
    print(f"{'pairs':>7} | {'score pairs/s':>13} {'peak RSS MB':>11} {'cache B/pair':>12} | {'train pairs/s':>13} "
          f"{'estimate s':>10} {'end-to-end s':>12} {'peak RSS MB':>11} {'run B/pair':>10}")
    for n, r in results["sizes"].items():
        s, t = r["score"], r["train"]
        print(f"{int(n):>7} | {int(n) / s['seconds']:>13.1f} {s['peak_rss_bytes'] / 1e6:>11.0f} "
              f"{s['cache_bytes'] / int(n):>12.0f} | {t['pairs'] / t['loop_seconds']:>13.1f} "
              f"{t.get('estimate_seconds', float('nan')):>10.1f} {t['end_to_end_seconds']:>12.1f} "
              f"{t['peak_rss_bytes'] / 1e6:>11.0f} {t['run_bytes'] / int(n):>10.0f}")


if __name__ == "__main__":
    main()
