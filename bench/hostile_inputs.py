"""A hostile-input sweep of the `repo` command (issue 25): every case through the real CLI, in a subprocess.

In a temporary folder it builds a tiny Llama and its word tokenizer the way the tests do (tests/conftest.py, saved
with save_pretrained), 40 labels of 15 pairs, a score cache (`repo score`) and a run folder (`repo train --robust`,
stopped after 3 steps with a checkpoint). Each case then gets a fresh copy of that project in a folder of its own,
is made hostile (a malformed file, a crafted cache, run or model folder, an output onto an input, a bad setting, the
remains of an interrupted write), and runs one `repo` command with a timeout. Recorded per case:

- the exit code and the last line of stderr (the one-line error);
- whether a Python traceback appeared (stdout or stderr);
- lost/changed: every file of the case's folder and a sentinel outside it is hashed before and after; a file that
  changed or vanished outside the case's expected outputs is listed, and so is any new file outside them (and, for
  a case that should fail, an expected output left behind);
- whether a planted payload ran: pickles whose __reduce__ writes a marker file (a checkpoint's files, a model's
  pytorch_model.bin), Python modules that write it when imported (a config's `auto_map` remote code, a judge that
  the command must not import).

A case passes when it exits as expected (non-zero with an `error: ` line, or 0 where success is the documented
answer), with no traceback, nothing lost or changed and no payload run. Prints a markdown table and writes it to
--out. About 10 minutes on a 2-core CPU.

    .venv/bin/python bench/hostile_inputs.py [--out workspace/bench-hostile/results.md] [--only NAME ...] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
os.environ["HF_HUB_OFFLINE"] = "1"

TIMEOUT_S = 120
TRACEBACK = "Traceback (most recent call last)"
WORDS = ("the a cat dog sat ran on mat rug what is it yes no hello world good bad answer question please tell me "
         "about sky blue red green sun").split()
REPO_TOML = ('workspace = "ws"\n[data]\npath = "pairs.jsonl"\n[models]\nref = "model"\n'
             '[train]\ndevice = "cpu"\nbatch_size = 8\nlr = 0.001\n')


# ---- the base project ----------------------------------------------------------------------------------------------

def pair_rows(num_pairs: int = 15, labels: int = 40, seed: int = 0) -> list[dict]:
    """As tests/test_safety.py: `labels` rows over `num_pairs` pairs, up to three annotators each."""
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choices(WORDS, k=k))

    rows = []
    for p in range(num_pairs):
        prompt, a, b = text(4), text(4), text(5)
        for annotator in ("ann", "bob", "cy")[: 2 if p % 3 == 2 else 3]:
            flip = rng.random() < 0.2
            rows.append({"prompt": prompt, "chosen": b if flip else a, "rejected": a if flip else b,
                         "annotator": annotator, "is_flipped": flip})
    return rows[:labels]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def build_model(folder: Path) -> None:
    """The tests' tiny Llama (2 layers, random weights, seed 0) and word tokenizer, saved with save_pretrained."""
    import torch
    from conftest import build_word_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_word_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def child_env() -> dict[str, str]:
    import re_po

    path = os.pathsep.join(filter(None, [str(Path(re_po.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("REPO_DEBUG", None)
    return env


def repo(args: list, cwd: Path, timeout: float = TIMEOUT_S) -> tuple[int | str, str, str]:
    """Run `repo ARGS` in `cwd`: (exit code or "timeout", stdout, stderr)."""
    command = [sys.executable, "-m", "re_po.cli", *map(str, args)]
    try:
        done = subprocess.run(command, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, errors="replace")
    except subprocess.TimeoutExpired as exc:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        return "timeout", text(exc.stdout), text(exc.stderr)
    return done.returncode, done.stdout, done.stderr


def build_base(base: Path) -> None:
    """model/, pairs.jsonl, repo.toml, cache/ (repo score) and run/ (repo train --robust, 3 steps, a checkpoint)."""
    base.mkdir(parents=True)
    build_model(base / "model")
    (base / "pairs.jsonl").write_text(jsonl(pair_rows()))
    (base / "repo.toml").write_text(REPO_TOML)
    for args in (["score", "pairs.jsonl", "--model", "model", "--out", "cache"],
                 ["train", "cache", "--out", "run", "--robust", "--max-steps", "3", "--save-every", "1",
                  "--report-to", "none"]):
        code, out, err = repo(args, base, timeout=600)
        if code != 0:
            raise SystemExit(f"building the base project: repo {' '.join(args)} failed ({code}):\n{out}\n{err}")


# ---- payloads ------------------------------------------------------------------------------------------------------

class Payload:
    """A pickle that, once unpickled, writes `marker`: what a crafted checkpoint or weights file would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('payload ran')",)


def plant_pickle(path: Path, marker: Path, torch_format: bool = True) -> None:
    path.unlink(missing_ok=True)
    if torch_format:
        import torch

        torch.save({"state": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))


def payload_module(folder: Path, name: str, marker: Path) -> None:
    """A module `name` in `folder` that writes `marker` when imported, and defines what a caller might look up."""
    (folder / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').write('payload ran')\n"
        "def judge(prompt, response):\n    return 0.0\n"
        "class Evil:\n    pass\n")


# ---- snapshots -----------------------------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (links and other non-files by what they are, never opened)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder))
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                found[rel] = f"link -> {os.readlink(path)}"
            elif stat.S_ISREG(mode):
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[rel] = f"special {stat.S_IFMT(mode):o}"
    return found


def under(rel: str, outputs: list[str]) -> bool:
    return any(rel == o or rel.startswith(o.rstrip("/") + "/") for o in outputs)


# ---- the cases -----------------------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    args: list
    prep: Callable[[Path, Path], None] | None = None  # (case folder, payload marker) -> None
    outputs: list[str] = field(default_factory=list)  # relative to the case folder: what the command may write
    expect: str = "error"  # "error" (non-zero, an `error: ` line), "ok" (exit 0), or "either"
    group: str = ""
    cwd: str = "."  # relative to the case folder


CASES: list[Case] = []


def case(group: str, name: str, args: list, prep=None, outputs=("out",), expect="error", cwd="."):
    CASES.append(Case(name, None if args is None else list(args), prep, list(outputs), expect, group, cwd))


def write(rel: str, content: str | bytes) -> Callable[[Path, Path], None]:
    def prep(d: Path, marker: Path) -> None:
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return prep


def manifest_edit(change: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def prep(d: Path, marker: Path) -> None:
        path = d / "cache" / "manifest.json"
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))
    return prep


ROWS = pair_rows()


def score(data: str, *more: str) -> list[str]:
    return ["score", data, "--model", "model", "--out", "out", *more]


# -- malformed inputs: `repo score DATA`
case("data", "JSONL: a line of broken JSON", score("bad.jsonl"),
     write("bad.jsonl", jsonl(ROWS[:2]) + '{"prompt": "a", "chosen": \n' + jsonl(ROWS[2:6])))
case("data", "JSONL: chosen is a number", score("bad.jsonl"),
     write("bad.jsonl", jsonl(ROWS[:3] + [{**ROWS[3], "chosen": 5}])))
case("data", "JSONL: chosen is null", score("bad.jsonl"),
     write("bad.jsonl", jsonl(ROWS[:3] + [{**ROWS[3], "chosen": None}])))
case("data", "JSONL: a row without `rejected`", score("bad.jsonl"),
     write("bad.jsonl", jsonl(ROWS[:3] + [{k: v for k, v in ROWS[3].items() if k != "rejected"}])))
case("data", "JSONL: an empty file", score("empty.jsonl"), write("empty.jsonl", ""))
case("data", "JSONL: blank lines only", score("blank.jsonl"), write("blank.jsonl", "\n\n  \n"))
case("data", "JSONL: a UTF-8 BOM before the first row", score("bom.jsonl"),
     write("bom.jsonl", "\ufeff" + jsonl(ROWS)), expect="either")
case("data", "JSONL: a NUL byte inside a line", score("nul.jsonl"),
     write("nul.jsonl", jsonl(ROWS[:3]).encode() + b'{"prompt": "a\x00b", "chosen": "x", "rejected": "y"}\n'))
case("data", "JSONL: a file of NUL bytes", score("nul.jsonl"), write("nul.jsonl", b"\x00" * 4096))
case("data", "JSONL: not UTF-8 (Latin-1 bytes)", score("latin.jsonl"),
     write("latin.jsonl", jsonl(ROWS[:3]).encode() + '{"prompt": "café", "chosen": "x", "rejected": "y"}\n'
           .encode("latin-1")))
case("data", "JSONL: a row that is a list, not an object", score("list.jsonl"),
     write("list.jsonl", jsonl(ROWS[:3]) + "[1, 2, 3]\n"))
case("data", "JSONL: one 2 MB line (a 300k-word response)", score("huge.jsonl"),
     write("huge.jsonl", jsonl(ROWS[:6] + [{**ROWS[6], "chosen": " ".join(["the cat"] * 150_000)}])), expect="ok")
case("data", "JSON: an object, not a list of rows", score("obj.json"), write("obj.json", json.dumps({"a": ROWS[:3]})))
case("data", "CSV: an unclosed quote", score("bad.csv"),
     write("bad.csv", 'prompt,chosen,rejected\n"the cat,sat,ran\nhello,world,sky\n'))
case("data", "CSV: a row with an extra field", score("ragged.csv"),
     write("ragged.csv", "prompt,chosen,rejected\nthe cat,sat,ran\nhello,world,sky,extra\n"))
case("data", "CSV: the header alone", score("header.csv"), write("header.csv", "prompt,chosen,rejected\n"))
case("data", "Parquet: wrong column types (int prompt, list chosen)", score("wrong.parquet"),
     lambda d, m: __import__("polars").DataFrame({"prompt": [1, 2], "chosen": [["a"], ["b"]],
                                                  "rejected": ["x", "y"]}).write_parquet(d / "wrong.parquet"))
case("data", "Parquet: a text file named .parquet", score("fake.parquet"), write("fake.parquet", "not parquet\n"))
case("data", "conversational: a message without content", score("conv.jsonl"),
     write("conv.jsonl", jsonl([{"prompt": [{"role": "user", "content": "hello"}],
                                 "chosen": [{"role": "assistant"}],
                                 "rejected": [{"role": "assistant", "content": "no"}]}])))
case("data", "conversational: content is a number, role unknown", score("conv.jsonl"),
     write("conv.jsonl", jsonl([{"prompt": [{"role": "wizard", "content": 3}],
                                 "chosen": [{"role": "assistant", "content": "yes"}],
                                 "rejected": [{"role": "assistant", "content": "no"}]}])))
case("data", "conversational: chosen a message list, rejected a string", score("conv.jsonl"),
     write("conv.jsonl", jsonl([{"prompt": "hello", "chosen": [{"role": "assistant", "content": "yes"}],
                                 "rejected": "no"}])))
case("data", "duplicate ids: one pair_id for two different pairs", score("dup.jsonl"),
     write("dup.jsonl", jsonl([{**r, "pair_id": "p1"} for r in ROWS[:6]])))
case("data", "a .txt file", score("pairs.txt"), write("pairs.txt", jsonl(ROWS)))
case("data", "an empty folder of shards", score("shards"), lambda d, m: (d / "shards").mkdir())
case("data", "a folder of shards, one of them broken", score("shards"),
     lambda d, m: [write("shards/a.jsonl", jsonl(ROWS[:20]))(d, m), write("shards/b.jsonl", "{oops\n")(d, m)])
case("data", "a data path that does not exist", score("nowhere.jsonl"))

# -- outputs onto inputs, into caches and run folders, through links, onto pipes and devices
case("outputs", "score --out onto its own data file", ["score", "pairs.jsonl", "--model", "model", "--out",
                                                         "pairs.jsonl"], outputs=[])
case("outputs", "score --out into the run folder", ["score", "pairs.jsonl", "--model", "model", "--out",
                                                      "run/scores"], outputs=[])
case("outputs", "score --out into another score cache", ["score", "pairs.jsonl", "--model", "model", "--out",
                                                           "cache/sub"], outputs=[])
case("outputs", "score --out onto the model folder", ["score", "pairs.jsonl", "--model", "model", "--out", "model"],
     outputs=[])
case("outputs", "score --out a link to a folder of the user's", score("pairs.jsonl"),
     lambda d, m: [write("mine/notes.txt", "mine")(d, m), (d / "out").symlink_to(d / "mine")], outputs=[])
case("outputs", "train --out onto the score cache it reads", ["train", "cache", "--out", "cache"], outputs=[])
case("outputs", "train --out onto the model folder", ["train", "cache", "--out", "model"], outputs=[])
case("outputs", "inspect-noise --dump through a link to the data", ["inspect-noise", "cache", "--out-dir", "out",
                                                                       "--dump", "flagged.jsonl"],
     lambda d, m: (d / "flagged.jsonl").symlink_to(d / "pairs.jsonl"))
case("outputs", "inspect-noise --dump onto a named pipe", ["inspect-noise", "cache", "--out-dir", "out", "--dump",
                                                            "fifo.jsonl"], lambda d, m: os.mkfifo(d / "fifo.jsonl"))
case("outputs", "inspect-noise --dump through a link to /dev/null", ["inspect-noise", "cache", "--out-dir", "out",
                                                                      "--dump", "null.jsonl"],
     lambda d, m: (d / "null.jsonl").symlink_to("/dev/null"))
case("outputs", "inspect-noise --out-dir a folder of the user's", ["inspect-noise", "cache", "--out-dir", "mine"],
     write("mine/notes.txt", "mine"), outputs=[])
case("outputs", "inspect-noise --plots into the score cache", ["inspect-noise", "cache", "--out-dir", "out",
                                                                "--plots", "cache/plots"])
case("outputs", "inspect-noise --dump onto the cache's manifest", ["inspect-noise", "cache", "--out-dir", "out",
                                                                    "--dump", "cache/manifest.jsonl"])
case("outputs", "inspect-noise --out-dir under /proc (cannot be made)", ["inspect-noise", "cache", "--out-dir",
                                                                         "/proc/re-po-out"], outputs=[])
case("outputs", "score --out in a read-only folder (mode 555; root writes anyway)", score("pairs.jsonl")[:-1] +
     ["ro/out"], lambda d, m: [(d / "ro").mkdir(), (d / "ro").chmod(0o555)], outputs=["ro/out"], expect="either")
case("outputs", "make-noisy onto its own source", ["make-noisy", "pairs.jsonl", "pairs.jsonl", "--flip-rate", "0.2"],
     outputs=[])
case("outputs", "make-noisy into the score cache", ["make-noisy", "pairs.jsonl", "cache/noisy.jsonl", "--flip-rate",
                                                     "0.2"], outputs=[])
case("outputs", "evaluate --out onto the run folder", ["evaluate", "pairs.jsonl", "--run", "run", "--out", "run"],
     outputs=[])
case("outputs", "generate --out into the score cache", ["generate", "pairs.jsonl", "--run", "run", "--out",
                                                         "cache/gen"], outputs=[])

# -- crafted score caches
TRAIN_NEW = ["train", "cache", "--out", "out", "--max-steps", "1", "--report-to", "none"]
case("cache", "manifest names ../pairs.jsonl; score --overwrite", ["score", "pairs.jsonl", "--model", "model",
                                                                   "--out", "cache", "--overwrite"], manifest_edit(lambda m: m["parts"].__setitem__("../pairs.jsonl",
                                                                               m["parts"]["part-00000.parquet"])),
     outputs=[])


def absolute_name(d: Path, marker: Path) -> None:
    sentinel = d.parent.parent / "sentinel.txt"
    manifest_edit(lambda m: m["parts"].__setitem__(str(sentinel), m["parts"]["part-00000.parquet"]))(d, marker)


case("cache", "manifest names the sentinel by absolute path; score --overwrite", ["score", "pairs.jsonl", "--model",
                                                                                  "model", "--out", "cache",
                                                                                  "--overwrite"],
     absolute_name, outputs=[])
case("cache", "a listed part is missing; train", TRAIN_NEW, lambda d, m: (d / "cache/part-00000.parquet").unlink())
case("cache", "an extra part-00007.parquet not in the manifest; train", TRAIN_NEW,
     lambda d, m: shutil.copy(d / "cache/part-00000.parquet", d / "cache/part-00007.parquet"), expect="either")
case("cache", "the manifest's sha256 of a part is wrong; train", TRAIN_NEW,
     manifest_edit(lambda m: m["parts"]["part-00000.parquet"].__setitem__("sha256", "0" * 64)))


def truncate(rel: str, keep: float = 0.5, fix_sha: bool = False) -> Callable[[Path, Path], None]:
    def prep(d: Path, marker: Path) -> None:
        path = d / rel
        data = path.read_bytes()[: int(path.stat().st_size * keep)]
        path.write_bytes(data)
        if fix_sha:
            manifest_edit(lambda m: m["parts"][path.name].__setitem__("sha256", hashlib.sha256(data).hexdigest())
                          )(d, marker)
    return prep


case("cache", "a part cut in half; train", TRAIN_NEW, truncate("cache/part-00000.parquet"))
case("cache", "a part cut in half, its sha256 updated to match; inspect-noise",
     ["inspect-noise", "cache", "--out-dir", "out"], truncate("cache/part-00000.parquet", fix_sha=True))
case("cache", "manifest.json is not JSON; train", TRAIN_NEW, write("cache/manifest.json", "{parts: oops"))
case("cache", "manifest.json is not UTF-8; inspect-noise", ["inspect-noise", "cache", "--out-dir", "out"],
     write("cache/manifest.json", b"\xff\xfe{}"))
case("cache", "manifest lists parts as a list; score --overwrite", ["score", "pairs.jsonl", "--model", "model",
                                                                    "--out", "cache", "--overwrite"],
     manifest_edit(lambda m: m.__setitem__("parts", list(m["parts"]))), outputs=[])
case("cache", "manifest: a part of -1 rows; train", TRAIN_NEW,
     manifest_edit(lambda m: m["parts"]["part-00000.parquet"].__setitem__("rows", -1)))
case("cache", "manifest: complete is \"yes\"; train", TRAIN_NEW,
     manifest_edit(lambda m: m.__setitem__("complete", "yes")))
case("cache", "resume onto a cache of other settings (--max-length 64)", ["score", "pairs.jsonl", "--model", "model",
                                                                          "--out", "cache", "--max-length", "64"],
     outputs=[])
case("cache", "a part replaced by a link to the sentinel; score --overwrite", ["score", "pairs.jsonl", "--model",
                                                                               "model", "--out", "cache",
                                                                               "--overwrite"],
     lambda d, m: [(d / "cache/part-00000.parquet").unlink(),
                   (d / "cache/part-00000.parquet").symlink_to(d.parent.parent / "sentinel.txt")],
     outputs=["cache"], expect="either")

# -- crafted run folders
CHECKPOINT = "run/checkpoints/step-00000003"
RESUME = ["train", "--out", "run", "--resume"]  # the run's own settings: it restores step 3, then finishes
case("run", "checkpoint: random_states_0.pkl is a pickle payload; train --resume", RESUME,
     lambda d, m: plant_pickle(d / CHECKPOINT / "random_states_0.pkl", m, torch_format=False), outputs=["run"])
case("run", "checkpoint: optimizer.bin is a torch.save payload; train --resume", RESUME,
     lambda d, m: plant_pickle(d / CHECKPOINT / "optimizer.bin", m), outputs=["run"])
case("run", "checkpoint: model.safetensors replaced by pytorch_model.bin payload; train --resume", RESUME,
     lambda d, m: [(d / CHECKPOINT / "model.safetensors").unlink(),
                   plant_pickle(d / CHECKPOINT / "pytorch_model.bin", m)], outputs=["run"])
case("run", "checkpoint: repo_state.json is not JSON; train --resume", RESUME,
     write(f"{CHECKPOINT}/repo_state.json", "{oops"), outputs=["run"])
case("run", "checkpoint: repo_state.safetensors missing; train --resume", RESUME,
     lambda d, m: (d / CHECKPOINT / "repo_state.safetensors").unlink(), outputs=["run"])
case("run", "config.json missing; inspect-noise run", ["inspect-noise", "run", "--out-dir", "out"],
     lambda d, m: (d / "run/config.json").unlink())
case("run", "config.json not JSON; evaluate", ["evaluate", "pairs.jsonl", "--run", "run", "--out", "out"],
     write("run/config.json", "{oops"))
case("run", "config.json a JSON list; train --resume", RESUME, write("run/config.json", "[1, 2]"), outputs=[])
case("run", "posteriors/epoch-0001.parquet cut in half; inspect-noise run", ["inspect-noise", "run", "--out-dir",
                                                                              "out"],
     truncate("run/posteriors/epoch-0001.parquet"))
case("run", "annotators/epoch-0001.parquet is text; inspect-noise run", ["inspect-noise", "run", "--out-dir", "out"],
     write("run/annotators/epoch-0001.parquet", "not parquet"))
case("run", "posteriors of another run's pairs (wrong row count); inspect-noise",
     ["inspect-noise", "run", "--out-dir", "out"],
     lambda d, m: __import__("polars").read_parquet(d / "run/posteriors/epoch-0001.parquet").head(5)
     .write_parquet(d / "run/posteriors/epoch-0001.parquet"))
case("run", "the folder mark .re-po.json is not JSON; train --resume", RESUME, write("run/.re-po.json", "{oops"),
     outputs=[])
case("run", "final/: weights a pytorch_model.bin payload; evaluate", ["evaluate", "pairs.jsonl", "--run", "run",
                                                                       "--out", "out"],
     lambda d, m: [(d / "run/final/model.safetensors").unlink(), plant_pickle(d / "run/final/pytorch_model.bin", m)])

# -- crafted model folders: `repo score pairs.jsonl --model model`
SCORE_PAIRS = score("pairs.jsonl")
case("model", "pytorch_model.bin is a pickle payload", SCORE_PAIRS,
     lambda d, m: [(d / "model/model.safetensors").unlink(), plant_pickle(d / "model/pytorch_model.bin", m)])
case("model", "model.safetensors cut in half", SCORE_PAIRS, truncate("model/model.safetensors"))
case("model", "model.safetensors is a pickle payload", SCORE_PAIRS,
     lambda d, m: plant_pickle(d / "model/model.safetensors", m))


def remote_code(d: Path, marker: Path, model_type: str | None = None) -> None:
    payload_module(d / "model", "evil", marker)
    config = json.loads((d / "model/config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Evil", "AutoModelForCausalLM": "evil.Evil"}
    if model_type:
        config["model_type"] = model_type
    (d / "model/config.json").write_text(json.dumps(config))


case("model", "config.json auto_map to remote code (model_type llama)", SCORE_PAIRS, remote_code, expect="either")
case("model", "config.json auto_map to remote code, unknown model_type", SCORE_PAIRS,
     lambda d, m: remote_code(d, m, "evil-arch"))


def tokenizer_remote(d: Path, marker: Path) -> None:
    payload_module(d / "model", "evil", marker)
    config = json.loads((d / "model/tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.Evil", None]}
    (d / "model/tokenizer_config.json").write_text(json.dumps(config))


case("model", "tokenizer_config.json auto_map to remote code", SCORE_PAIRS, tokenizer_remote, expect="either")
case("model", "tokenizer.json cut in half", SCORE_PAIRS, truncate("model/tokenizer.json"))
case("model", "tokenizer.json and tokenizer_config.json missing", SCORE_PAIRS,
     lambda d, m: [(d / "model/tokenizer.json").unlink(), (d / "model/tokenizer_config.json").unlink()])
case("model", "config.json missing", SCORE_PAIRS, lambda d, m: (d / "model/config.json").unlink())
case("model", "config.json: num_hidden_layers is \"two\"", SCORE_PAIRS,
     lambda d, m: (d / "model/config.json").write_text(
         json.dumps({**json.loads((d / "model/config.json").read_text()), "num_hidden_layers": "two"})))
case("model", "an empty model folder", score("pairs.jsonl")[:3] + ["empty", "--out", "out"],
     lambda d, m: (d / "empty").mkdir())
case("model", "--model names a file (the data)", score("pairs.jsonl")[:3] + ["pairs.jsonl", "--out", "out"])

# -- bad flags and settings
TRAIN = ["train", "cache", "--out", "out", "--report-to", "none"]
case("settings", "train --lr -1", TRAIN + ["--lr", "-1"])
case("settings", "train --epochs 0", TRAIN + ["--epochs", "0"])
case("settings", "train --beta 0", TRAIN + ["--beta", "0"])
case("settings", "train --beta -0.5 --loss simpo", TRAIN + ["--beta", "-0.5", "--loss", "simpo"])
case("settings", "train --loss foo", TRAIN + ["--loss", "foo"])
case("settings", "train --lr nan", TRAIN + ["--lr", "nan"])
case("settings", "train --batch-size 10000000000000000000000", TRAIN + ["--batch-size", "1" + "0" * 22])
case("settings", "score --max-length 1", score("pairs.jsonl", "--max-length", "1"))
case("settings", "make-noisy --flip-rate 1.5", ["make-noisy", "pairs.jsonl", "out.jsonl", "--flip-rate", "1.5"],
     outputs=["out.jsonl"])
case("settings", "repo.toml: lr = \"fast\"", ["train", "cache", "--out", "out"],
     write("repo.toml", REPO_TOML.replace("lr = 0.001", 'lr = "fast"')))
case("settings", "repo.toml: [train] is a string", ["train", "cache", "--out", "out"],
     write("repo.toml", 'train = "fast"\n' + REPO_TOML.split("[train]")[0]))
case("settings", "repo.toml: an unknown key", ["train", "cache", "--out", "out"],
     write("repo.toml", REPO_TOML + "lrr = 0.1\n"))
case("settings", "repo.toml: not UTF-8", ["train", "cache", "--out", "out"],
     write("repo.toml", REPO_TOML.encode() + b"# caf\xe9\n"))
case("settings", "repo.toml: a TOML syntax error", ["train", "cache", "--out", "out"],
     write("repo.toml", REPO_TOML + "[train\n"))
case("settings", "repo.toml: eval_judge a payload module, no eval_data; train", ["train", "cache", "--out", "out"],
     lambda d, m: [payload_module(d, "payload", m),
                   write("repo.toml", REPO_TOML + 'eval_judge = "payload:judge"\n')(d, m)])
case("settings", "repo.toml: [generate] judge a payload module; inspect-noise (must not import it)",
     ["inspect-noise", "cache", "--out-dir", "out"],
     lambda d, m: [payload_module(d, "payload", m),
                   write("repo.toml", REPO_TOML + '[generate]\njudge = "payload:judge"\n')(d, m)], expect="ok")
case("settings", "generate --judge a payload module, run without final/", ["generate", "pairs.jsonl", "--run", "run",
                                                                            "--out", "out", "--judge",
                                                                            "payload:judge"],
     lambda d, m: [payload_module(d, "payload", m), shutil.rmtree(d / "run/final")])

# -- interrupted writes


def interrupted_cache(d: Path, marker: Path) -> None:
    """What a `repo score` killed while writing its first part leaves: no part listed, a half temporary file."""
    part = d / "cache/part-00000.parquet"
    (d / "cache/.part-00000.parquet.tmp").write_bytes(part.read_bytes()[:500])
    part.unlink()
    manifest_edit(lambda m: [m.__setitem__("parts", {}), m.__setitem__("complete", False)])(d, marker)


case("interrupted", "score killed mid-part (a half .tmp, nothing listed); rerun", ["score", "pairs.jsonl", "--model",
                                                                                  "model", "--out", "cache"],
     interrupted_cache, outputs=["cache"], expect="ok")
case("interrupted", "score killed mid-part; train on the unfinished cache", TRAIN_NEW, interrupted_cache)
case("interrupted", "train killed mid-checkpoint (a half .tmp-step); resume", RESUME,
     lambda d, m: [shutil.copytree(d / CHECKPOINT, d / "run/checkpoints/.tmp-step-00000004"),
                   (d / "run/checkpoints/.tmp-step-00000004/optimizer.bin").write_bytes(b"half")],
     outputs=["run"], expect="ok")
case("interrupted", "inspect killed while marking its folder (.re-po.json.tmp alone); rerun",
     ["inspect-noise", "cache", "--out-dir", "out"], write("out/..re-po.json.tmp", '{"ki'), expect="ok")
case("interrupted", "score SIGKILLed once a part is listed; rerun resumes", None, expect="ok", outputs=["killed"])


# ---- running ---------------------------------------------------------------------------------------------------

def kill_and_resume(d: Path) -> tuple[int | str, str, str]:
    """`repo score` into `killed` (40 parts of one row), SIGKILLed as soon as its manifest lists a part, then the same
    command again; says how many parts the killed one had listed."""
    args = ["score", "pairs.jsonl", "--model", "model", "--out", "killed", "--part-size", "1"]
    child = subprocess.Popen([sys.executable, "-m", "re_po.cli", *args], cwd=d, env=child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT_S
    while child.poll() is None and listed_parts(d / "killed") < 1 and time.monotonic() < deadline:
        time.sleep(0.002)
    child.kill()
    child.wait()
    listed = listed_parts(d / "killed")
    code, out, err = repo(args, d)
    err += f"\n(killed with {listed} of 40 parts listed; the rerun finished the cache)" if code == 0 else ""
    if code == 0:
        manifest = json.loads((d / "killed/manifest.json").read_text())
        if not manifest["complete"] or sum(p["rows"] for p in manifest["parts"].values()) != len(ROWS):
            return 1, out, err + "\nerror: the resumed cache is not whole"
    return code, out, err


def listed_parts(folder: Path) -> int:
    try:
        return len(json.loads((folder / "manifest.json").read_text())["parts"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def run_case(number: int, c: Case, base: Path, root: Path) -> dict:
    d = root / "cases" / f"{number:02d}"
    shutil.copytree(base, d, symlinks=True)
    marker = root / "markers" / f"{number:02d}"
    if c.prep:
        c.prep(d, marker)
    sentinel = root / "sentinel.txt"
    before, sentinel_before = snapshot(d), sentinel.read_bytes()
    start = time.monotonic()
    code, out, err = kill_and_resume(d) if c.args is None else repo(c.args, d / c.cwd)
    seconds = time.monotonic() - start
    (d / "ro").exists() and (d / "ro").chmod(0o755)
    after = snapshot(d)
    problems = [f"-{rel}" for rel in before if rel not in after and not under(rel, c.outputs)]
    problems += [f"~{rel}" for rel in before if rel in after and after[rel] != before[rel] and not under(rel, c.outputs)]
    problems += [f"+{rel}" for rel in after if rel not in before and not under(rel, c.outputs)]
    if code != 0:  # a refusal leaves none of its outputs behind
        problems += [f"left {o}" for o in c.outputs if (d / o).exists() and not any(k.startswith(o) for k in before)]
    if sentinel.read_bytes() != sentinel_before:
        problems.append("~sentinel")
    for stray in ("/dev/null",):  # a device must stay one
        if not stat.S_ISCHR(os.stat(stray).st_mode):
            problems.append(f"{stray} replaced")
    lines = [line for line in err.strip().splitlines() if line.strip() and "it/s" not in line]  # no progress bars
    last = lines[-1].strip() if lines else (out.strip().splitlines() or ["(no output)"])[-1]
    # re-po's refusals are `error: ...`; a flag's value that the parser itself refuses is click's `Error: ...` line,
    # under its Usage and Try lines
    error_lines = [line for line in (out + err).splitlines() if line.startswith(("error: ", "Error: "))]
    if len(error_lines) == 1 and not last.lower().startswith("error: "):  # the error, then lines of detail below
        after = lines[len(lines) - 1 - lines[::-1].index(error_lines[0]):] if error_lines[0] in lines else []
        last = f"{error_lines[0]} (+{max(len(after) - 1, 0)} lines of detail)"
    last = last.replace(str(d), "<case>").replace(str(root), "<tmp>")  # the same table from run to run
    ran = marker.exists()
    traceback = TRACEBACK in out + err
    refused = code not in (0, "timeout") and len(error_lines) == 1 and last.lower().startswith("error: ")
    exit_ok = {"error": refused, "ok": code == 0, "either": code == 0 or refused}[c.expect]
    ok = exit_ok and not traceback and not problems and not ran
    return {"number": number, "group": c.group, "name": c.name, "exit": code, "message": last, "traceback": traceback,
            "problems": problems, "payload": ran, "ok": ok, "expect": c.expect, "seconds": seconds,
            "stdout": out, "stderr": err}


def table(results: list[dict]) -> str:
    def cell(text: str, width: int = 120) -> str:
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= width else text[: width - 1] + "…"

    rows = ["| # | case | exit | one-line message | traceback | lost/changed | payload ran |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        mark = "" if r["ok"] else " **✗**"
        rows.append(f"| {r['number']} | {r['group']}: {cell(r['name'], 90)}{mark} | {r['exit']} | "
                    f"`{cell(r['message'])}` | {'**yes**' if r['traceback'] else 'no'} | "
                    f"{cell(', '.join(r['problems']), 80) if r['problems'] else 'nothing'} | "
                    f"{'**yes**' if r['payload'] else 'no'} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("workspace/bench-hostile/results.md"))
    parser.add_argument("--only", nargs="*", help="run the cases whose name holds one of these words")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="re-po-hostile-"))
    started = time.monotonic()
    try:
        (root / "markers").mkdir()
        (root / "sentinel.txt").write_text("the user's file outside every case\n")
        print(f"building the base project in {root}", file=sys.stderr)
        build_base(root / "base")
        chosen = [(i, c) for i, c in enumerate(CASES, 1)
                  if not args.only or any(word.lower() in f"{c.group}: {c.name}".lower() for word in args.only)]
        results = []
        for number, c in chosen:
            result = run_case(number, c, root / "base", root)
            results.append(result)
            print(f"{number:2d} {'ok ' if result['ok'] else 'BAD'} {result['seconds']:5.1f}s {c.group}: {c.name}: "
                  f"{result['exit']} {result['message'][:100]}", file=sys.stderr)
            if not result["ok"]:
                print("   " + (result["stdout"] + result["stderr"]).strip()[-1500:].replace("\n", "\n   "),
                      file=sys.stderr)
        bad = [r for r in results if not r["ok"]]
        summary = (f"{len(results)} cases, {len(results) - len(bad)} as expected; tracebacks: "
                   f"{sum(r['traceback'] for r in results)}, lost or changed: {sum(bool(r['problems']) for r in results)}"
                   f", payloads run: {sum(r['payload'] for r in results)} ({time.monotonic() - started:.0f} s)")
        text = table(results) + "\n\n" + summary + "\n"
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=1, default=str))
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            for path in root.rglob("ro"):
                path.chmod(0o755)
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
