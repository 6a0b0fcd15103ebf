"""
The package's algorithms in one place: each one's class, zoo name, the action spaces it trains on and the
SB3 algorithms it is compared with. The RL Zoo plugin (:mod:`sb3_pgext.zoo`), the benchmark suite
(:mod:`sb3_pgext.suite`) and the tests read it; adding an algorithm means adding it here.
"""

from dataclasses import dataclass

from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_pgext.cvpg import CVPG
from sb3_pgext.cvpg.q_critic import FINITE_ACTION_SPACES
from sb3_pgext.offpac import OffPAC
from sb3_pgext.offpac.offpac import SUPPORTED_ACTION_SPACES as OFFPAC_ACTION_SPACES
from sb3_pgext.ppokl import PPOKL

#: The action spaces of SB3's PPO, which the PPO family keeps
PPO_ACTION_SPACES: tuple[type[spaces.Space], ...] = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


@dataclass(frozen=True)
class Algorithm:
    """
    One of the package's algorithms.

    :param name: its name in the RL Zoo (``--algo``) and the stem of its ``hyperparams/<name>.yml``
    :param algo_class: the class
    :param action_spaces: the action space classes it trains on
    :param peers: the zoo names of the SB3 algorithms it is compared with, in order of preference
        (the benchmark suite takes the first that runs on an env)
    """

    name: str
    algo_class: type[BaseAlgorithm]
    action_spaces: tuple[type[spaces.Space], ...]
    peers: tuple[str, ...]

    @property
    def display_name(self) -> str:
        """The name the reports print: the class's."""
        return self.algo_class.__name__


ALGORITHMS: dict[str, Algorithm] = {
    algorithm.name: algorithm
    for algorithm in (
        Algorithm("ppokl", PPOKL, PPO_ACTION_SPACES, peers=("ppo",)),
        Algorithm("cvpg", CVPG, (spaces.Box, *FINITE_ACTION_SPACES), peers=("ppo",)),
        Algorithm("offpac", OffPAC, OFFPAC_ACTION_SPACES, peers=("sac", "dqn")),
    )
}
