"""stages/train.py on a tiny Llama and a cache written by the real score stage (CPU, seconds each).

Checks the step-0 invariant that ties both stages together, that RE-PO with η ≡ 1 is the plain loss, exact
resumption after SIGKILL, two processes under `accelerate launch` (gloo) with each accelerate config of
docs/accelerate/ (DDP, FSDP2, DeepSpeed ZeRO-2/3), the persisted posteriors and η, and the error messages.
"""
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import WORDS, is_one_line_error, subprocess_env
from safetensors.torch import load_file

from re_po.data import checkpoint, estimate, run_folder, schema
from re_po.data import launch as launching
from re_po.data.noise_inputs import NoiseInputError
from re_po.data.pair_table import PairTable
from re_po.data.scoring import ScoreConfig
from re_po.data.scoring import run as score
from re_po.pipeline import batching, losses, reliability
from re_po.pipeline.choices import LossSpec
from re_po.pipeline.losses import PairLogps
from re_po.stages import evaluate, train
from re_po.stages.configs import ALGORITHM_1, ROBUST_DEFAULTS, TrainConfig
from re_po.stages.train import SequenceLogps, pair_logps, run

REPO = Path(__file__).resolve().parents[1]
NUM_PAIRS, BATCH = 24, 4  # 6 steps per epoch
ANNOTATORS = ("alice", "bob", "carol")


@pytest.fixture(autouse=True, scope="module")  # module: also for the module's fixtures
def one_thread():
    """One BLAS thread: the machine is shared, and results must match subprocesses started with OMP_NUM_THREADS=1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def scores(tiny_llama, tmp_path_factory) -> Path:
    """A score cache of NUM_PAIRS plain-text pairs by three annotators, written by `repo score` (hf backend)."""
    rng = random.Random(0)
    words = [w for w in WORDS if w.isalpha()]
    def text(low, high):
        return " ".join(rng.choices(words, k=rng.randint(low, high)))
    rows = [{"prompt": text(2, 6), "chosen": text(1, 9), "rejected": text(1, 9), "annotator": ANNOTATORS[i % 3]}
            for i in range(NUM_PAIRS)]
    folder = tmp_path_factory.mktemp("scores")
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return score(ScoreConfig(data=str(folder / "pairs.jsonl"), model=str(tiny_llama), out=folder / "cache",
                             device="cpu", max_length=64, max_prompt_length=32))


def config(scores: Path, out: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{"scores": scores, "out_dir": out, "batch_size": BATCH, "lr": 1e-2, "warmup_ratio": 0.0,
                          "device": "cpu", **overrides})


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / run_folder.FINAL / "model.safetensors")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / run_folder.METRICS).read_text().splitlines()]


def rewrite_cache(src: Path, dst: Path, edit_rows=lambda df: df, edit_key=lambda key: key) -> Path:
    """A copy of a cache with rows or key changed, written by the schema writer."""
    df, key = schema.read_scores(src)
    manifest = schema.open_cache(dst, edit_key(dict(key)), {"num_parts": 1}, overwrite=True)
    schema.write_part(dst, manifest, 0, edit_rows(df), [])
    schema.finish_cache(dst, manifest, [])
    return dst


def test_step0_policy_logps_equal_cached_reference_and_dpo_loss_is_ln2(scores, tiny_llama, tmp_path):
    """With policy = reference, the trainer's forward reproduces the scorer's log-probs: margins 0, loss ln 2.
    The cache was scored packed; the trainer's forward agrees with it packed and padded."""
    from transformers import AutoModelForCausalLM

    pairs = PairTable.read(scores, with_reference=True)
    first_step = batching.plan_epoch(pairs.lengths, BATCH, seed=0, epoch=1)[0]
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    for packing in (True, False):
        with torch.no_grad():
            logps = pair_logps(SequenceLogps(policy), pairs, first_step, pad_id=0, packing=packing)
        torch.testing.assert_close(logps.policy_chosen_logps.double(), logps.ref_chosen_logps, rtol=0, atol=1e-4)
        torch.testing.assert_close(logps.policy_rejected_logps.double(), logps.ref_rejected_logps, rtol=0, atol=1e-4)
        assert logps.policy_chosen_logps.abs().min() > 1  # real log-probs, not zeros

    out = run(config(scores, tmp_path / "run", max_steps=1))
    step = metrics(out)[0]
    assert step["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert step["rewards/margins"] == pytest.approx(0, abs=1e-5)
    assert step["rewards/chosen"] == pytest.approx(0, abs=1e-5)
    rows = pairs.frame[first_step]
    ref = schema.read_scores(scores)[0].filter(pl.col("row_id").is_in(rows["row_id"].to_list()))
    assert step["logps/chosen"] == pytest.approx(ref["ref_chosen_logps"].mean(), abs=1e-4)
    assert {"grad_norm", "learning_rate", "rewards/rejected", "rewards/accuracies", "logps/rejected"} <= set(step)


def assert_trains_alike(first: Path, second: Path, start: dict, update_tolerance: float) -> None:
    """Per step the same loss and gradient norm (rtol 5e-3); weight updates within update_tolerance (relative L2)."""
    for a, b in zip(metrics(first), metrics(second), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=5e-3)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=5e-3)
    update, other = ([weights(out)[n] - start[n] for n in start] for out in (first, second))
    difference = torch.cat([(a - b).flatten() for a, b in zip(update, other)]).norm()
    assert difference <= update_tolerance * torch.cat([a.flatten() for a in update]).norm()


@pytest.mark.parametrize("loss, form", [("dpo", "induced"), ("dpo", "weighted"), ("ipo", "weighted"),
                                        ("simpo", "weighted"), ("cpo", "weighted"), ("ipo", "scaled")])
def test_robust_with_eta_one_and_frozen_trains_like_the_plain_loss(scores, tiny_llama, tmp_path, loss, form):
    """η0 = 1, α_η = 0: w ≈ 1, so RE-PO trains as the base loss (method.md §4).

    The induced-logit BCE equals the base loss only where e^−L(a≻b) + e^−L(b≻a) = 1 (DPO); the weighted form
    w·L(a≻b) + (1−w)·L(b≻a) and the scaled form w·L(a≻b) equal it for every loss. η is clamped to 1 − 1e-4 (method.md §7.3), so w = 1 − 1e-4
    at z = 0 (more where z < 0: IPO's z = 2u/β is large) and gradient norms differ by 2e-4 to 1.5e-3; Adam normalises each coordinate, which magnifies that
    where a coordinate's gradient is near 0 (most for CPO, whose rejected-response NLL enters with weight 1 − w):
    measured relative update differences are 4e-6 (DPO), 6e-5 (IPO), 2e-4 (SimPO), 7e-3 (CPO).
    """
    plain = run(config(scores, tmp_path / "plain", loss=loss, max_steps=4, lr=1e-3))
    robust = run(config(scores, tmp_path / "robust", loss=loss, max_steps=4, lr=1e-3, robust=True, eta0=1.0,
                        eta_alpha=0.0, **{**ALGORITHM_1, "robust_form": form}))
    assert_trains_alike(plain, robust, load_file(tiny_llama / "model.safetensors"), update_tolerance=2e-2)


def test_robust_with_low_eta_trains_differently(scores, tiny_llama, tmp_path):
    """The guard of the test above: with η0 = 0.6 the gradients shrink (w ≈ 0.6 at z ≈ 0) and it fails."""
    plain = run(config(scores, tmp_path / "plain", max_steps=4, lr=1e-3))
    robust = run(config(scores, tmp_path / "robust", max_steps=4, lr=1e-3, robust=True, eta0=0.6, eta_alpha=0.0,
                        **ALGORITHM_1))
    with pytest.raises(AssertionError):
        assert_trains_alike(plain, robust, load_file(tiny_llama / "model.safetensors"), update_tolerance=2e-2)


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_robust_where_nothing_is_known_trains_exactly_like_the_plain_loss(scores, tmp_path, capfd, loss):
    """Single labels on random text: the probe is at chance and no η is identified, so every w would be η0 = 0.9,
    which is label smoothing (cDPO with ε 0.1, below DPO in bench/README.md). Every label rests on η0 alone and
    trains with the base loss: the same weights, bit for bit, as without --robust. The guard is
    test_robust_with_low_eta_trains_differently (a w that is used changes the weights)."""
    plain = run(config(scores, tmp_path / "plain", loss=loss, max_steps=4, lr=1e-3))
    robust = run(config(scores, tmp_path / "robust", loss=loss, max_steps=4, lr=1e-3, robust=True))
    assert "labels are alone on their pair" in capfd.readouterr().err
    zero = run_folder.read_epoch(robust, run_folder.ANNOTATORS, 0)
    assert not zero["identified"].any() and (zero["eta"] == 0.9).all()
    first, second = weights(plain), weights(robust)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert [step["loss"] for step in metrics(plain)] == [step["loss"] for step in metrics(robust)]


def test_gradient_accumulation_equals_one_larger_batch(scores, tiny_llama, tmp_path):
    """2 micro-batches of 4 accumulate to the gradient of one batch of 8 (same data order: 8 pairs per step).

    Weights are compared through their updates: Adam magnifies float rounding on coordinates whose gradient is ~0.
    """
    big = run(config(scores, tmp_path / "big", batch_size=8, max_steps=3))
    accumulated = run(config(scores, tmp_path / "acc", batch_size=4, grad_accum=2, max_steps=3))
    for a, b in zip(metrics(big), metrics(accumulated), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    assert_trains_alike(big, accumulated, load_file(tiny_llama / "model.safetensors"), update_tolerance=1e-4)


def test_gradient_checkpointing_gives_the_same_weights(scores, tmp_path):
    plain = weights(run(config(scores, tmp_path / "plain", max_steps=2)))
    checkpointed = weights(run(config(scores, tmp_path / "gc", max_steps=2, gradient_checkpointing=True)))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)


def test_same_seed_same_weights_other_seed_other_order(scores, tmp_path):
    first = weights(run(config(scores, tmp_path / "a", max_steps=3)))
    again = weights(run(config(scores, tmp_path / "b", max_steps=3)))
    other = weights(run(config(scores, tmp_path / "c", max_steps=3, seed=1)))
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)


def _posterior_checks(out: Path, pairs: PairTable, eta_update: str, seeded: bool = False) -> None:
    """seeded: the E-step's evidence is z plus the estimate's logit of epoch 0 (--e-step seeded)."""
    for epoch in (1, 2):
        post = run_folder.read_epoch(out, run_folder.POSTERIORS, epoch).sort("row_id")
        notes = run_folder.read_epoch(out, run_folder.ANNOTATORS, epoch).sort("annotator")
        assert sorted(post["row_id"].to_list()) == sorted(pairs.frame["row_id"].to_list())  # each pair once
        z = torch.tensor(post["z"].to_numpy())
        torch.testing.assert_close(torch.tensor(post["p"].to_numpy()), torch.sigmoid(z))
        assert post["flagged"].to_list() == (post["w"] < 0.5).to_list()
        # w was computed with the η in force before this epoch's pass: that of the step just before it
        steps = pl.read_parquet(out / run_folder.ETA_STEPS)
        before = steps.filter((pl.col("step") == 6 * epoch) & (pl.col("event") == "step"))
        eta_before = dict(zip(before["annotator"], before["eta"]))
        prior = (torch.tensor(run_folder.read_epoch(out, run_folder.POSTERIORS, 0).sort("row_id")["z"].to_numpy())
                 if seeded else 0.0)
        expected_w = torch.sigmoid(z + prior + torch.logit(torch.tensor([eta_before[a] for a in post["annotator"]])))
        torch.testing.assert_close(torch.tensor(post["w"].to_numpy()), expected_w)
        means = post.group_by("annotator").agg(pl.col("w").mean(), pl.len()).sort("annotator")
        assert notes["labels"].to_list() == means["len"].to_list()
        torch.testing.assert_close(torch.tensor(notes["w_mean"].to_numpy()), torch.tensor(means["w"].to_numpy()))
        if eta_update == "epoch":  # one exact M-step on the fresh posteriors (Eq. 6)
            torch.testing.assert_close(torch.tensor(notes["eta"].to_numpy()), torch.tensor(means["w"].to_numpy()))
        else:  # the epoch pass leaves η alone under ema
            assert notes["eta"].to_list() == [eta_before[a] for a in notes["annotator"]]
    first = run_folder.read_epoch(out, run_folder.POSTERIORS, 1)
    assert first["first_visit_z"].null_count() == 0 and not first["first_visit_z"].is_nan().any()
    assert "first_visit_z" not in run_folder.read_epoch(out, run_folder.POSTERIORS, 2).columns


@pytest.mark.parametrize("eta_update", ["ema", "epoch"])
def test_epoch_pass_persists_posteriors_and_eta(scores, tmp_path, eta_update):
    out = run(config(scores, tmp_path / "run", robust=True, epochs=2, lr=1e-3,
                     **{**ALGORITHM_1, "eta_update": eta_update}))
    pairs = PairTable.read(scores, with_reference=True)
    _posterior_checks(out, pairs, eta_update)
    first_step = batching.plan_epoch(pairs.lengths, BATCH, seed=0, epoch=1)[0]
    first = run_folder.read_epoch(out, run_folder.POSTERIORS, 1)
    z0 = first.filter(pl.col("row_id").is_in(pairs.frame[first_step]["row_id"].to_list()))["first_visit_z"]
    assert z0.abs().max() < 1e-5  # the first step's pairs were first seen by the untrained policy: z = 0
    steps = pl.read_parquet(out / run_folder.ETA_STEPS)
    assert steps.filter(pl.col("event") == "step")["step"].unique().sort().to_list() == list(range(1, 13))
    if eta_update == "epoch":  # no per-step EMA: within an epoch η stays at what the last epoch pass set
        after_epoch_1 = run_folder.read_epoch(out, run_folder.ANNOTATORS, 1).sort("annotator")["eta"].to_list()
        for epoch, eta in ((1, [0.9] * 3), (2, after_epoch_1)):
            in_epoch = steps.filter((pl.col("epoch") == epoch) & (pl.col("event") == "step")).sort("step", "annotator")
            assert in_epoch["eta"].to_list() == eta * 6
    last = metrics(out)[-1]
    assert {f"repo/eta/{a}" for a in ANNOTATORS} | {"repo/w_mean", "repo/flagged_frac"} <= set(last)


# accelerate (1.16) applies FSDP and DeepSpeed to processes on an accelerator only: on CPU processes it runs DDP
# instead (AcceleratorState; train._check_launch refuses that), and DeepSpeed's engine starts only with cpu=False. The
# engines themselves run on CPU over gloo, so the children put back the one step accelerate skips there, and the rest
# of accelerate's FSDP2 and DeepSpeed paths (sharding, backward, clipping, save_state, load_state, get_state_dict)
# runs for real. bench/gpu.sh runs the same tests on GPUs, where nothing is put back.
ENGINES_ON_CPU = """
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs
def accelerator_on_cpu(*args, cpu, **kwargs):
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":  # DeepSpeed's own CPU accelerator, over gloo
        import deepspeed.ops  # gloo's collectives, not the shared-memory op DeepSpeed would compile first (80 s)
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        return Accelerator(*args, cpu=False, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")], **kwargs)
    accelerator = Accelerator(*args, cpu=cpu, **kwargs)
    if os.environ.get("ACCELERATE_USE_FSDP") == "true":  # what AcceleratorState does for GPU processes
        AcceleratorState().fsdp_plugin = FullyShardedDataParallelPlugin()
        AcceleratorState().distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return accelerator
if not torch.cuda.is_available():
    train.Accelerator = accelerator_on_cpu
"""

# A child process: `repo train`'s run, killed by SIGKILL once the main process has logged step argv[2] (0: never).
# It records η after every step on each process (eta-rank<R>.json) and, before final/ is written, the log-probs of
# every pair under the trained policy as it is sharded in training (trained_logps.safetensors) and the modules
# FSDP shards on their own (fsdp_modules.json).
CHILD_RUN = """
import json, os, signal, sys
import torch
from accelerate import PartialState
from safetensors.torch import save_file
from torch.distributed.fsdp import FSDPModule
from re_po.data import run_folder
from re_po.data.pair_table import PairTable
from re_po.pipeline import em
from re_po.stages import train
settings, kill_at = json.loads(sys.argv[1]), int(sys.argv[2])
if torch.cuda.is_available():  # bit for bit on GPUs too: a kernel that is not deterministic raises, naming itself
    torch.use_deterministic_algorithms(True)
write = run_folder.MetricsLog.write
def write_then_die(self, record):
    write(self, record)
    if record["step"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
run_folder.MetricsLog.write = write_then_die
trajectory, ema_update = [], em.ema_update
def recording_ema_update(*args, **kwargs):
    trajectory.append(ema_update(*args, **kwargs))
    return trajectory[-1]
em.ema_update = recording_ema_update
save_final = train._save_final
def save_final_after_scoring(accelerator, model, tokenizer, cfg, out):
    pairs = PairTable.read(cfg.scores, with_reference=True)
    with torch.no_grad():  # every process: a sharded forward is collective
        logps = train.pair_logps(model, pairs, list(range(pairs.num_pairs)), pad_id=0)
    if accelerator.is_main_process:
        save_file({"chosen": logps.policy_chosen_logps.contiguous(),
                   "rejected": logps.policy_rejected_logps.contiguous()}, str(out / "trained_logps.safetensors"))
        fsdp = [name for name, module in model.named_modules() if isinstance(module, FSDPModule)]
        (out / "fsdp_modules.json").write_text(json.dumps(fsdp))
    save_final(accelerator, model, tokenizer, cfg, out)
train._save_final = save_final_after_scoring
""" + ENGINES_ON_CPU + """
out = train.run(train.TrainConfig(**settings))
(out / f"eta-rank{PartialState().process_index}.json").write_text(json.dumps([eta.tolist() for eta in trajectory]))
"""
ACCELERATE_CONFIGS = REPO / "docs" / "accelerate"  # the files README "Multi-GPU" gives


def child_env() -> dict[str, str]:
    """conftest.subprocess_env; on CPU, CUDA hidden (on a machine with fewer GPUs than processes accelerate would
    still pick cuda:LOCAL_RANK) and DeepSpeed on its CPU accelerator; with REPO_TEST_DEVICE=cuda, cuBLAS made
    deterministic."""
    env = subprocess_env()
    if DEVICE == "cuda":
        return {**env, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    return {**env, "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}


def assert_same_run(first: Path, second: Path, epochs: tuple[int, ...]) -> None:
    """Bit for bit: final weights, each epoch's posteriors and annotators, η at every step, metrics but speed."""
    one, other = weights(first), weights(second)
    assert one.keys() == other.keys() and all(torch.equal(one[n], other[n]) for n in one)
    for kind in (run_folder.POSTERIORS, run_folder.ANNOTATORS):
        for epoch in epochs:
            assert run_folder.read_epoch(first, kind, epoch).equals(run_folder.read_epoch(second, kind, epoch))
    assert pl.read_parquet(first / run_folder.ETA_STEPS).equals(pl.read_parquet(second / run_folder.ETA_STEPS))
    drop_timing = [{k: v for k, v in m.items() if k != "pairs_per_s"} for m in metrics(first)]
    assert drop_timing == [{k: v for k, v in m.items() if k != "pairs_per_s"} for m in metrics(second)]


@pytest.mark.parametrize("seeded", [False, True])
def test_resume_after_sigkill_ends_like_an_uninterrupted_run(scores, tmp_path, monkeypatch, seeded):
    """Killed after step 3 (last checkpoint at step 2, epoch 1), resumed: same weights, η, posteriors, metrics.
    Seeded by the estimate, the resumed run reads epoch 0 back instead of estimating again."""
    settings = {"robust": True, "epochs": 2, "save_every": 2, "lr": 1e-3,
                **({"eta_init": "estimate", "e_step": "seeded"} if seeded else ALGORITHM_1), "eta_update": "both"}
    whole = run(config(scores, tmp_path / "whole", **settings))
    killed = tmp_path / "killed"
    args = {"scores": str(scores), "out_dir": str(killed), "batch_size": BATCH, "warmup_ratio": 0.0, "device": "cpu",
            **settings}
    done = subprocess.run([sys.executable, "-c", CHILD_RUN, json.dumps(args), "3"], env=child_env(),
                          capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert [p.name for p in (killed / run_folder.CHECKPOINTS).iterdir()] == ["step-00000002"]
    assert not (killed / run_folder.FINAL).exists()

    def no_second_estimate(*args):
        raise AssertionError("a resumed run estimated again")

    monkeypatch.setattr(estimate, "run", no_second_estimate)
    resumed = run(config(scores, killed, **settings, resume=True))
    assert_same_run(whole, resumed, (0, 1, 2) if seeded else (1, 2))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(engine: str, settings: dict, kill_at: int = 0) -> None:
    """CHILD_RUN under `accelerate launch --config_file docs/accelerate/<engine>.yaml` with PROCESSES processes (on
    CPU, `repo train --device cpu` makes them use gloo); fails with the main process's traceback unless killed."""
    script = Path(settings["out_dir"]).with_name("child_run.py")
    script.write_text(CHILD_RUN)
    # `accelerate launch` by its own module: the `accelerate` command imports its other commands too (3 s more)
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch",
                           "--config_file", str(ACCELERATE_CONFIGS / f"{engine}.yaml"), "--num_processes",
                           str(PROCESSES), "--main_process_port", str(_free_port()), str(script), json.dumps(settings),
                           str(kill_at)], env=child_env(), capture_output=True, timeout=300)
    rank0 = [line for line in done.stderr.decode().splitlines() if line.startswith("[rank0]")]
    assert (done.returncode != 0) == bool(kill_at), "\n".join(rank0[-40:]) or done.stderr.decode()[-4000:]


DEVICE = os.environ.get("REPO_TEST_DEVICE", "cpu")  # bench/gpu.sh: cuda, one process per GPU (two at most)
PROCESSES = 2 if DEVICE == "cpu" else min(2, torch.cuda.device_count())
# The estimate first (every process runs it), its logits and the policy's z in every E-step, η moved at every step
# from η0 (started at the estimate, η would be held here: on random text it identifies no annotator).
SEEDED_WITH_EMA = {"eta_init": "fixed", "e_step": "seeded", "eta_update": "ema"}
# 4 pairs per step in micro-batches of 1 (2 per process), 2 epochs of 6 steps, a checkpoint every 2 steps; clipped
# at every step (the gradient norms are 0.5 to 0.8), so that the engines' clipping counts too.
LAUNCHED = {"batch_size": 1, "grad_accum": 4 // PROCESSES, "max_grad_norm": 0.1, "warmup_ratio": 0.0,
            "robust": True, "epochs": 2, "lr": 1e-3, "save_every": 2, "device": DEVICE, **SEEDED_WITH_EMA}
ENGINES = ["ddp", "fsdp2", "fsdp2-full-state-dict", "zero2", "zero3"]
# The engine at work: what a checkpoint holds besides re-po's state and the RNG's (the model whole, or each process
# its shard), and the modules FSDP shards: the root and each decoder layer (the model's _no_split_modules).
CHECKPOINT_FILES = {
    "ddp": ["model.safetensors", "optimizer.bin"],
    "fsdp2": ["optimizer_0/__{rank}_0.distcp", "pytorch_model_fsdp_0/__{rank}_0.distcp"],
    "fsdp2-full-state-dict": ["optimizer.bin", "pytorch_model_fsdp.bin"],
    "zero2": ["pytorch_model/mp_rank_00_model_states.pt",
              "pytorch_model/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"],
    "zero3": ["pytorch_model/zero_pp_rank_{rank}_mp_rank_00_model_states.pt",
              "pytorch_model/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"],
}
FSDP_MODULES = ["", "policy.model.layers.0", "policy.model.layers.1"]


@pytest.fixture(scope="module")
def one_process(scores, tmp_path_factory) -> Path:
    """The same training in one process and one micro-batch per step."""
    return run(config(scores, tmp_path_factory.mktemp("one") / "run", **{**LAUNCHED, "batch_size": 4,
                                                                           "grad_accum": 1}))


@pytest.mark.parametrize("engine", ENGINES)
def test_two_processes_hold_the_same_eta_write_each_posterior_once_and_resume_exactly(scores, one_process, tmp_path,
                                                                                     engine):
    """`accelerate launch --num_processes 2` with each accelerate config of README "Multi-GPU": η bit-identical on
    both processes at every step; every pair's posterior exactly once; the same training as one process (the
    engine's accumulation and clipping included); final/ loads with transformers and gives the log-probs of the
    policy as trained; with FSDP or DeepSpeed, killed by SIGKILL after step 9 (last checkpoint at step 8, epoch 2)
    and resumed, it ends bit for bit like the uninterrupted run."""
    if engine.startswith("zero"):
        pytest.importorskip("deepspeed")
    from transformers import AutoModelForCausalLM

    whole, killed, settings = tmp_path / "whole", tmp_path / "killed", {"scores": str(scores), **LAUNCHED}
    launch(engine, {**settings, "out_dir": str(whole)})
    etas = [json.loads((whole / f"eta-rank{rank}.json").read_text()) for rank in range(PROCESSES)]
    assert len(etas[0]) == 12 and all(eta == etas[0] for eta in etas)
    pairs = PairTable.read(scores, with_reference=True)
    _posterior_checks(whole, pairs, "ema", seeded=True)
    eta_one = pl.read_parquet(one_process / run_folder.ETA_STEPS).filter(pl.col("event") == "step")["eta"]
    torch.testing.assert_close(torch.tensor(etas[0], dtype=torch.float64).reshape(-1),
                               torch.tensor(eta_one.to_numpy()), rtol=0, atol=1e-6)
    for name, value in weights(one_process).items():
        torch.testing.assert_close(weights(whole)[name], value, rtol=1e-4, atol=1e-5)
    final = SequenceLogps(AutoModelForCausalLM.from_pretrained(whole / run_folder.FINAL, dtype=torch.float32))
    with torch.no_grad():
        logps = pair_logps(final.to(DEVICE), pairs, list(range(pairs.num_pairs)), pad_id=0)
    trained = load_file(whole / "trained_logps.safetensors", device=DEVICE)
    torch.testing.assert_close(logps.policy_chosen_logps, trained["chosen"], rtol=0, atol=1e-5)
    torch.testing.assert_close(logps.policy_rejected_logps, trained["rejected"], rtol=0, atol=1e-5)
    assert json.loads((whole / "fsdp_modules.json").read_text()) == (FSDP_MODULES if "fsdp" in engine else [])
    saved = checkpoint.latest(whole / run_folder.CHECKPOINTS)
    files = {str(path.relative_to(saved)) for path in saved.rglob("*")}
    assert {name.format(rank=rank) for name in CHECKPOINT_FILES[engine] for rank in range(PROCESSES)} <= files
    if engine == "ddp":  # its checkpoint is one process's, resumed by test_resume_after_sigkill_ends_like_...
        return

    launch(engine, {**settings, "out_dir": str(killed)}, kill_at=9)
    assert [p.name for p in (killed / run_folder.CHECKPOINTS).iterdir()] == ["step-00000008"]
    assert not (killed / run_folder.FINAL).exists()
    launch(engine, {**settings, "out_dir": str(killed), "resume": True})
    assert_same_run(whole, killed, (0, 1, 2))
    for rank in range(PROCESSES):  # from the checkpoint's η on, as uninterrupted
        assert json.loads((killed / f"eta-rank{rank}.json").read_text()) == etas[0][8:]


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_an_engine_that_accelerate_would_not_apply_is_refused(scores, tmp_path, monkeypatch, variable):
    """Asked for by an accelerate config on CPU processes, FSDP or DeepSpeed would silently be DDP: refused."""
    if variable.endswith("DEEPSPEED"):
        pytest.importorskip("deepspeed")
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ValueError, match="GPU processes only; on CPU launch with docs/accelerate/ddp.yaml"):
        run(config(scores, tmp_path / "run", max_steps=1))


def test_processes_that_accelerate_does_not_join_are_refused(scores, tmp_path, monkeypatch):
    """Launched as two processes without --device cpu on a machine without GPUs, accelerate gives each a group of
    one: each would train alone into the same run folder. Refused (the launcher's WORLD_SIZE, here set by hand)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="2 processes were launched, but accelerate sees 1.*--device cpu"):
        run(config(scores, tmp_path / "run", max_steps=1, device="auto"))


def test_refuses_a_cache_tokenized_for_another_tokenizer(scores, tmp_path):
    foreign = rewrite_cache(scores, tmp_path / "foreign", edit_key=lambda key: {**key, "tokenizer_sha": "f00"})
    with pytest.raises(schema.CacheError, match="another tokenizer") as err:
        run(config(foreign, tmp_path / "run"))
    assert "cache f00" in str(err.value) and "policy " in str(err.value)


def test_refuses_a_missing_policy(scores, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        run(config(scores, tmp_path / "run", policy=str(tmp_path / "no-such-model")))


def test_refuses_a_loss_needing_reference_logps_the_cache_lacks(scores, tmp_path):
    no_refs = rewrite_cache(scores, tmp_path / "no_refs",
                            edit_rows=lambda df: df.with_columns(ref_chosen_logps=pl.lit(None, pl.Float64)))
    with pytest.raises(ValueError, match=f"loss ipo needs reference log-probs.*for {NUM_PAIRS} rows"):
        run(config(no_refs, tmp_path / "run", loss="ipo"))
    run(config(no_refs, tmp_path / "simpo", loss="simpo", max_steps=1))  # reference-free: fine


def test_stops_on_a_non_finite_loss_naming_step_and_pairs(scores, tmp_path, monkeypatch):
    base_loss = losses.base_loss
    monkeypatch.setattr(losses, "base_loss", lambda *a: base_loss(*a) + torch.tensor(math.nan))
    pairs = PairTable.read(scores, with_reference=True)
    first_step = batching.plan_epoch(pairs.lengths, BATCH, seed=0, epoch=1)[0]
    with pytest.raises(FloatingPointError, match="optimizer step 1") as err:
        run(config(scores, tmp_path / "run"))
    assert all(pair_id in str(err.value) for pair_id in pairs.frame["pair_id"].gather(first_step))
    monkeypatch.undo()  # a run that stopped before its first checkpoint may simply be started again
    assert [m["step"] for m in metrics(run(config(scores, tmp_path / "run", max_steps=2)))] == [1, 2]


def test_run_folder_guards(scores, tmp_path):
    out = run(config(scores, tmp_path / "run", max_steps=1, loss="ipo", ipo_summed=True))
    record = run_folder.read_record(out)  # the loss as one value, read back by evaluate
    assert LossSpec(**record["loss_spec"]) == LossSpec("ipo", beta=0.1, ipo_summed=True)
    old = tmp_path / "old-run"
    old.mkdir()
    run_folder.write_json({k: v for k, v in record.items() if k != "loss_spec"}, old / run_folder.CONFIG)
    with pytest.raises(ValueError, match="names no loss_spec"):
        evaluate.run(evaluate.EvaluateConfig(data="held.jsonl", run=old, out=tmp_path / "eval"))
    out = run(config(scores, tmp_path / "run2", max_steps=1))
    with pytest.raises(FileExistsError, match="--resume"):
        run(config(scores, out, max_steps=1))
    with pytest.raises(ValueError, match=r"other settings than this command gives \(--lr 0.01 then, 0.5 now\)"):
        run(config(scores, out, max_steps=1, lr=0.5, resume=True))
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        run(config(scores, tmp_path / "fresh", resume=True))
    from typer.testing import CliRunner

    from re_po import cli
    policy = schema.read_scores(scores)[1]["ref_model"]
    result = CliRunner().invoke(cli.app, ["train", str(scores), "--out", str(out), "--policy", policy])
    assert result.exit_code == 2 and "already holds a run" in result.output and is_one_line_error(result.output)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    AutoModelForCausalLM.from_pretrained(out / run_folder.FINAL)
    AutoTokenizer.from_pretrained(out / run_folder.FINAL)
    shutil.rmtree(out)


@pytest.mark.parametrize("overrides, message", [
    ({"loss": "cdpo", "robust": True}, "baseline"),
    ({"loss": "dpo", "label_smoothing": 0.1}, "cdpo"),
    ({"loss": "dpo", "flip_rate": 0.1}, "rdpo"),
    ({"eta0": 0.5}, "eta0"),
    ({"grad_accum": 0}, "grad_accum"),
    ({"device": "tpu"}, "device"),
])
def test_config_refuses_bad_combinations(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(scores=tmp_path, out_dir=tmp_path, **overrides)


def test_lora_trains_adapters_and_saves_a_merged_policy(scores, tiny_llama, tmp_path):
    pytest.importorskip("peft")
    out = run(config(scores, tmp_path / "lora", lora=True, lora_r=4, max_steps=2))
    assert metrics(out)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # adapters start as a no-op
    start, final = load_file(tiny_llama / "model.safetensors"), weights(out)
    assert set(final) == set(start)  # plain transformers weights, no adapter keys
    assert torch.equal(final["model.embed_tokens.weight"], start["model.embed_tokens.weight"])  # not adapted
    assert not torch.equal(final["model.layers.0.self_attn.q_proj.weight"], start["model.layers.0.self_attn.q_proj.weight"])


def test_many_annotators_log_eta_quantiles(scores, tmp_path):
    """Past 16 annotators, metrics.jsonl carries η quantiles instead of one entry per annotator."""
    many = rewrite_cache(scores, tmp_path / "many",
                         edit_rows=lambda df: df.with_columns(annotator=pl.format("a{}", pl.col("row_id") % 20)))
    out = run(config(many, tmp_path / "run", robust=True, max_steps=2, **ALGORITHM_1))
    step = metrics(out)[-1]
    assert not any(name.startswith("repo/eta/") for name in step)
    assert step["repo/eta_quantile/min"] <= step["repo/eta_quantile/p50"] <= step["repo/eta_quantile/max"]
    assert run_folder.read_epoch(out, run_folder.ANNOTATORS)["annotator"].len() == 20


def unembedded(key: dict) -> dict:
    """The key of a cache whose rows lost their embeddings (doubled's)."""
    return {**key, "embed_layers": ""}


def doubled(df: pl.DataFrame) -> pl.DataFrame:
    """Each pair labelled twice: the second label by 'dave', in the reverse order every other pair."""
    second = df.with_columns(annotator=pl.lit("dave"), row_id=pl.col("row_id") + df.height)
    reverse = (pl.col("row_id") % 2) == 1
    swaps = [("chosen_ids", "rejected_ids"), ("ref_chosen_logps", "ref_rejected_logps"),
             ("chosen_len", "rejected_len")]
    second = second.with_columns(
        *[pl.when(reverse).then(pl.col(b)).otherwise(pl.col(a)).alias(a) for a, b in swaps],
        *[pl.when(reverse).then(pl.col(a)).otherwise(pl.col(b)).alias(b) for a, b in swaps])
    return pl.concat([df, second]).drop([c for c in df.columns if "_emb_" in c])


def test_a_pair_with_several_labels_is_forwarded_once_with_each_labels_logps_and_gradient(scores, tiny_llama,
                                                                                          tmp_path):
    """Rows of one pair in one batch share a forward; each row still gets the log-probs of the order it states,
    and the gradient equals that of forwarding every row on its own."""
    from transformers import AutoModelForCausalLM

    cache = rewrite_cache(scores, tmp_path / "doubled", edit_rows=doubled, edit_key=unembedded)
    pairs = PairTable.read(cache, with_reference=True)
    half = pairs.num_pairs // 2
    rows = [0, half, 1, half + 1, 2]  # pair 0 twice in one order, pair 1 twice in both orders, pair 2 once
    model = SequenceLogps(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32))
    forwarded = []

    def counted(*args):
        out = model(*args)
        forwarded.append(len(out[0]))
        return out

    weight = torch.tensor([0.3, -1.1, 0.7, 2.0, -0.4])

    def gradient(logps: list[PairLogps]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        chosen = torch.cat([one.policy_chosen_logps for one in logps])
        rejected = torch.cat([one.policy_rejected_logps for one in logps])
        model.zero_grad()
        (weight * (chosen - 0.5 * rejected)).sum().backward()
        return chosen.detach(), rejected.detach(), [p.grad.clone() for p in model.parameters()]

    together = gradient([pair_logps(counted, pairs, rows, pad_id=0)])
    assert forwarded == [2 * 3]  # three pairs: their two responses each
    alone = gradient([pair_logps(model, pairs, [row], pad_id=0) for row in rows])
    for mine, theirs in zip(together[:2], alone[:2]):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
    assert float(together[0][3]) == pytest.approx(float(together[1][2]), abs=1e-5)  # pair 1's labels: reversed
    for mine, theirs in zip(together[2], alone[2]):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("column", ["prompt_ids", "chosen_ids"])
def test_labels_sharing_a_pair_id_must_share_the_prompt_and_the_responses(scores, tmp_path, column):
    """They are forwarded as one pair: a second label whose prompt or response differs is refused, by row_id."""
    def altered(df: pl.DataFrame) -> pl.DataFrame:
        both = doubled(df)
        changed = pl.col("row_id") == df.height + 3  # the second label of the fourth pair
        return both.with_columns(pl.when(changed).then(pl.col(column).list.concat(pl.lit([7], pl.List(pl.Int32)))).otherwise(pl.col(column)))

    cache = rewrite_cache(scores, tmp_path / "altered", edit_rows=altered, edit_key=unembedded)
    with pytest.raises(NoiseInputError, match=f"row_id {NUM_PAIRS + 3} and row_id 3 share pair_id"):
        PairTable.read(cache, with_reference=True)


def test_the_e_step_uses_every_label_of_a_pair(scores, tmp_path):
    """A cache where each pair is labelled twice (doubled): the epoch pass's w equals the posterior by enumeration
    of the pair's true order given the policy's z and both labels (method.md §9), not Eq. 4 of the row alone."""
    cache = rewrite_cache(scores, tmp_path / "doubled", edit_rows=doubled, edit_key=unembedded)
    out = run(config(cache, tmp_path / "run", robust=True, lr=1e-3, max_steps=3, **ALGORITHM_1))
    posteriors = run_folder.read_epoch(out, run_folder.POSTERIORS).sort("row_id")
    eta = dict(run_folder.read_epoch(out, run_folder.ANNOTATORS).select("annotator", "eta").iter_rows())
    rows = posteriors.to_dicts()
    half = len(rows) // 2
    for i, row in enumerate(rows):
        other = rows[i + half] if i < half else rows[i - half]
        agree = (row["row_id"] % half) % 2 == 0  # the second label reverses the odd pairs
        # P(row's order true) ∝ σ(z)·η_row·(η_other if agree else 1 − η_other), against the reverse order
        p = 1 / (1 + math.exp(-row["z"]))
        e_row, e_other = eta[row["annotator"]], eta[other["annotator"]]
        mine = p * e_row * (e_other if agree else 1 - e_other)
        theirs = (1 - p) * (1 - e_row) * ((1 - e_other) if agree else e_other)
        assert row["w"] == pytest.approx(mine / (mine + theirs), rel=1e-9, abs=1e-12)



@pytest.mark.parametrize("rule", ["seeded", "prior"])
def test_seeded_training_starts_from_the_estimate_and_adds_its_evidence(scores, tmp_path, rule):
    """--eta-init estimate --e-step seeded|prior: epoch 0 holds the estimate (the columns of every epoch), η
    starts at its η, and the epoch pass's w is σ(z + prior + logit η) (seeded) or σ(prior + logit η) (prior)
    with prior the epoch-0 z: checked against a direct computation from the written tables."""
    out = run(config(scores, tmp_path / "run", robust=True, epochs=1, lr=1e-3, eta_init="estimate", e_step=rule,
                     eta_update="ema"))  # η in the epoch-1 table is the one the pass used
    zero = run_folder.read_epoch(out, run_folder.POSTERIORS, 0).sort("row_id")
    one = run_folder.read_epoch(out, run_folder.POSTERIORS, 1).sort("row_id")
    assert zero.columns == [c for c in one.columns if c != "first_visit_z"] and zero.height == NUM_PAIRS
    start = pl.read_parquet(out / run_folder.ETA_STEPS).filter(pl.col("event") == "init").sort("annotator")
    eta_zero = run_folder.read_epoch(out, run_folder.ANNOTATORS, 0).sort("annotator")
    assert start["eta"].to_list() == eta_zero["eta"].to_list()
    eta_one = dict(run_folder.read_epoch(out, run_folder.ANNOTATORS, 1).select("annotator", "eta").iter_rows())
    for before, after in zip(zero.iter_rows(named=True), one.iter_rows(named=True)):
        evidence = before["z"] + (after["z"] if rule == "seeded" else 0.0)
        eta = eta_one[after["annotator"]]
        expected = float(torch.sigmoid(torch.tensor(evidence + math.log(eta / (1 - eta)), dtype=torch.float64)))
        assert after["w"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_training_holds_the_eta_the_estimate_did_not_identify(scores, tmp_path):
    """Epoch 0's annotators table carries the estimate's eta_se and identified. With single labels on random text
    the probe is at chance: no η is identified, and neither the per-step EMA nor the epoch M-step moves any of
    them (both run here). Algorithm 1 (η from η0, no estimate) moves them on the same cache."""
    out = run(config(scores, tmp_path / "seeded", robust=True, epochs=1, lr=1e-3, eta_init="estimate",
                     e_step="seeded", eta_update="both"))
    zero = run_folder.read_epoch(out, run_folder.ANNOTATORS, 0).sort("annotator")
    assert {"eta_se", "identified"} <= set(zero.columns) and not zero["identified"].any()
    assert (zero["eta_se"].is_null() | (zero["eta_se"] > reliability.MAX_SE)).all()  # null: infinite
    steps = pl.read_parquet(out / run_folder.ETA_STEPS)
    assert steps["event"].unique().sort().to_list() == ["epoch_pass", "init", "step"]
    start = dict(zero.select("annotator", "eta").iter_rows())
    assert all(row["eta"] == start[row["annotator"]] for row in steps.iter_rows(named=True))
    paper = run(config(scores, tmp_path / "paper", robust=True, epochs=1, lr=1e-3,
                       **{**ALGORITHM_1, "eta_update": "both"}))
    assert (pl.read_parquet(paper / run_folder.ETA_STEPS)["eta"] != 0.9).any()


def test_the_estimate_options_need_robust(scores, tmp_path):
    with pytest.raises(ValueError, match="add --robust"):
        config(scores, tmp_path / "run", eta_init="estimate")


def test_robust_defaults_to_the_estimate_and_a_plain_run_to_nothing_of_it(scores, tmp_path):
    """Unset, η's start and the E-step are ROBUST_DEFAULTS under --robust (the estimate first, as epoch 0) and
    Algorithm 1's values without it, which never estimate; Algorithm 1 under --robust is asked for by name."""
    robust = config(scores, tmp_path / "a", robust=True)
    assert {name: getattr(robust, name) for name in ROBUST_DEFAULTS} == ROBUST_DEFAULTS
    assert train.uses_estimate(robust)
    plain = config(scores, tmp_path / "b")
    assert {name: getattr(plain, name) for name in ALGORITHM_1} == ALGORITHM_1
    assert not train.uses_estimate(plain) and not train.uses_estimate(config(scores, tmp_path / "c", robust=True,
                                                                             **ALGORITHM_1))


class _WritesAMarker:
    """Unpickling this creates `path`: the stand-in for code a crafted checkpoint file would run."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl",
                                     "scheduler.bin"])
def test_resume_never_unpickles_a_crafted_checkpoint_file(scores, tmp_path, planted):
    """A pickle planted in the checkpoint (where accelerate keeps registered objects, the optimizer, the RNG) is
    refused before it is read (re-po registers nothing and keeps its own state as JSON + safetensors), refused by a
    weights-only load (the RNG file too: accelerate alone would skip it and resume with other random states), or never
    read; it never runs."""
    import pickle

    out = run(config(scores, tmp_path / "run", robust=True, max_steps=2, **ALGORITHM_1))
    step = checkpoint.latest(out / run_folder.CHECKPOINTS)
    assert {checkpoint.STATE_JSON, checkpoint.STATE_TENSORS} <= {p.name for p in step.iterdir()}
    assert not list(step.glob("custom_checkpoint_*"))
    marker = tmp_path / "ran"
    (step / planted).write_bytes(pickle.dumps(_WritesAMarker(marker)))
    resume = config(scores, out, robust=True, max_steps=2, resume=True, **ALGORITHM_1)
    refused = {"optimizer.bin": (pickle.UnpicklingError, "Weights only load failed"),  # read weights-only
               # read weights-only too, before accelerate's load_state, which would skip it with an info log
               "random_states_0.pkl": (pickle.UnpicklingError, "Weights only load failed"),
               "custom_checkpoint_0.pkl": (RuntimeError, "custom checkpoints")}       # nothing is registered
    # each refusal is one line naming the checkpoint, with the loader's own error as its cause
    if planted in refused:
        with pytest.raises(checkpoint.CheckpointError, match=f"checkpoint {step}.*{refused[planted][1]}") as err:
            run(resume)
        assert isinstance(err.value.__cause__, refused[planted][0]) and "\n" not in str(err.value)
    else:  # never read (no scheduler is prepared)
        run(resume)
    assert not marker.exists()


def test_a_moved_run_folder_resumes_and_its_config_names_the_new_place(scores, tmp_path):
    first = run(config(scores, tmp_path / "run", max_steps=2, save_every=1))
    moved = first.rename(tmp_path / "elsewhere")
    run(config(scores, moved, max_steps=2, save_every=1, resume=True))
    assert json.loads((moved / run_folder.CONFIG).read_text())["config"]["out_dir"] == str(moved)
    with pytest.raises(ValueError, match=r"\(--lr 0.01 then, 0.5 now\)"):   # a real setting still counts
        run(config(scores, moved, max_steps=2, save_every=1, resume=True, lr=0.5))


def test_robust_on_a_cache_without_embeddings_says_how_to_go_on(scores, tmp_path):
    bare = rewrite_cache(scores, tmp_path / "bare", edit_rows=lambda df: df.drop([c for c in df.columns if "_emb_" in c]),
                         edit_key=lambda key: {**key, "embed_layers": ""})
    with pytest.raises(NoiseInputError, match=r"without embeddings(.|\n)*probe = false(.|\n)*--eta-init fixed"):
        run(config(bare, tmp_path / "run", robust=True, max_steps=1))


def test_a_second_run_in_one_process_may_ask_for_other_accelerate_settings():
    """train.forget_accelerator_settings relies on accelerate's private AcceleratorState._reset_state: if accelerate
    renames or changes it, this fails here rather than in the middle of a demo."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    Accelerator(cpu=True, mixed_precision="no")
    group = PartialState()._shared_state.copy()
    train.forget_accelerator_settings()
    assert AcceleratorState._shared_state == {} and PartialState()._shared_state == group  # the group stays
    assert Accelerator(cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
    train.forget_accelerator_settings()


def test_step_metrics_reach_tensorboard_through_accelerate_and_the_tracker_is_a_choice(scores, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = run(config(scores, tmp_path / "run", max_steps=3, robust=True, report_to="tensorboard"))
    events = EventAccumulator(str(out / train.TENSORBOARD)).Reload()
    logged = metrics(out)
    for name in ("loss", "rewards/accuracies", "rewards/margins"):  # TRL's names, step by step as in metrics.jsonl
        assert [(e.step, e.value) for e in events.Scalars(name)] == [
            (m["step"], pytest.approx(m[name], rel=1e-6)) for m in logged]
    assert not (run(config(scores, tmp_path / "plain", max_steps=1, report_to="none")) / train.TENSORBOARD).exists()
    find_spec = launching.importlib.util.find_spec
    monkeypatch.setattr(launching.importlib.util, "find_spec", lambda name: None if name == "wandb" else find_spec(name))
    with pytest.raises(ModuleNotFoundError, match="pip install wandb"):
        run(config(scores, tmp_path / "wandb", max_steps=1, report_to="wandb"))


def test_evaluation_during_training_logs_what_repo_evaluate_measures(scores, tmp_path):
    """--eval-data HELDOUT --eval-every 2: eval/* at steps 2, 4 (and the last), from the reference's scores of
    the held-out pairs and the policy of that step; at the end, eval/truth_accuracy is evaluate's accuracy after."""
    rng = random.Random(1)
    words = [w for w in WORDS if w.isalpha()]
    rows = [{"prompt": " ".join(rng.choices(words, k=3)), "chosen": " ".join(rng.choices(words, k=4)),
             "rejected": " ".join(rng.choices(words, k=5)), "is_flipped": i % 4 == 0} for i in range(10)]
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run(config(scores, tmp_path / "run", max_steps=5, eval_data=str(held), eval_every=2))
    logged = metrics(out)
    assert [m["step"] for m in logged if "eval/loss" in m] == [2, 4, 5]
    assert {"eval/rewards/accuracies", "eval/rewards/margins", "eval/truth_accuracy"} <= set(logged[-1])
    result = json.loads(evaluate.run(evaluate.EvaluateConfig(data=str(held), run=out, out=tmp_path / "ev")).read_text())
    assert logged[-1]["eval/truth_accuracy"] == pytest.approx(result["reward_accuracy_after"])
    with pytest.raises(ValueError, match="--eval-every needs --eval-data"):
        config(scores, tmp_path / "x", eval_every=2)


def length_judge(prompt, response: str) -> float:
    return float(len(response))


def test_generation_during_training_logs_win_rate_reward_and_kl(scores, tmp_path):
    """--eval-judge: at each evaluation the policy answers the held-out prompts; against the reference's answers
    (same seeds) a policy that moved writes other texts (KL > 0), logged as eval/win_rate, eval/reward, eval/kl."""
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": p, "chosen": "yes", "rejected": "no"}) + "\n"
                            for p in ("the cat", "what is it", "hello", "a dog")))
    out = run(config(scores, tmp_path / "run", max_steps=4, eval_data=str(held), eval_every=2,
                     eval_judge="test_train:length_judge", eval_prompts=3, eval_max_new_tokens=5))
    logged = [m for m in metrics(out) if "eval/win_rate" in m]
    assert [m["step"] for m in logged] == [2, 4]
    for m in logged:
        assert 0 <= m["eval/win_rate"] <= 1 and 1 <= m["eval/length"] <= 5 and m["eval/reward"] >= 0
    assert logged[-1]["eval/kl"] != 0  # lr 1e-2 moved the policy: its samples have another likelihood
    with pytest.raises(ValueError, match="--eval-judge needs --eval-data"):
        config(scores, tmp_path / "x", eval_judge="test_train:length_judge")
