"""Installed, re-po is one package, re_po: a user's own `data`, `pipeline`, `stages` or `cli` never shadows it."""

import importlib.metadata
import subprocess
import sys
import textwrap


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
