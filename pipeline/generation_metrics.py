"""How a policy's generations compare with the reference's: win rate, rewards, KL, lengths.

Pure numpy: reads and writes nothing. Inputs are (P, S) arrays: S samples for each of P prompts, sample s of the
policy facing sample s of the reference for the same prompt (drawn with the same seed, pipeline/sampling.py).

- Win rate: the share of those faces the policy's response wins under the judge's reward, a tie counting ½
  (AlpacaEval's and TRL's convention). Its 95% interval is a percentile bootstrap over prompts (samples of one
  prompt are not independent of each other, prompts are).
- KL(π‖π_ref) per sequence: the mean of log π(y|x) − log π_ref(y|x) over the policy's own samples y ~ π, the
  Monte-Carlo estimate of E_x KL(π(·|x) ‖ π_ref(·|x)) (the DPO paper's x-axis). It is unbiased when the samples
  come from π itself (temperature 1, top-p 1); otherwise it is the mean log-ratio on the samples drawn.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 2000  # bootstrap draws: the interval's ends move by about 0.002 between seeds at this count
LEVEL = 0.95


@dataclass(frozen=True)
class Comparison:
    """The policy against the reference on P prompts × S samples each."""

    prompts: int
    samples_per_prompt: int
    win_rate: float | None  # None (and the other reward figures) without a judge
    win_rate_ci: tuple[float, float] | None
    ties: float | None  # share of faces with equal rewards
    reward_policy: float | None  # mean judge reward of each side
    reward_reference: float | None
    kl: float  # mean log π(y) − log π_ref(y) over the policy's samples, nats per sequence
    kl_se: float  # its standard error over prompts
    length_policy: float  # mean response tokens of each side
    length_reference: float

    def as_dict(self) -> dict:
        record = asdict(self)
        record["win_rate_ci"] = None if self.win_rate_ci is None else list(self.win_rate_ci)
        return record


def outcomes(policy_reward: np.ndarray, reference_reward: np.ndarray) -> np.ndarray:
    """(P, S) 1 where the policy's sample wins, 0 where it loses, ½ on a tie."""
    policy_reward, reference_reward = np.asarray(policy_reward, float), np.asarray(reference_reward, float)
    if policy_reward.shape != reference_reward.shape or policy_reward.ndim != 2:
        raise ValueError(f"rewards must be two (P, S) arrays of one shape, got {policy_reward.shape} and "
                         f"{reference_reward.shape}")
    if not (np.isfinite(policy_reward).all() and np.isfinite(reference_reward).all()):
        raise ValueError("rewards must be finite")
    return np.sign(policy_reward - reference_reward) * 0.5 + 0.5


def bootstrap_interval(per_prompt: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of `per_prompt` (P,) over prompts drawn with replacement."""
    per_prompt = np.asarray(per_prompt, float)
    draws = np.random.default_rng(seed).integers(0, per_prompt.size, size=(resamples, per_prompt.size))
    means = per_prompt[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def win_rate(reward: np.ndarray, other_reward: np.ndarray, seed: int = 0) -> tuple[float, tuple[float, float], float]:
    """The win rate of one side's samples against the other's (P, S) faces, its bootstrap interval, and the share of
    ties."""
    won = outcomes(reward, other_reward)
    return float(won.mean()), bootstrap_interval(won.mean(axis=1), seed=seed), float((won == 0.5).mean())


def compare(policy_reward: np.ndarray | None, reference_reward: np.ndarray | None,
            policy_logps_of_policy: np.ndarray, ref_logps_of_policy: np.ndarray, policy_length: np.ndarray,
            reference_length: np.ndarray, seed: int = 0) -> Comparison:
    """Win rate (with its bootstrap interval), mean rewards, KL and lengths; every argument (P, S), the rewards None
    where there is no judge.

    policy_logps_of_policy, ref_logps_of_policy: log π(y|x) and log π_ref(y|x) of the policy's samples y."""
    log_ratio = np.asarray(policy_logps_of_policy, float) - np.asarray(ref_logps_of_policy, float)
    prompts, samples = log_ratio.shape
    kl_per_prompt = log_ratio.mean(axis=1)
    kl_se = float(kl_per_prompt.std(ddof=1) / np.sqrt(prompts)) if prompts > 1 else float("nan")
    judged = {}
    if policy_reward is not None and reference_reward is not None:
        rate, interval, ties = win_rate(policy_reward, reference_reward, seed)
        judged = dict(win_rate=rate, win_rate_ci=interval, ties=ties, reward_policy=float(np.mean(policy_reward)),
                      reward_reference=float(np.mean(reference_reward)))
    return Comparison(
        prompts=prompts, samples_per_prompt=samples, **{**dict.fromkeys(JUDGED), **judged},
        kl=float(log_ratio.mean()), kl_se=kl_se,
        length_policy=float(np.mean(policy_length)), length_reference=float(np.mean(reference_length)))


JUDGED = ("win_rate", "win_rate_ci", "ties", "reward_policy", "reward_reference")  # None without a judge
