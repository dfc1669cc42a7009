"""Peak memory of the taken-token log-probs with a large vocabulary: the whole logits tensor at once (before) against
pipeline/logprobs.taken_token_logps' chunks recomputed in backward (after), side by side, and their agreement.

A random-init Llama (vocabulary 151,936 as Qwen2.5's, hidden 896, 2 layers) scores one sequence of 16 prompt and
`--response-tokens` response tokens with grad, then backprops: what one training micro-batch does. Each variant runs
in a fresh process; its peak is the rise of the process's maximum resident memory over what it held just before
the call (the model, its gradient buffers and the inputs are in place by then).

    .venv/bin/python bench/logprob_memory.py [--response-tokens 1000 3000]
"""
import argparse
import json
import os
import resource
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(budget: int | None, response_tokens: int, vocab: int) -> dict:
    """In this process: one forward + backward of response_logps; the peak rise in RSS, the logps, a gradient."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from re_po.pipeline import logprobs

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=896, intermediate_size=2432, num_hidden_layers=2,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096)
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, vocab, (16,), generator=generator).tolist()
    response = torch.randint(0, vocab, (response_tokens,), generator=generator).tolist()
    packed = logprobs.pad([prompt], [response], pad_id=0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # gradient buffers in place before the measured call
    if budget is not None:
        logprobs.LOGIT_BUDGET = budget
    before = _rss_bytes()
    logps, _ = logprobs.response_logps(model, packed)
    logps.sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    head_grad = model.lm_head.weight.grad
    return {"budget": logprobs.LOGIT_BUDGET, "peak_rise_mib": (peak - before) / 2**20, "logp": float(logps[0].detach()),
            "head_grad_norm": float(head_grad.norm()), "head_grad_sample": head_grad[:64, :8].flatten().tolist()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--response-tokens", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant and print its JSON
    args = parser.parse_args()
    if args.one is not None:
        budget = None if args.one == "default" else int(args.one)
        print(json.dumps(measure(budget, args.response_tokens[0], args.vocab)))
        return
    print(f"vocabulary {args.vocab}, one sequence, forward + backward (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores); the head's own gradient is {args.vocab * 896 * 4 / 2**20:.0f} MiB")
    for tokens in args.response_tokens:
        runs = {}
        for name, budget in (("before: all logits at once", str(1 << 62)), ("after: taken_token_logps", "default")):
            out = subprocess.run([sys.executable, __file__, "--one", budget, "--response-tokens", str(tokens),
                                  "--vocab", str(args.vocab)], capture_output=True, text=True, check=True,
                                 cwd=os.path.dirname(HERE), env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)})
            runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
        before, after = runs.values()
        print(f"{tokens} response tokens:")
        for name, run in runs.items():
            print(f"  {name:28s} peak rise {run['peak_rise_mib']:7.0f} MiB")
        grad_difference = max(abs(a - b) for a, b in zip(before["head_grad_sample"], after["head_grad_sample"]))
        print(f"  after / before: {after['peak_rise_mib'] / before['peak_rise_mib']:.2f}; logp {before['logp']:.4f} vs "
              f"{after['logp']:.4f}; head gradient norm {before['head_grad_norm']:.6f} vs {after['head_grad_norm']:.6f}, "
              f"max |diff| on a sample {grad_difference:.1e}")

if __name__ == "__main__":
    main()
