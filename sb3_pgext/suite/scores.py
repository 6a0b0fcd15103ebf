"""
Normalisation ranges of the benchmark suites: score 0 is a uniformly random agent, score 1 the RL Zoo's
reference score for the env.

- ``random``: mean return of uniformly random actions, measured for this package (gymnasium 1.4,
  episodes seeded 0..n−1, action space seeded 0; 100 episodes, HalfCheetah-v5 20).
- ``reference``: the best score among the SB3 peers (PPO, A2C, SAC, DQN) in rl-baselines3-zoo's
  ``benchmark.md`` (one trained agent each, deterministic evaluation). The zoo lists older versions
  of some envs (LunarLander-v2, HalfCheetah-v3, Hopper-v3); their scores stand in for v3 / v5.

rl_zoo3's own table (``rl_zoo3/plots/score_normalization.py``) covers only PyBullet envs,
LunarLanderContinuous and BipedalWalker, hence this one.
"""

from typing import NamedTuple


class ScoreRange(NamedTuple):
    random: float
    reference: float
    reference_source: str


SCORE_RANGES: dict[str, ScoreRange] = {
    "CartPole-v1": ScoreRange(23.7, 500.0, "PPO 100k / A2C / DQN"),
    "Acrobot-v1": ScoreRange(-497.1, -73.5, "PPO 1M"),
    "Pendulum-v1": ScoreRange(-1207.6, -157.0, "SAC 20k"),
    "LunarLander-v3": ScoreRange(-192.0, 242.1, "PPO 1M (v2)"),
    "LunarLanderContinuous-v3": ScoreRange(-212.7, 270.9, "PPO 1M (v2)"),
    "HalfCheetah-v5": ScoreRange(-260.8, 9535.5, "SAC 1M (v3)"),
    "Hopper-v5": ScoreRange(16.7, 2410.4, "PPO 1M (v3)"),
}


def normalize(score: float, env_id: str) -> float:
    """(score − random) / (reference − random) for ``env_id``; KeyError names the envs that have a range."""
    if env_id not in SCORE_RANGES:
        raise KeyError(f"no normalisation range for {env_id}; known: {sorted(SCORE_RANGES)}")
    low, high, _ = SCORE_RANGES[env_id]
    return (score - low) / (high - low)
