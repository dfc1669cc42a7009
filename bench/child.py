"""One measured run in its own process, so its peak RSS and its imports are its own (scale.py, train_throughput.py),
and the training loop's time as a run's metrics.jsonl gives it (those two and profile_stages.py).

The parent calls `run(script, spec)`: the script is started again with `--child SPEC_JSON`, and its `main` hands
that spec to its measuring function and the result to `send`, which adds the child's peak RSS and prints it on
one line the parent reads back.
"""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

MARK = "RESULT "


def run(script: str, spec: dict, what: str) -> dict:
    """The result the child running `script` with `spec` sent; `what` names the run in the error if it fails."""
    done = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode or not lines:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(MARK))


def send(result: dict) -> None:
    """In the child: the result, with this process's peak RSS, to the parent."""
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(MARK + json.dumps(result), flush=True)


def loop_seconds(run_dir: Path, batch_size: int) -> tuple[float, int]:
    """The seconds the optimizer steps of a `repo train` run took (the sum of its step times: batch_size over each
    step's pairs/s in metrics.jsonl, so no start-up or epoch pass), and the number of steps."""
    steps = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [step for step in steps if "pairs_per_s" in step]
    return sum(batch_size / step["pairs_per_s"] for step in steps), len(steps)
