"""Build the bundled preference data in data/sample/ from human sentiment ratings.

Source: the rated sentences of Hutto & Gilbert (ICWSM 2014), shipped inside the vaderSentiment 3.3.2
source distribution (MIT) as additional_resources/hutto_ICWSM_2014.tar.gz: 23,703 tweets, movie-review,
NYT-editorial and product-review sentences, each rated from -4 to +4 by 15 to 99 independent people.

Construction (deterministic given --seed; the numbers it measures go into data/sample/README.md):
- Each sentence's ratings are shuffled once. The first five are the label raters, split into three
  disjoint annotator groups (LABEL_GROUPS): `rater-a` (the 1st rating), `rater-b` (the 2nd) and
  `panel-of-3` (the mean of the 3rd to 5th). The consensus (the truth) is the mean of the REMAINING
  ratings, which no label ever sees.
- Pairs join two sentences of one domain whose consensus means differ by a meaningful gap: at least
  `--min-gap` points and at least `--min-z` standard errors (Welch), and less than `--max-gap` points,
  so that single people disagree with the consensus often enough to be worth modelling.
- Every pair is labelled by each of the three groups, one row per label sharing the pair's `pair_id` (as
  in MultiPref, several annotators per pair). A tie in a group's scores is no judgment, so that group
  gives no label for the pair (breaking it by coin flip would be synthetic noise, not human noise); a
  pair where every group ties is dropped. The groups' raters are disjoint, so their errors are
  independent given each sentence's ratings, but not given the consensus alone: a close pair fools
  every group more often, as in real data.
- The prompt asks for the more positive sentence (`--polarity positive`, the default) or, per pair at
  random, a positive or a negative one (`--polarity both`); "chosen" is the sentence the label scores
  higher (positive prompt) or lower (negative prompt). One direction is what a 135M policy learns from a
  few hundred pairs in one epoch (measured: held-out accuracy 0.57 on positive prompts, 0.50 with both).
  `is_flipped` says the label's order disagrees with the consensus; an annotator group's measured
  reliability is the share of its labels not flipped.
- Every sentence is in at most one pair, so assigning whole pairs to train / held-out / pool is a split
  by sentence: no held-out pair contains a training sentence. Identical texts are kept once. The
  held-out file keeps one label per pair (the groups in turn): evaluation scores the pair against the
  consensus, and one row per pair counts every pair once.

Written (atomically): train.jsonl, heldout.jsonl, pool.jsonl, README.md, LICENSE-vaderSentiment.txt.
Run:  python bench/build_sample_data.py [--sdist vaderSentiment-3.3.2.tar.gz] [--out data/sample]
Without --sdist it downloads the sdist with pip (PyPI must be reachable) and checks its sha256.
"""
from __future__ import annotations

import argparse
import ast
import bisect
import hashlib
import html
import io
import json
import math
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from re_po.data.atomic import atomic_write, atomic_write_text

SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
LICENSE_MEMBER = "vaderSentiment-3.3.2/LICENSE.txt"

# domain -> (file stem inside hutto_ICWSM_2014/, what the prompt asks for)
DOMAINS = {
    "tweet": ("tweets", "tweet"),
    "movie": ("movieReviewSnippets", "sentence from a movie review"),
    "editorial": ("nytEditorialSnippets", "sentence from a newspaper editorial"),
    "product": ("amazonReviewSnippets", "sentence from a product review"),
}
# annotator group -> the slice of each sentence's shuffled ratings its label reads (disjoint raters)
LABEL_GROUPS = {"rater-a": slice(0, 1), "rater-b": slice(1, 2), "panel-of-3": slice(2, 5)}
LABEL_RATINGS = 5            # ratings[:5] make the labels, ratings[5:] the consensus
SPLITS = ("train", "heldout", "pool")


@dataclass(frozen=True)
class Sentence:
    id: str                  # "<domain>-<source id>"
    domain: str
    text: str
    ratings: tuple[int, ...]  # shuffled once; [:LABEL_RATINGS] label raters, the rest the consensus

    def label_score(self, annotator: str) -> float:
        return statistics.fmean(self.ratings[LABEL_GROUPS[annotator]])


@dataclass(frozen=True)
class Consensus:
    mean: float
    sem: float               # standard error of that mean


def fetch_sdist(dest: Path) -> Path:
    """pip-download the sdist into dest (no build, no dependencies)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "vaderSentiment==3.3.2", "-d", str(dest)], check=True)
    return dest / SDIST_NAME


def read_source(sdist: Path) -> tuple[dict[str, bytes], bytes]:
    """The inner tarball's files (by base name) and the sdist's license text; checks the sdist hash."""
    data = sdist.read_bytes()
    if hashlib.sha256(data).hexdigest() != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 differs from the vaderSentiment 3.3.2 sdist ({SDIST_SHA256})")
    with tarfile.open(fileobj=io.BytesIO(data)) as outer:
        inner_bytes = outer.extractfile(INNER_TAR).read()
        license_text = outer.extractfile(LICENSE_MEMBER).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        files = {Path(m.name).name: inner.extractfile(m).read() for m in inner.getmembers() if m.isfile()}
    return files, license_text


def tab_rows(name: str, raw: bytes) -> list[list[str]]:
    lines = raw.decode("utf-8-sig").splitlines()
    rows = [line.split("\t") for line in lines if line.strip()]
    for number, row in enumerate(rows, 1):
        if len(row) < 3:
            raise SystemExit(f"{name}: line {number}: expected tab-separated fields, got {row!r}")
    return rows


def load_sentences(files: dict[str, bytes], rng: random.Random, max_chars: int) -> dict[str, list[Sentence]]:
    """Per domain, the sentences of at most max_chars characters (text cleaned, duplicates kept once)."""
    seen: set[str] = set()
    by_domain: dict[str, list[Sentence]] = {}
    for domain, (stem, _) in DOMAINS.items():
        texts = {row[0]: row[2] for row in tab_rows(f"{stem}_GroundTruth.txt", files[f"{stem}_GroundTruth.txt"])}
        name = f"{stem}_anonDataRatings.txt"
        sentences = []
        for source_id, _mean, _sd, raw_ratings in tab_rows(name, files[name]):
            ratings = list(ast.literal_eval(raw_ratings))
            text = " ".join(html.unescape(texts[source_id]).split())
            if len(text) > max_chars or text.lower() in seen:
                continue
            seen.add(text.lower())
            rng.shuffle(ratings)
            sentences.append(Sentence(f"{domain}-{source_id}", domain, text, tuple(ratings)))
        by_domain[domain] = sentences
    return by_domain


def consensus(sentence: Sentence) -> Consensus:
    rest = sentence.ratings[LABEL_RATINGS:]
    return Consensus(statistics.fmean(rest), statistics.stdev(rest) / math.sqrt(len(rest)))


def pair_sentences(sentences: list[Sentence], cons: dict[str, Consensus], rng: random.Random,
                   min_gap: float, max_gap: float, min_z: float) -> list[tuple[Sentence, Sentence]]:
    """Each sentence in at most one pair; partners drawn at random among those at a meaningful gap."""
    order = sentences[:]
    rng.shuffle(order)
    free = sorted(order, key=lambda s: (cons[s.id].mean, s.id))   # unpaired sentences, by consensus mean
    means = [cons[s.id].mean for s in free]                        # kept parallel to `free` for bisect
    taken: set[str] = set()
    pairs = []
    for s in order:
        if s.id in taken:
            continue
        at = bisect.bisect_left(free, (cons[s.id].mean, s.id), key=lambda f: (cons[f.id].mean, f.id))
        free.pop(at), means.pop(at)
        mean = cons[s.id].mean
        below = range(bisect.bisect_right(means, mean - max_gap), bisect.bisect_right(means, mean - min_gap))
        above = range(bisect.bisect_left(means, mean + min_gap), bisect.bisect_left(means, mean + max_gap))
        candidates = [*below, *above]
        for index in rng.sample(candidates, min(len(candidates), 20)):
            other = cons[free[index].id]
            if abs(other.mean - mean) >= min_z * math.hypot(other.sem, cons[s.id].sem):
                partner = free.pop(index)
                means.pop(index)
                taken.update((s.id, partner.id))
                pairs.append((s, partner))
                break
    return pairs


def label_pair(a: Sentence, b: Sentence, annotator: str, positive: bool, cons: dict[str, Consensus]) -> dict | None:
    """One labelled row, or None when the annotator's scores tie."""
    score_a, score_b = a.label_score(annotator), b.label_score(annotator)
    if score_a == score_b:
        return None
    sign = 1 if positive else -1
    chosen, rejected = (a, b) if sign * (score_a - score_b) > 0 else (b, a)
    consensus_prefers_chosen = sign * (cons[chosen.id].mean - cons[rejected.id].mean) > 0
    domain = a.domain
    return {
        "prompt": f"Write a {'positive' if positive else 'negative'} {DOMAINS[domain][1]}.",
        "chosen": chosen.text,
        "rejected": rejected.text,
        "annotator": annotator,
        "pair_id": "+".join(sorted((a.id, b.id))),
        "is_flipped": not consensus_prefers_chosen,
        "domain": domain,
        "polarity": "positive" if positive else "negative",
        "chosen_id": chosen.id,
        "rejected_id": rejected.id,
        "chosen_label_score": round(chosen.label_score(annotator), 4),
        "rejected_label_score": round(rejected.label_score(annotator), 4),
        "chosen_consensus": round(cons[chosen.id].mean, 4),
        "rejected_consensus": round(cons[rejected.id].mean, 4),
    }


def build(by_domain: dict[str, list[Sentence]], args: argparse.Namespace, rng: random.Random) -> dict:
    """{"train": rows, "heldout": rows, "pool": rows, "dropped": {reason: count}}; rows of one pair are adjacent."""
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    dropped = {"sentences without a partner at a meaningful gap": 0, "labels that are a tie": 0,
               "pairs where every group ties": 0}
    quota = {"train": args.train_pairs, "heldout": args.heldout_pairs, "pool": args.pool_pairs}
    for domain, sentences in by_domain.items():
        cons = {s.id: consensus(s) for s in sentences}
        pairs = pair_sentences(sentences, cons, rng, args.min_gap, args.max_gap, args.min_z)
        dropped["sentences without a partner at a meaningful gap"] += len(sentences) - 2 * len(pairs)
        labelled = []                                   # per pair, its rows (one per group that did not tie)
        for a, b in pairs:
            positive = args.polarity == "positive" or rng.random() < 0.5
            rows = [label_pair(a, b, group, positive, cons) for group in LABEL_GROUPS]
            dropped["labels that are a tie"] += rows.count(None)
            rows = [r for r in rows if r is not None]
            if rows:
                labelled.append(rows)
            else:
                dropped["pairs where every group ties"] += 1
        need = quota["train"] + quota["heldout"]
        if len(labelled) < need:
            raise SystemExit(f"{domain}: only {len(labelled)} labelled pairs, need {need}; "
                             "relax the gap or length limits")
        train, heldout = labelled[: quota["train"]], labelled[quota["train"] : need]
        pool = labelled[need : need + quota["pool"]] if quota["pool"] else labelled[need:]
        splits["train"] += [row for rows in train for row in rows]
        splits["heldout"] += [rows[index % len(rows)] for index, rows in enumerate(heldout)]  # the groups in turn
        splits["pool"] += [row for rows in pool for row in rows]
    return {**splits, "dropped": dropped}


def reliability(rows: list[dict]) -> dict[str, tuple[int, float]]:
    """annotator -> (labels, share that agree with the consensus)."""
    out = {}
    for annotator in LABEL_GROUPS:
        flips = [r["is_flipped"] for r in rows if r["annotator"] == annotator]
        if flips:
            out[annotator] = (len(flips), 1 - sum(flips) / len(flips))
    return out


def labels_per_pair(rows: list[dict]) -> dict[int, int]:
    """k -> how many pairs have k labels."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["pair_id"]] = counts.get(r["pair_id"], 0) + 1
    return {k: sum(1 for n in counts.values() if n == k) for k in sorted(set(counts.values()))}


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def readme(built: dict, args: argparse.Namespace, sizes: dict[str, int]) -> str:
    table = ["| split | annotator | labels | measured accuracy (1 − flip rate) |", "|---|---|---|---|"]
    for split in SPLITS:
        for annotator, (n, acc) in reliability(built[split]).items():
            table.append(f"| {split} | {annotator} | {n} | {acc:.3f} |")
    by_domain = ["| domain | annotator | labels (all splits) | measured accuracy |", "|---|---|---|---|"]
    every = [r for s in SPLITS for r in built[s]]
    for domain in DOMAINS:
        for annotator, (n, acc) in reliability([r for r in every if r["domain"] == domain]).items():
            by_domain.append(f"| {domain} | {annotator} | {n} | {acc:.3f} |")
    files = "\n".join(
        f"- `{split}.jsonl`: {len({r['pair_id'] for r in built[split]})} pairs, {len(built[split])} labels "
        f"({', '.join(f'{n} with {k}' for k, n in labels_per_pair(built[split]).items())}), "
        f"{sizes[split + '.jsonl'] / 1e3:.0f} kB" for split in SPLITS)
    dropped = ", ".join(f"{why}: {n}" for why, n in built["dropped"].items())
    groups = ", ".join(f"`{name}` ratings {g.start + 1}–{g.stop}" if g.stop - g.start > 1
                       else f"`{name}` rating {g.start + 1}" for name, g in LABEL_GROUPS.items())
    prompts = ("every prompt asks for a positive sentence" if args.polarity == "positive"
               else "the prompt asks for a positive or a negative sentence (half each)")
    return f"""# Bundled preference data: sentiment pairs with real human label noise

Built by `python bench/build_sample_data.py --seed {args.seed}` (see its docstring for every rule) from
the human-rated sentences of Hutto & Gilbert (2014), shipped in the `vaderSentiment==3.3.2` source
distribution. Do not edit by hand; rerun the script.

{files}

Columns: `prompt`, `chosen`, `rejected` (plain strings), `annotator` ({", ".join(f"`{g}`" for g in LABEL_GROUPS)}),
`pair_id` (shared by every label of one pair); truth and provenance: `is_flipped` (the label's order
disagrees with the consensus of the raters no label saw), `domain`, `polarity`, `chosen_id`/`rejected_id`
(source sentence ids), `chosen_label_score`/`rejected_label_score` (what the label saw),
`chosen_consensus`/`rejected_consensus` (mean rating of the remaining raters, -4 to +4).

## How a label is made
Each sentence was rated by 15 to 99 people. Its ratings are shuffled once (seed {args.seed}); the first
{LABEL_RATINGS} are the label raters, in three disjoint groups ({groups}), and the mean of the rest is
the consensus. Two sentences of one domain form a pair when their consensus means differ by at least
{args.min_gap} points and {args.min_z} standard errors, and by less than {args.max_gap} points. Each group
orders the pair by its raters' mean score of each sentence; a tie is no judgment, so that group gives no
label for the pair. {prompts.capitalize()}; `chosen` is the one the label prefers. Sentences longer than
{args.max_chars} characters are left out (short responses keep the demo fast); every sentence is in at most
one pair, so the splits are disjoint by sentence. The held-out file keeps one label per pair. Dropped:
{dropped}.

## Measured reliability of each annotator group
{chr(10).join(table)}

By domain (the rater pools differ):

{chr(10).join(by_domain)}

## Source, citation and license
Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for Sentiment Analysis of
Social Media Text. Eighth International Conference on Weblogs and Social Media (ICWSM-14). Ann Arbor, MI.

The ratings and sentences come from the vaderSentiment 3.3.2 sdist ({SDIST_NAME}, sha256
`{SDIST_SHA256}`), MIT License, Copyright (c) 2016 C.J. Hutto; the license text is in
`LICENSE-vaderSentiment.txt` beside this file.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help=f"path to {SDIST_NAME}; downloaded with pip if omitted")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--polarity", choices=("positive", "both"), default="positive",
                        help="what the prompts ask for: a positive sentence, or positive/negative at random")
    parser.add_argument("--min-gap", type=float, default=0.5, help="least consensus gap (rating points)")
    parser.add_argument("--max-gap", type=float, default=1.5, help="consensus gap below this (rating points)")
    parser.add_argument("--min-z", type=float, default=2.0, help="least consensus gap in standard errors")
    parser.add_argument("--max-chars", type=int, default=120, help="longest sentence kept (characters)")
    parser.add_argument("--train-pairs", type=int, default=70, help="train pairs per domain")
    parser.add_argument("--heldout-pairs", type=int, default=75, help="held-out pairs per domain")
    parser.add_argument("--pool-pairs", type=int, default=450, help="pool pairs per domain (0: all the rest)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        files, license_text = read_source(args.sdist or fetch_sdist(Path(tmp)))
    rng = random.Random(args.seed)
    built = build(load_sentences(files, rng, args.max_chars), args, rng)

    args.out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split in SPLITS:
        data = jsonl(built[split])
        atomic_write(args.out / f"{split}.jsonl", lambda tmp: tmp.write_bytes(data))
        sizes[f"{split}.jsonl"] = len(data)
    atomic_write(args.out / "LICENSE-vaderSentiment.txt", lambda tmp: tmp.write_bytes(license_text))
    atomic_write_text(args.out / "README.md", readme(built, args, sizes))
    for split in SPLITS:
        for annotator, (n, acc) in reliability(built[split]).items():
            print(f"{split:8s} {annotator:11s} labels={n:5d} measured accuracy={acc:.3f}")
    print("dropped:", built["dropped"], "| written to", args.out)


if __name__ == "__main__":
    main()
