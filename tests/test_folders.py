"""Nothing of the user's is lost: every folder re-po writes into is one it made (or an empty one), and every
refusal is one line. The rule itself (data/folders.py), then each command that writes a folder."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import is_one_line_error
from typer.testing import CliRunner

from re_po import cli
from re_po.data import folders

runner = CliRunner()


def _foreign(path):
    """A folder of the user's, with a file re-po must never touch."""
    path.mkdir(parents=True)
    (path / "precious.txt").write_text("mine")
    return path


def test_claim_makes_a_folder_and_takes_back_its_own(tmp_path):
    made = folders.claim(tmp_path / "a" / "b", "run")
    assert json.loads((made / folders.MARK).read_text()) == {"kind": "run"}
    (made / "config.json").write_text("{}")
    assert folders.claim(made, "run") == made  # its own, not empty: taken back
    (tmp_path / "empty").mkdir()
    folders.claim(tmp_path / "empty", "inspect")  # an empty folder is fine


def test_claim_refuses_what_re_po_did_not_make(tmp_path):
    user = _foreign(tmp_path / "user")
    with pytest.raises(folders.FolderError, match=r"user is not empty \(precious.txt\) and re-po did not make it"):
        folders.claim(user, "run")
    assert not (user / folders.MARK).exists() and (user / "precious.txt").read_text() == "mine"

    run = folders.claim(tmp_path / "run", "run")
    with pytest.raises(folders.FolderError, match="is a re-po run folder, not an inspect folder"):
        folders.check(run, "inspect")
    (tmp_path / "file").write_text("x")
    with pytest.raises(folders.FolderError, match="is a file"):
        folders.check(tmp_path / "file", "plots")
    (run / folders.MARK).write_text("not json")
    with pytest.raises(folders.FolderError, match="not a re-po folder mark"):
        folders.check(run, "run")


# Each command that writes a folder, pointed at the user's own: (arguments, given the foreign folder F).
WRITERS = {
    "score": lambda f, t: ["score", str(t / "pairs.jsonl"), "--model", str(t / "no-model"), "--out", str(f)],
    "train": lambda f, t: ["train", str(t / "scores"), "--out", str(f)],
    "inspect-noise out-dir": lambda f, t: ["inspect-noise", str(t / "run"), "--out-dir", str(f)],
    "inspect-noise plots": lambda f, t: ["inspect-noise", str(t / "run"), "--out-dir", str(t / "insp"),
                                         "--plots", str(f)],
    "evaluate": lambda f, t: ["evaluate", str(t / "pairs.jsonl"), "--run", str(t / "run"), "--out", str(f)],
    "generate": lambda f, t: ["generate", str(t / "pairs.jsonl"), "--run", str(t / "run"), "--out", str(f)],
    "demo": lambda f, t: ["demo", "--workspace", str(f)],
    "prepare-model": lambda f, t: ["prepare-model", "--dest", str(f), "--overwrite"],
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_command_refuses_a_folder_it_did_not_make_in_one_line(writer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    user = _foreign(tmp_path / "user")
    result = runner.invoke(cli.app, WRITERS[writer](user, tmp_path))
    assert result.exit_code == 2, result.output
    assert "re-po did not make it" in result.output and is_one_line_error(result.output)
    assert sorted(p.name for p in user.iterdir()) == ["precious.txt"] and (user / "precious.txt").read_text() == "mine"


def test_every_command_that_writes_a_folder_is_covered():
    commands = {name.split()[0] for name in WRITERS}
    # make-noisy writes one file (it refuses to replace its input), init writes repo.toml (refuses an existing one)
    assert {c.name or c.callback.__name__ for c in cli.app.registered_commands} == commands | {"make-noisy", "init"}


# ---- the one guard of every output path (data/folders.check_outputs) ----------------------------------------------

def _inputs(tmp_path):
    """A folder of shards, its cache and a run on it (written as the stages write them), a copy of the shards as one
    JSON file."""
    from test_inspect_noise import input_rows, write_cache, write_run

    shards = tmp_path / "shards"
    shards.mkdir()
    rows = input_rows()
    for name, part in (("a.jsonl", rows[:20]), ("b.jsonl", rows[20:])):
        (shards / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    (tmp_path / "pairs.json").write_text(json.dumps(rows))
    scores = write_cache(tmp_path / "scores", shards)
    return shards, scores, write_run(tmp_path / "run", scores)


# Every writing option, pointed over or into what its command reads: (arguments, given the inputs, what is said).
OVER_INPUTS = {
    "score --out": (lambda s, c, r, t: ["score", s, "--model", "m", "--out", s / "cache"],
                    "--out {shards}/cache is inside the input dataset"),
    "train --out": (lambda s, c, r, t: ["train", c, "--out", c / "run"], "--out {scores}/run is inside the score cache"),
    **{f"inspect-noise {flag}": (lambda s, c, r, t, flag=flag, name=name: [
        "inspect-noise", r, "--data", s, "--out-dir", t / "i", flag, s / name],
        f"{flag} {{shards}}/{name} is inside the input dataset {{shards}}")
       for flag, name in (("--dump", "x.jsonl"), ("--export-clean", "x.jsonl"), ("--review", "x.json"),
                          ("--html", "x.html"), ("--plots", "plots"), ("--out-dir", "i"))},
    "inspect-noise --dump (the input file)": (lambda s, c, r, t: [
        "inspect-noise", r, "--data", s / "a.jsonl", "--out-dir", t / "i", "--dump", s / "a.jsonl"],
        "--dump {shards}/a.jsonl is the input dataset"),
    "inspect-noise --review (the input file)": (lambda s, c, r, t: [
        "inspect-noise", r, "--data", t / "pairs.json", "--out-dir", t / "i", "--review", t / "pairs.json"],
        "--review {tmp}/pairs.json is the input dataset"),
    "inspect-noise --dump (into the run)": (lambda s, c, r, t: [
        "inspect-noise", r, "--out-dir", t / "i", "--dump", r / "x.jsonl"], "--dump {run}/x.jsonl is inside the run folder"),
    "inspect-noise --dump and --review (one file)": (lambda s, c, r, t: [
        "inspect-noise", r, "--out-dir", t / "i", "--dump", t / "x.json", "--review", t / "x.json"],
        "--review {tmp}/x.json is also where --dump goes"),
    "evaluate --out": (lambda s, c, r, t: ["evaluate", s, "--run", r, "--out", r / "ev"],
                       "--out {run}/ev is inside the run folder"),
    "evaluate --ref-out": (lambda s, c, r, t: ["evaluate", s, "--run", r, "--out", t / "ev", "--ref-out", s / "ref"],
                           "--ref-out {shards}/ref is inside the held-out data"),
    "generate --out": (lambda s, c, r, t: ["generate", s, "--policy", t / "m", "--ref", t / "m", "--out", s / "gen"],
                       "--out {shards}/gen is inside the prompts"),
    "make-noisy TARGET": (lambda s, c, r, t: ["make-noisy", s / "a.jsonl", s / "a.jsonl", "--flip-rate", "0.1"],
                          "TARGET {shards}/a.jsonl is the input file"),
    "demo --workspace": (lambda s, c, r, t: ["demo", "--workspace", t, "--train-data", s / "a.jsonl"],
                         "--workspace {tmp} holds --train-data {shards}/a.jsonl"),
}


@pytest.mark.parametrize("case", sorted(OVER_INPUTS))
def test_no_output_goes_over_or_into_what_its_command_reads(case, tmp_path, monkeypatch):
    """Issue 25: --dump and --review replaced the input file; --export-clean into the folder of shards was read back
    as data. Refused in one line before any work, and nothing is touched."""
    shards, scores, run_dir = _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    args, message = OVER_INPUTS[case]
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    result = runner.invoke(cli.app, [str(a) for a in args(shards, scores, run_dir, tmp_path)])
    assert result.exit_code == 2 and is_one_line_error(result.output), result.output
    expected = message.format(shards=shards, scores=scores, run=run_dir, tmp=tmp_path)
    assert f"error: {expected}" in result.output
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before


def test_every_writing_option_meets_the_guard():
    """A new output option of a command is added to OVER_INPUTS (or refused here)."""
    options = {"score": {"--out"}, "train": {"--out"}, "evaluate": {"--out", "--ref-out"}, "make-noisy": {"TARGET"},
               "generate": {"--out"},
               "demo": {"--workspace"},
               "inspect-noise": {"--out-dir", "--plots", "--dump", "--html", "--review", "--export-clean"}}
    covered = {(case.split()[0], case.split()[1]) for case in OVER_INPUTS}
    assert covered == {(command, option) for command, names in options.items() for option in names}


def test_an_output_onto_a_pipe_or_device_is_refused(tmp_path, monkeypatch):
    """Found by the sweep of issue 25: --dump onto a named pipe replaced it with a file (as it would /dev/null)."""
    import os

    from test_inspect_noise import write_cache, write_input, write_run

    run_dir = write_run(tmp_path / "run", write_cache(tmp_path / "scores", write_input(tmp_path, ".jsonl")))
    os.mkfifo(tmp_path / "pipe.jsonl")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, ["inspect-noise", str(run_dir), "--out-dir", "i", "--dump", "pipe.jsonl"])
    assert result.exit_code == 2 and is_one_line_error(result.output), result.output
    assert "error: --dump pipe.jsonl is no regular file (a device, a pipe, a socket)" in result.output
    assert (tmp_path / "pipe.jsonl").is_fifo() and not (tmp_path / "i").exists()


def test_a_folder_whose_marking_was_killed_is_taken_back(tmp_path):
    """Found by the sweep of issue 25: killed while writing its mark, a folder held only the mark's temporary file,
    and every later run refused it as the user's."""
    (tmp_path / "i").mkdir()
    (tmp_path / "i" / f".{folders.MARK}.tmp").write_text('{"ki')
    assert folders.claim(tmp_path / "i", "inspect") == tmp_path / "i"
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == [folders.MARK]


def test_no_output_goes_inside_a_score_cache_or_a_run_it_does_not_read(tmp_path, monkeypatch):
    """Found by the sweep of issue 25: `repo score --out CACHE/sub` wrote a second cache inside another one."""
    from test_inspect_noise import write_cache, write_input

    source = write_input(tmp_path, ".jsonl")
    cache = write_cache(tmp_path / "scores", source)
    run = folders.claim(tmp_path / "run", "run")
    monkeypatch.chdir(tmp_path)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    for inside, what in ((cache / "sub", "the score cache"), (run / "sub", "the run folder")):
        result = runner.invoke(cli.app, ["score", str(source), "--model", "m", "--out", str(inside)])
        assert result.exit_code == 2 and is_one_line_error(result.output), result.output
        assert f"error: --out {inside} is inside {what} {inside.parent}, whose files re-po accounts for" in result.output
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before
    assert folders.inside_managed(run / "eval") is None  # the run's own part: train scores --eval-data there


def test_a_scratch_folder_left_by_a_killed_process_is_removed_by_the_next_one(tmp_path, monkeypatch):
    """SIGKILL skips a scratch folder's removal; the next `folders.scratch` removes it (marked "scratch", this host,
    its process gone) and leaves alone a live process's, another host's, and a folder without re-po's mark."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, tempfile, time; tempfile.tempdir = sys.argv[1]\n"
         "from re_po.data import folders\nwith folders.scratch('estimate') as s:\n"
         "    (s / 'states-00000.npz').write_bytes(b'x'); print(s, flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    killed = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (killed / "states-00000.npz").exists()  # what SIGKILL leaves
    keep = {}
    for name, mark in {"live": {"pid": os.getpid()}, "other-host": {"host": "elsewhere", "pid": child.pid},
                       "unmarked": None}.items():
        keep[name] = tmp_path / f"{folders.SCRATCH_PREFIX}{name}"
        keep[name].mkdir()
        if mark is not None:
            (keep[name] / folders.MARK).write_text(json.dumps({"kind": "scratch", "host": socket.gethostname(),
                                                               **mark}))
    with folders.scratch("estimate") as made:
        assert made.parent == tmp_path and made.is_dir()
    assert not killed.exists() and not made.exists()
    assert all(folder.is_dir() for folder in keep.values())
