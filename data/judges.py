"""Judges: the reward `repo generate` (and training's generation metrics) give each response.

`load_judge(spec)` returns a Judge, called with the prompts (as the data gives them: text or message lists)
and one response text per prompt, returning one float each. `spec` is either
- `module:function`: a Python callable of yours (or `re_po.data.judges:vader_compound`, the sentiment
  benchmark's true reward), called as function(prompt, response) -> float on exactly the texts generated. The
  module is imported as `python -m` would, the working directory first: it is code you name, never code read
  from a data file.
- a transformers sequence-classification model, a hub id in the local cache or a folder, loaded from
  safetensors only (no pickle is ever unpickled) and run in batches: its logit with one label, the log-odds of
  label 1 against label 0 with two (e.g. a sentiment classifier's positive class). Conversational prompts go
  through its tokenizer's chat template; plain ones are followed by the response as text.
"""
from __future__ import annotations

import functools
import importlib
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

from re_po.data import models
from re_po.data.pairs import PairValue

Judge = Callable[[list[PairValue], list[str]], list[float]]
CALLABLE_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class JudgeError(ValueError):
    """A judge that cannot be loaded, or a reward that is not a finite number."""


def load_judge(spec: str, device: str = "auto", batch_size: int = 16) -> Judge:
    """The judge `spec` names (see the module docstring)."""
    if CALLABLE_SPEC.fullmatch(spec) and not Path(spec).exists():
        return _callable_judge(spec)
    return _reward_model_judge(spec, device, batch_size)


def _callable_judge(spec: str) -> Judge:
    module_name, name = spec.split(":")
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:  # as `python -m`: a module beside the user's project, not only installed ones
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise JudgeError(f"--judge {spec}: cannot import {module_name!r} ({err}); name an importable module "
                         "(a .py file in the working directory, or an installed package)") from err
    finally:
        if added:
            sys.path.remove(cwd)
    function = getattr(module, name, None)
    if not callable(function):
        raise JudgeError(f"--judge {spec}: {module_name} has no callable {name!r}")

    def judge(prompts: list[PairValue], responses: list[str]) -> list[float]:
        rewards = []
        for prompt, response in zip(prompts, responses):
            try:
                value = function(prompt, response)
            except Exception as err:  # the user's code: say which judge and which response, in one line
                raise JudgeError(f"--judge {spec} raised {type(err).__name__}: {err} (on the response "
                                 f"{response[:80]!r}); REPO_DEBUG=1 shows the traceback") from err
            rewards.append(_finite(value, spec, response))
        return rewards

    return judge


def _reward_model_judge(spec: str, device: str, batch_size: int) -> Judge:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = models.resolve_model(spec)
    if not any(folder.glob("*.safetensors")):
        raise JudgeError(f"--judge {spec}: {folder} holds no .safetensors weights; re-po loads reward models from "
                         "safetensors only (save it with save_pretrained(..., safe_serialization=True))")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).to(device).eval()
    except (OSError, ValueError) as err:
        raise JudgeError(f"--judge {spec}: {folder} is not a loadable sequence-classification model: {err}") from err
    labels = model.config.num_labels
    if labels not in (1, 2):
        raise JudgeError(f"--judge {spec}: a reward model has one output (or two: the log-odds of label 1 is "
                         f"taken), this one has {labels}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:  # the classifier reads the last token that is not padding
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"

    def text_of(prompt: PairValue, response: str) -> str:
        if isinstance(prompt, list) and tokenizer.chat_template is not None:
            return tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)
        plain = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        return plain + response

    @torch.no_grad()
    def judge(prompts: list[PairValue], responses: list[str]) -> list[float]:
        rewards = []
        for start in range(0, len(responses), batch_size):
            texts = [text_of(p, r) for p, r in zip(prompts[start:start + batch_size],
                                                   responses[start:start + batch_size])]
            batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True).to(device)
            logits = model(**batch).logits.double()
            values = logits[:, 0] if labels == 1 else logits[:, 1] - logits[:, 0]
            rewards += [_finite(v, spec, r) for v, r in zip(values.tolist(), responses[start:start + batch_size])]
        return rewards

    return judge


def _finite(value: object, spec: str, response: str) -> float:
    try:
        reward = float(value)
    except (TypeError, ValueError):
        reward = math.nan
    if not math.isfinite(reward):
        raise JudgeError(f"--judge {spec} gave {value!r} for the response {response[:80]!r}; a reward is a finite "
                         "number")
    return reward


def vader_compound(prompt: PairValue, response: str) -> float:
    """VADER's compound sentiment of the response, in [−1, 1] (Hutto & Gilbert 2014: a lexicon and rules
    validated against human ratings): the true reward of the bundled sentiment benchmark."""
    return _vader().polarity_scores(response)["compound"]


@functools.cache
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as err:
        raise JudgeError("the VADER judge needs the vaderSentiment package: pip install vaderSentiment==3.3.2"
                         ) from err
    return SentimentIntensityAnalyzer()  # reads its lexicon once
