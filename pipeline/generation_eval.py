"""What the policy writes, measured during training: eval/win_rate, eval/reward, eval/kl (the reward–KL path of a
run, as TRL's WinRateCallback logs a win rate; `repo generate` measures the final policy the same way).

No file IO: the caller loads the models and the judge. At construction the reference draws one sample per prompt
and the judge scores it, once; each call then draws the policy's samples with the same seeds (common random
numbers: a policy still equal to the reference writes the same texts and wins exactly ½), scores them under both
models and judges them.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from re_po.pipeline import generation_metrics
from re_po.pipeline.choices import Sampling
from re_po.pipeline.logprobs import summed_logps
from re_po.pipeline.sampling import sample_responses

BATCH = 32  # prompts per generate call


class GenerationEval:
    def __init__(self, reference: torch.nn.Module, prompts: list, prompt_ids: list[list[int]],
                 judge: Callable[[list, list[str]], list[float]], decode: Callable[[list[list[int]]], list[str]],
                 sampling: Sampling, seed: int, end_ids: set[int], pad_id: int):
        self.reference, self.prompts, self.prompt_ids, self.judge, self.decode = reference, prompts, prompt_ids, judge, decode
        self.sampling, self.seed, self.end_ids, self.pad_id = sampling, seed, end_ids, pad_id
        self.reference_responses = self._draw(reference)
        self.reference_reward = self._grid(self.judge(self._repeat(prompts), self.decode(self.reference_responses)))
        self.reference_length = self._grid([len(ids) for ids in self.reference_responses])

    def __call__(self, policy: torch.nn.Module) -> dict[str, float]:
        responses = self._draw(policy)
        prompt_ids = self._repeat(self.prompt_ids)
        comparison = generation_metrics.compare(
            self._grid(self.judge(self._repeat(self.prompts), self.decode(responses))), self.reference_reward,
            self._grid(summed_logps(policy, prompt_ids, responses, self.pad_id)),
            self._grid(summed_logps(self.reference, prompt_ids, responses, self.pad_id)),
            self._grid([len(ids) for ids in responses]), self.reference_length, seed=self.seed)
        return {"eval/win_rate": comparison.win_rate, "eval/reward": comparison.reward_policy,
                "eval/kl": comparison.kl, "eval/length": comparison.length_policy}

    def _draw(self, model: torch.nn.Module) -> list[list[int]]:
        """Every prompt's samples, flat (prompt-major), each batch with its own seed."""
        drawn = []
        for b, start in enumerate(range(0, len(self.prompt_ids), BATCH)):
            for samples in sample_responses(model, self.prompt_ids[start:start + BATCH], self.sampling,
                                            self.seed + b, self.end_ids, self.pad_id):
                drawn += samples
        return drawn

    def _repeat(self, values: list) -> list:
        return [value for value in values for _ in range(self.sampling.num_samples)]

    def _grid(self, values) -> np.ndarray:
        return np.asarray(values, dtype=float).reshape(len(self.prompt_ids), self.sampling.num_samples)
