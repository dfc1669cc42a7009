"""Build the bundled controlled-sentiment data in data/sample/continuations/: on-policy pairs whose true reward is
known, and labels from simulated annotators whose noise is known (the DPO paper's controlled-sentiment setting, on
real text).

Prompts: the first PROMPT_WORDS words of the human-written sentences of Hutto & Gilbert (2014) (tweets, movie and
product reviews, newspaper editorials; in the vaderSentiment 3.3.2 sdist, as for bench/build_sample_data.py), kept
only where VADER scores the start itself neutral (compound 0: the sentiment is left open), each start once, split
into train and held-out prompts. The model is asked to continue the start as plain text (no chat template).
Responses: two samples per prompt from the reference, SmolLM2-135M-Instruct (re-po's own sampler,
pipeline/sampling.py: temperature 1, top-p 1, MAX_NEW_TOKENS new tokens), so the pairs are on-policy.
True reward: VADER's compound score of the continuation (data/judges.vader_compound), a lexicon and rules
validated against human ratings. A pair whose two rewards differ by less than --min-gap states no preference and is
dropped.
Labels (seeded): each annotator k says a ≻ b with the Bradley–Terry probability σ((r_a − r_b)/τ_k) on the true
rewards, and then flips its answer with probability f_k (ANNOTATORS): a careful one, a hasty one, a spammer (η = ½)
and an adversary (η < ½). `is_flipped` is true where a label disagrees with the true order; the measured
reliability of an annotator is the share of its labels that do not.

Written (atomically):
  train-true.jsonl     every train pair in its true order (annotator "truth"): DPO on it is the ceiling
  train-1label.jsonl   one label per pair, each by one annotator drawn at random (as UltraFeedback, HH-RLHF)
  train-3labels.jsonl  three labels per pair, by three of the annotators (as MultiPref)
  heldout-prompts.jsonl  the held-out prompts, for `repo generate`
  heldout-pairs.jsonl  two reference samples per held-out prompt in their true order, for `repo evaluate`
  README.md            what was built and the measured reliabilities
Run:  python bench/build_generation_data.py [--sdist vaderSentiment-3.3.2.tar.gz] [--model DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
from pathlib import Path

import build_sample_data as vader_corpus  # bench/: the corpus reader of the bundled human-label data
import numpy as np

from re_po.data.atomic import atomic_write, atomic_write_text
from re_po.data.judges import vader_compound
from re_po.data.models import load_for_inference
from re_po.data.project import default_model_dir
from re_po.data.tokenize import tokenize_prompt
from re_po.pipeline.choices import Sampling
from re_po.pipeline.sampling import end_token_ids, sample_responses

OUT = Path(__file__).resolve().parents[1] / "data" / "sample" / "continuations"
PROMPT_WORDS = 4
MAX_NEW_TOKENS = 24
BATCH = 32  # prompts per generate call
# annotator -> (Bradley–Terry temperature τ on the reward difference, probability of then flipping the answer)
ANNOTATORS = {"careful": (0.05, 0.0), "hasty": (0.5, 0.1), "spammer": (1.0, 0.5), "adversary": (0.05, 0.7)}


def prompts_of(files: dict[str, bytes], rng: random.Random) -> list[str]:
    """Distinct neutral starts of the corpus' sentences, shuffled."""
    starts: dict[str, None] = {}
    for sentences in vader_corpus.load_sentences(files, rng, max_chars=10_000).values():
        for sentence in sentences:
            words = sentence.text.split()
            if len(words) > PROMPT_WORDS:
                start = " ".join(words[:PROMPT_WORDS])
                if vader_compound(None, start) == 0.0 and sum(c.isalpha() for c in start) >= 8:
                    starts.setdefault(start)
    prompts = sorted(starts)
    rng.shuffle(prompts)
    return prompts


def sample_pairs(model_dir: Path, prompts: list[str], seed: int) -> list[tuple[str, str]]:
    """Two continuations of each prompt from the model, as text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_for_inference(model_dir, "float32", "cpu")
    ends = end_token_ids(model.generation_config, tokenizer)
    sampling = Sampling(num_samples=2, max_new_tokens=MAX_NEW_TOKENS)
    pairs = []
    for start in range(0, len(prompts), BATCH):
        ids = [tokenize_prompt(tokenizer, p) for p in prompts[start:start + BATCH]]
        for samples in sample_responses(model, ids, sampling, seed + start, ends, tokenizer.pad_token_id or 0):
            a, b = tokenizer.batch_decode(samples, skip_special_tokens=True)
            pairs.append((a, b))
        print(f"  sampled {min(start + BATCH, len(prompts))} of {len(prompts)} prompts", flush=True)
    return pairs


def true_pairs(prompts: list[str], samples: list[tuple[str, str]], min_gap: float, prefix: str) -> list[dict]:
    """Pairs in their true order (the higher VADER reward chosen), those at least min_gap apart."""
    rows = []
    for i, (prompt, (a, b)) in enumerate(zip(prompts, samples)):
        ra, rb = vader_compound(prompt, a), vader_compound(prompt, b)
        if abs(ra - rb) >= min_gap and a.strip() and b.strip() and a != b:
            (chosen, rc), (rejected, rr) = sorted([(a, ra), (b, rb)], key=lambda x: -x[1])
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "pair_id": f"{prefix}-{i:04d}",
                         "chosen_reward": rc, "rejected_reward": rr})
    return rows


def label(pair: dict, annotator: str, rng: random.Random) -> dict:
    """One annotator's label of a true-order pair: Bradley–Terry on the true rewards, then a flip."""
    temperature, flip = ANNOTATORS[annotator]
    says_true = rng.random() < 1 / (1 + math.exp(-(pair["chosen_reward"] - pair["rejected_reward"]) / temperature))
    if rng.random() < flip:
        says_true = not says_true
    row = {**pair, "annotator": annotator, "is_flipped": not says_true}
    if not says_true:
        row.update(chosen=pair["rejected"], rejected=pair["chosen"], chosen_reward=pair["rejected_reward"],
                   rejected_reward=pair["chosen_reward"])
    return row


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def reliability(rows: list[dict]) -> dict[str, tuple[int, float]]:
    out = {}
    for annotator in ANNOTATORS:
        mine = [r for r in rows if r["annotator"] == annotator]
        out[annotator] = (len(mine), 1 - float(np.mean([r["is_flipped"] for r in mine]))) if mine else (0, math.nan)
    return out


def readme(args, sizes: dict[str, int], counts: dict[str, int], reliabilities: dict[str, dict]) -> str:
    table = "\n".join(f"| {name} | {annotator} | {n} | {acc:.3f} |" for name, found in reliabilities.items()
                      for annotator, (n, acc) in found.items())
    wrong = {name: 1 - sum(n * acc for n, acc in found.values()) / sum(n for n, _ in found.values())
             for name, found in reliabilities.items()}
    annotators = "\n".join(f"| {a} | {t} | {f} |" for a, (t, f) in ANNOTATORS.items())
    files = "\n".join(f"- `{name}`: {counts[name]} rows, {sizes[name] // 1000} kB" for name in sizes)
    return f"""# Controlled sentiment: on-policy continuations, a known true reward, simulated annotators

Built by `python bench/build_generation_data.py --seed {args.seed}` (its docstring gives every rule) from the
human-written sentences of Hutto & Gilbert (2014) in the `vaderSentiment==3.3.2` sdist (MIT; the license is in
`../LICENSE-vaderSentiment.txt`). Do not edit by hand; rerun the script.

- Prompt: the first {PROMPT_WORDS} words of a corpus sentence, one whose start VADER scores neutral, continued as
  plain text by SmolLM2-135M-Instruct (two samples per prompt, temperature 1, top-p 1, {MAX_NEW_TOKENS} new tokens).
- True reward: VADER's compound score of the continuation (`re_po.data.judges:vader_compound`); pairs whose two
  rewards differ by less than {args.min_gap} are dropped.
- Labels: Bradley–Terry on the true rewards with the annotator's temperature τ, then a flip with probability f:

| annotator | τ | f |
|---|---|---|
{annotators}

{files}

Columns: `prompt`, `chosen`, `rejected`, `pair_id`, `annotator`, `is_flipped` (the label disagrees with the true
order), `chosen_reward` / `rejected_reward` (the true rewards of the responses as the label orders them).

## Measured reliability (share of labels in the true order)
| file | annotator | labels | measured reliability |
|---|---|---|---|
{table}

Wrong labels: {', '.join(f'{name} {value:.1%}' for name, value in wrong.items())}.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="path to the vaderSentiment 3.3.2 sdist; downloaded with pip if omitted")
    parser.add_argument("--model", type=Path, default=None, help="the reference model folder (default: SmolLM2)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-prompts", type=int, default=512)
    parser.add_argument("--heldout-prompts", type=int, default=256)
    parser.add_argument("--min-gap", type=float, default=0.05, help="least true-reward difference of a pair")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        files, _ = vader_corpus.read_source(args.sdist or vader_corpus.fetch_sdist(Path(tmp)))
    rng = random.Random(args.seed)
    prompts = prompts_of(files, rng)
    train_prompts = prompts[:args.train_prompts]
    heldout_prompts = prompts[args.train_prompts:args.train_prompts + args.heldout_prompts]
    model = args.model or default_model_dir()
    train = true_pairs(train_prompts, sample_pairs(model, train_prompts, args.seed), args.min_gap, "train")
    heldout = true_pairs(heldout_prompts, sample_pairs(model, heldout_prompts, args.seed + 1), args.min_gap, "heldout")

    names = list(ANNOTATORS)
    one = [label(pair, rng.choice(names), rng) for pair in train]
    three = [label(pair, annotator, rng) for pair in train for annotator in sorted(rng.sample(names, 3))]
    files_out = {
        "train-true.jsonl": [{**pair, "annotator": "truth", "is_flipped": False} for pair in train],
        "train-1label.jsonl": one,
        "train-3labels.jsonl": three,
        "heldout-prompts.jsonl": [{"prompt": p} for p in heldout_prompts],
        "heldout-pairs.jsonl": [{**pair, "annotator": "truth", "is_flipped": False} for pair in heldout],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, rows in files_out.items():
        data = jsonl(rows)
        atomic_write(args.out / name, lambda tmp, data=data: tmp.write_bytes(data))
        sizes[name] = len(data)
    reliabilities = {"train-1label.jsonl": reliability(one), "train-3labels.jsonl": reliability(three)}
    atomic_write_text(args.out / "README.md", readme(args, sizes, {n: len(r) for n, r in files_out.items()},
                                                     reliabilities))
    for name, found in reliabilities.items():
        for annotator, (n, acc) in found.items():
            print(f"{name:20s} {annotator:10s} labels={n:4d} measured reliability={acc:.3f}")
    print(f"{len(train)} train pairs of {len(train_prompts)} prompts, {len(heldout)} held-out pairs; written to "
          f"{args.out}")


if __name__ == "__main__":
    main()
