"""
The package's algorithms in one place: each one's class, zoo name, the action spaces it trains on and the
SB3 algorithms it is compared with. The algorithms read their action spaces from here; the RL Zoo plugin
(:mod:`sb3_pgext.zoo`), the benchmark suite (:mod:`sb3_pgext.suite`) and the tests read the rest. Adding an
algorithm means adding it here.

The module imports no algorithm (each class is imported when :attr:`Algorithm.algo_class` is first read), so the
algorithms import their action spaces from it without an import cycle.
"""

import importlib
from dataclasses import dataclass

from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm

#: The action spaces of SB3's PPO, which the PPO family keeps (PPOKL; SB3's PPO checks them)
PPO_ACTION_SPACES: tuple[type[spaces.Space], ...] = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
#: The finite action sets, whose actions CVPG's exact ("expected") control variate sums over
FINITE_ACTION_SPACES: tuple[type[spaces.Space], ...] = (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
#: CVPG's: PPO's (Box, with the Taylor or reparameterization control variate; the finite ones with "expected")
CVPG_ACTION_SPACES: tuple[type[spaces.Space], ...] = (spaces.Box, *FINITE_ACTION_SPACES)
#: OffPAC's: SAC's Box, and Discrete (DQN's)
OFFPAC_ACTION_SPACES: tuple[type[spaces.Space], ...] = (spaces.Discrete, spaces.Box)


@dataclass(frozen=True)
class Algorithm:
    """
    One of the package's algorithms.

    :param name: its name in the RL Zoo (``--algo``) and the stem of its ``hyperparams/<name>.yml``
    :param class_path: where its class is, ``"module:ClassName"``
    :param action_spaces: the action space classes it trains on
    :param peers: the zoo names of the SB3 algorithms it is compared with, in order of preference
        (the benchmark suite takes the first that runs on an env)
    """

    name: str
    class_path: str
    action_spaces: tuple[type[spaces.Space], ...]
    peers: tuple[str, ...]

    @property
    def algo_class(self) -> type[BaseAlgorithm]:
        """The class (imported on first use)."""
        module, _, class_name = self.class_path.partition(":")
        return getattr(importlib.import_module(module), class_name)

    @property
    def display_name(self) -> str:
        """The name the reports print: the class's."""
        return self.class_path.partition(":")[2]


ALGORITHMS: dict[str, Algorithm] = {
    algorithm.name: algorithm
    for algorithm in (
        Algorithm("ppokl", "sb3_pgext.ppokl:PPOKL", PPO_ACTION_SPACES, peers=("ppo",)),
        Algorithm("cvpg", "sb3_pgext.cvpg:CVPG", CVPG_ACTION_SPACES, peers=("ppo",)),
        Algorithm("offpac", "sb3_pgext.offpac:OffPAC", OFFPAC_ACTION_SPACES, peers=("sac", "dqn")),
    )
}


def check_action_space(algorithm: str, action_space: spaces.Space) -> None:
    """
    A ValueError naming the algorithm's supported action spaces if ``action_space`` is not one of them.

    :param algorithm: the algorithm's zoo name (a key of :data:`ALGORITHMS`)
    :param action_space: the env's action space
    """
    entry = ALGORITHMS[algorithm]
    if not isinstance(action_space, entry.action_spaces):
        names = [space.__name__ for space in entry.action_spaces]
        allowed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        raise ValueError(  # noqa: TRY004  (a bad env is a bad value, as SB3's own checks of the env say)
            f"{entry.display_name} supports {allowed} action spaces, not {type(action_space).__name__} "
            f"(env action_space={action_space})"
        )
