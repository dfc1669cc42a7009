"""Nothing of the user's is lost: every folder re-po writes into is one it made (or an empty one), and every
refusal is one line. The rule itself (data/folders.py), then each command that writes a folder."""

import json

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
    assert folders.claim(user, "run", made_by_older=lambda f: (f / "precious.txt").exists()) == user

    run = folders.claim(tmp_path / "run", "run")
    with pytest.raises(folders.FolderError, match="is a re-po run folder, not a inspect folder"):
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
