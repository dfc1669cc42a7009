"""An annotator's η̂ at the upper bound (issue "RE-PO's loop on one page", item 7): is it the EM stopping short, or the
likelihood's own maximum; and what standard error it gets there.

Part 1: three labels on every pair by three annotators of η 0.95 / 0.80 / 0.65 (tests/test_reliability.simulate; no
model, the labels' agreement alone), 600 pairs as the bundled data, seeds 100..100+N−1. Per draw: the EM's η̂
against each annotator's measured accuracy, the marginal log-likelihood at η̂, and the profile log-likelihood with
the careful annotator's η held at its measured accuracy (the others maximized by L-BFGS: an independent
computation); twice the difference against χ²₁ (3.84) says whether the truth is inside the likelihood's 95%
interval; and the standard error and identification the estimator gives the careful annotator.

Part 2, the draws where a bound is dangerous: 144 pairs, three of four annotators per pair (η 1.0 / 0.63 / 0.5 /
0.42), seeds 0..N−1: how many η each estimator identifies, and in how many draws one identified η is more than 0.15
from its measured accuracy (confidently wrong); with --before REV, pipeline/reliability.py at REV beside it.

    .venv/bin/python bench/eta_bound.py [--seeds 20] [--before REV]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_reliability import marginal_log_likelihood, profile_log_likelihood, simulate  # noqa: E402
from turnover import old_estimator  # noqa: E402

from re_po.pipeline import reliability  # noqa: E402

ETAS = (0.95, 0.80, 0.65)
HARD = (1.0, 0.63, 0.5, 0.42)


def at_the_bound(seeds: int, pairs: int) -> None:
    print("| seed | η̂ (raw EM) | measured | log-lik at η̂ | careful held at measured | 2·Δ | careful's SE, identified |")
    print("|---|---|---|---|---|---|---|")
    bound = inside = 0
    for seed in range(100, 100 + seeds):
        labels, _, measured = simulate(pairs, list(ETAS), labels_per_pair=3, margins=None, seed=seed)
        zero = torch.zeros(labels.num_pairs, dtype=torch.float64)
        raw, _, _ = reliability._em(labels, zero, torch.zeros(labels.num_pairs, dtype=torch.long),
                                    torch.full((3,), 0.9, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                                    False, 1e-12, 100_000)
        at_fit = float(marginal_log_likelihood(labels, raw, zero))
        twice = 2 * (at_fit - profile_log_likelihood(labels, 0, measured[0], raw))
        result = reliability.fit_reliability(labels, None)
        if float(raw[0]) > 1 - reliability.AT_BOUND:
            bound += 1
            inside += twice < 3.84
        print(f"| {seed} | {', '.join(f'{x:.3f}' for x in raw.tolist())} | {', '.join(f'{x:.3f}' for x in measured)} "
              f"| {at_fit:.2f} | {at_fit - twice / 2:.2f} | {twice:.2f} | {float(result.eta_se[0]):.3f}, "
              f"{'yes' if bool(result.identified[0]) else 'no'} |")
    print(f"\nthe careful annotator's η̂ at the bound in {bound} of {seeds} draws; its measured accuracy inside the "
          f"likelihood's 95% interval (2·Δ < 3.84) in {inside} of them\n")


def hard_draws(module, seeds: int) -> tuple[int, int]:
    identified = wrong = 0
    for seed in range(seeds):
        labels, _, measured = simulate(144, list(HARD), labels_per_pair=3, margins=None, seed=seed)
        labels = module.Labels(labels.annotator, labels.pair, labels.orientation, 4, labels.num_pairs)
        result = module.fit_reliability(labels, None)
        found = torch.nonzero(result.identified).flatten().tolist()
        identified += len(found)
        wrong += any(abs(float(result.eta[k]) - measured[k]) > 0.15 for k in found)
    return identified, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--before", help="a git revision whose estimator runs beside (part 2)")
    args = parser.parse_args()
    at_the_bound(args.seeds, args.pairs)
    print(f"144 pairs × 3 of 4 annotators (η {' / '.join(map(str, HARD))}), {args.seeds} draws:\n")
    print("| estimator | η identified (of 4 per draw) | draws with an identified η off by > 0.15 |\n|---|---|---|")
    estimators = [("now", reliability)] + ([(f"at {args.before}", old_estimator(args.before))] if args.before else [])
    for name, module in estimators:
        identified, wrong = hard_draws(module, args.seeds)
        print(f"| {name} | {identified} of {4 * args.seeds} | {wrong} |")


if __name__ == "__main__":
    main()
