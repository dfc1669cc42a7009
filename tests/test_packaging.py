"""Installed, re-po is one package, re_po: a user's own `data`, `pipeline`, `stages` or `cli` never shadows it;
and its Python API runs as the README shows it."""

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_distribution_installs_one_top_level_name():
    assert importlib.metadata.distribution("re-po").read_text("top_level.txt").split() == ["re_po"]


def test_a_project_with_its_own_data_package_imports_both(tmp_path):
    """A user's script beside their own data/, pipeline/, stages/ packages and cli.py (names that are common in ML
    projects) gets theirs and re-po's side by side."""
    for name in ("data", "pipeline", "stages"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"MINE = {name!r}\n")
    (tmp_path / "cli.py").write_text("MINE = 'cli'\n")
    script = textwrap.dedent("""
        import cli, data, pipeline, stages
        from re_po.data.pairs import read_pairs
        from re_po.stages.configs import TrainConfig
        from re_po.pipeline.choices import LossSpec
        assert (data.MINE, pipeline.MINE, stages.MINE, cli.MINE) == ("data", "pipeline", "stages", "cli")
        assert TrainConfig.__module__ == "re_po.stages.configs" and callable(read_pairs) and LossSpec.of("dpo").beta
        print("both")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "both", done.stderr


def test_the_readme_python_example_runs_as_written(tiny_llama, tmp_path, monkeypatch, capsys):
    example = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert example.count("HuggingFaceTB/SmolLM2-135M-Instruct") == 1
    rows = []  # 12 pairs, each labelled by ann and bob; ann reverses every third of hers
    for i in range(24):
        good, bad = f"the sky is blue {'!' * (i // 2 % 4)} {i // 2}", f"the sky is red {i // 2}"
        swap = i % 2 == 1 and i % 3 == 0
        rows.append({"prompt": "what is the sky ?", "chosen": bad if swap else good, "rejected": good if swap else bad,
                     "annotator": "ann" if i % 2 else "bob", "pair_id": f"p{i // 2}"})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    exec(example.replace("HuggingFaceTB/SmolLM2-135M-Instruct", str(tiny_llama)), {})
    shown = capsys.readouterr().out
    assert "annotator" in shown and "('ann'," in shown and "('bob'," in shown
    assert (tmp_path / "work" / "inspect" / "summary.json").exists()
    assert (tmp_path / "work" / "train" / "final" / "config.json").exists()
