"""Turn one normalized pair into the token ids that are scored and trained on, once.

Reads and writes nothing; called by the score stage for every row of data.pairs.read_pairs' table.

- Conversational (message lists): the prompt is the chat template of the prompt messages with the
  generation prompt; a response's ids are the tokens of template(prompt + response) beyond the prompt's,
  so the end-of-turn tokens are included as the template writes them. The rendered text is tokenized
  without adding special tokens: a template that writes BOS is not given a second one.
- Plain text (no template, as TRL does): the prompt with the special tokens the tokenizer puts in front
  (BOS); a response without special tokens, then EOS.
Prompt and response ids are kept apart and only ever concatenated as ids, never re-tokenized as one string.
Truncation: the prompt loses tokens from the left (its end holds the question and the generation
prompt), then each response from the right so that prompt + response fits max_length.
"""
import hashlib
import json
from dataclasses import dataclass

from re_po.data.pairs import BadRowError, Message, PairValue


@dataclass(frozen=True)
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]  # response tokens only, EOS / end of turn included
    rejected_ids: list[int]
    truncated: bool  # any of the three was cut to max_prompt_length / max_length


def tokenize_pair(tokenizer, prompt: PairValue, chosen: PairValue, rejected: PairValue,
                  max_length: int | None = None, max_prompt_length: int | None = None) -> TokenizedPair:
    """Token ids of one pair; raises BadRowError (field "chosen"/"rejected") for an empty response, also one
    emptied by truncation, and (field "rejected") for a response with the same tokens as chosen, also after
    truncation: such a pair states no preference. Fields come without file and row: PairsRead.locate adds them."""
    _check_limits(max_length, max_prompt_length)
    if all(isinstance(value, str) for value in (prompt, chosen, rejected)):
        prompt_ids = tokenize_prompt(tokenizer, prompt)
        responses = [_plain_response_ids(tokenizer, text, name)
                     for text, name in ((chosen, "chosen"), (rejected, "rejected"))]
    elif all(isinstance(value, list) for value in (prompt, chosen, rejected)):
        prompt_ids = tokenize_prompt(tokenizer, prompt)
        responses = [_chat_response_ids(tokenizer, prompt, prompt_ids, messages, name)
                     for messages, name in ((chosen, "chosen"), (rejected, "rejected"))]
    else:
        raise BadRowError("prompt, chosen and rejected must be all strings or all message lists")
    identical_in_full = responses[0] == responses[1]
    truncated = False
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids, truncated = prompt_ids[len(prompt_ids) - max_prompt_length:], True
    if max_length is not None:
        room = max(max_length - len(prompt_ids), 0)
        truncated = truncated or any(len(ids) > room for ids in responses)
        responses = [ids[:room] for ids in responses]
    if not prompt_ids:  # nothing precedes the response: its first token would have no log-prob
        raise BadRowError("empty prompt: no token precedes the response (the tokenizer adds no BOS)", "prompt")
    for ids, name in zip(responses, ("chosen", "rejected")):
        if not ids:
            raise BadRowError(f"empty response after truncation (prompt {len(prompt_ids)} tokens, "
                              f"max_length {max_length})", name)
    if responses[0] == responses[1]:
        raise BadRowError("the same tokens as chosen: the pair states no preference" if identical_in_full else
                          f"the same tokens as chosen after truncation to max_length {max_length} (the responses "
                          "differ only past it): the pair states no preference", "rejected")
    return TokenizedPair(prompt_ids, responses[0], responses[1], truncated)


def tokenize_prompt(tokenizer, prompt: PairValue) -> list[int]:
    """A prompt's ids, as a response follows them: plain text with the tokenizer's leading special tokens
    (BOS), or a message list through the chat template with its generation prompt."""
    if isinstance(prompt, str):
        return _plain_prompt_ids(tokenizer, prompt)
    return _encode(tokenizer, _render(tokenizer, prompt, add_generation_prompt=True))


def tokenizer_fingerprint(tokenizer) -> dict[str, str]:
    """sha256 of what decides the ids (vocab, merges, normalization, special tokens); the template apart."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # tokenizers-backed: its JSON holds vocab, merges, pre/post-processing, specials
        spec = json.loads(backend.to_str())
        for runtime_setting in ("truncation", "padding"):  # set per call, they do not change the ids we take
            spec.pop(runtime_setting, None)
    else:  # a Python (sentencepiece) tokenizer: its vocabulary and the switches that add BOS/EOS
        spec = {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items()),
                "add_bos_token": getattr(tokenizer, "add_bos_token", None),
                "add_eos_token": getattr(tokenizer, "add_eos_token", None)}
    spec["special_token_ids"] = {name: getattr(tokenizer, name) for name in
                                 ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")}
    template = tokenizer.chat_template
    return {"tokenizer_sha": _sha(spec), "chat_template_sha": "none" if template is None else _sha(template)}


def _check_limits(max_length: int | None, max_prompt_length: int | None) -> None:
    for name, value in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive number of tokens, not {value}")
    if max_length is not None and max_prompt_length is not None and max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length}), "
                         "or no room is left for the responses")


def _encode(tokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]


def _plain_prompt_ids(tokenizer, prompt: str) -> list[int]:
    ids = _encode(tokenizer, prompt, add_special_tokens=True)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if eos is not None and ids[-1:] == [eos] and _encode(tokenizer, prompt)[-1:] != [eos]:
        ids = ids[:-1]  # a tokenizer appending EOS to every text (add_eos_token): the response follows here
    if bos is not None and ids[:2] == [bos, bos]:
        ids = ids[1:]  # the prompt text began with the BOS string itself: one BOS, not two
    return ids


def _plain_response_ids(tokenizer, text: str, name: str) -> list[int]:
    if not text:
        raise BadRowError("empty response", name)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; plain-text responses end with one")
    ids = _encode(tokenizer, text)
    return ids if ids[-1:] == [eos] else ids + [eos]


def _render(tokenizer, messages: list[Message], add_generation_prompt: bool) -> str:
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template; conversational data needs one")
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _chat_response_ids(tokenizer, prompt: list[Message], prompt_ids: list[int], response: list[Message],
                       name: str) -> list[int]:
    if not response:
        raise BadRowError("empty response", name)
    full_ids = _encode(tokenizer, _render(tokenizer, prompt + response, add_generation_prompt=False))
    if full_ids[:len(prompt_ids)] != prompt_ids:
        raise BadRowError("the chat template does not render prompt + response as the prompt (with its "
                          "generation prompt) followed by more tokens; the response cannot be split off",
                          name)
    return full_ids[len(prompt_ids):]


def _sha(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
