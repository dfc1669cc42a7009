"""Does the noise estimate turn over? Single labels by three annotators flipping 10% / 40% / 70% (the third an
adversary), a probe near chance: the setting where the estimate once put the adversary above the careful annotator
with a standard error that called it identified (issue "Judge the policy by what it writes", item 6).

The data are tests/test_reliability.weak_probe_data's (384 pairs, 16 features, the true order's logit
signal·N(0, 1) along one direction), for seeds 0..N−1 at each signal. Per estimator: how many draws it calls
identified (every η), how many of those are confidently wrong (an η more than 0.15 from the measured reliability),
how many turned over (the careful annotator below the adversary), and the mean error of the identified ones.
`--before REV` also runs pipeline/reliability.py as it was at git revision REV, side by side.

    .venv/bin/python bench/turnover.py --before b9f6026 [--seeds 20] [--signals 0.9 3.0 6.0]
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_reliability import weak_probe_data  # noqa: E402

from re_po.pipeline import reliability  # noqa: E402


def old_estimator(revision: str):
    """pipeline/reliability.py at `revision`, as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:pipeline/reliability.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "reliability_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("reliability_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tally(module, signal: float, seeds: int) -> dict:
    identified = wrong = turned = 0
    errors = []
    for seed in range(seeds):
        labels, x, _, measured = weak_probe_data(seed, signal=signal)
        labels = module.Labels(labels.annotator, labels.pair, labels.orientation, 3, labels.num_pairs)
        result = module.estimate(labels, {"x": x})
        if not bool(result.identified.all()):
            continue
        identified += 1
        error = max(abs(float(e) - m) for e, m in zip(result.eta, measured))
        errors.append(error)
        wrong += error > 0.15
        turned += float(result.eta[0]) < float(result.eta[2])
    mean = sum(errors) / len(errors) if errors else float("nan")
    return {"identified": identified, "wrong": wrong, "turned": turned, "mean_error": mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a git revision whose estimator runs beside the current one")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--signals", type=float, nargs="*", default=[0.9, 3.0, 6.0])
    args = parser.parse_args()
    estimators = {"now": reliability, **({f"at {args.before}": old_estimator(args.before)} if args.before else {})}
    print(f"{args.seeds} draws per signal; load average {os.getloadavg()[0]:.1f}")
    print("| estimator | signal | identified | confidently wrong (> 0.15) | turned over | mean error when identified |")
    print("|---|---|---|---|---|---|")
    for signal in args.signals:
        for name, module in estimators.items():
            t = tally(module, signal, args.seeds)
            print(f"| {name} | {signal} | {t['identified']} | {t['wrong']} | {t['turned']} | {t['mean_error']:.3f} |")


if __name__ == "__main__":
    main()
