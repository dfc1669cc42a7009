"""bench/gpu.sh --dry-run: every step of the GPU script, at toy size on this CPU, so the script cannot rot."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_script_runs_every_step_in_its_dry_run(tmp_path):
    done = subprocess.run(["bash", "bench/gpu.sh", "--dry-run"], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    log = (tmp_path / "gpu.log").read_text()
    assert done.returncode == 0 and "FAILED" not in log, log[-4000:]
    scored = json.loads((tmp_path / "score-tiny.json").read_text())
    trained = json.loads((tmp_path / "train-tiny.json").read_text())
    assert scored["pairs"] == 16 and 0 < scored["hf"]["pairs"] <= 16  # distinct pairs are scored once
    assert scored["parameters"] > 0 and scored["peak_flops"] > 0
    assert {"dpo", "re-dpo"} <= set(trained["runs"]) and trained["runs"]["dpo"]["pairs"] == 16
    assert trained["runs"]["dpo"]["tokens"] == trained["runs"]["re-dpo"]["tokens"]  # the same steps, counted alike
    if importlib.util.find_spec("vllm"):
        assert scored["vllm_max_relative_difference"] < 1e-4  # vLLM scored the same tokens
    for table in ("pairs/s", "tok/s", "MFU"):
        assert log.count(table) >= 2, table  # in the score and the train tables
