"""
Benchmark suite definitions: ``zoo_configs/<name>.yml`` (installed as ``sb3_pgext.zoo_configs``).

A suite lists envs, each with its budget, threshold and the algorithms run on it: zoo names (``ppokl``,
``ppo``, ...) or the suite's *variants*, an algorithm with hyperparameter overrides run and reported as a row
of its own::

    variants:
      ppokl-clip:
        algo: ppokl
        label: PPOKL (clip + penalty)
        hyperparams: {clip_range: 0.2}

A variant trains as ``--algo <algo> -params <key>:<value> ...`` on top of the algorithm's yml entry, and is
compared with the peers of its algorithm unless ``peers`` names its own. Variants that share a label, one
algorithm with per-env overrides, are one row of the report's aggregates; the rows of one env need names of
their own.

``sample_efficiency`` (``true``, or a list of the suite's envs) adds to the report, for each of ours on those envs,
the env steps it takes to reach its peer's mean final return (Gu et al. 2017 report Q-Prop's gain so), and the
probability that it beats its peer over those envs.

``logged`` names values the runs log along training (their ``progress.csv``), summarised per env and
algorithm in the report; ``over`` makes it a ratio of two logged values at the same update::

    logged:
      - {name: "variance ratio with / without the control variate", key: train/grad_var, over: train/grad_var_no_cv}
      - {name: "corr(Â, Ā)", key: train/cv_corr}
"""

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sb3_pgext.registry import ALGORITHMS

#: the report's names of the algorithms: ours by class name, SB3's in capitals
NAMES = {name: algorithm.display_name for name, algorithm in ALGORITHMS.items()}
NAMES.update(ppo="PPO", a2c="A2C", sac="SAC", dqn="DQN", sbx="SBX SAC")

# Each of ours beside its nearest SB3 peer: the first of the list that runs on the env
DEFAULT_PEERS: dict[str, list[str]] = {name: list(algorithm.peers) for name, algorithm in ALGORITHMS.items()}


@dataclass(frozen=True)
class EnvSpec:
    """
    One env of a suite.

    :param env_id: the Gymnasium id
    :param n_timesteps: the training budget of every algorithm on it
    :param threshold: the return that counts as solved, for "steps to threshold"
    :param algos: zoo names of the algorithms run on it (ours and SB3's)
    :param note: a sentence the report prints under the env's heading (e.g. why its budget)
    """

    env_id: str
    n_timesteps: int
    threshold: float
    algos: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class Variant:
    """
    An algorithm with hyperparameter overrides, run and reported as a row of its own.

    :param name: its name in the suite file (the ``algos`` of an env, the runs' folder)
    :param algo: the zoo name of the algorithm it trains
    :param hyperparams: overrides of the algorithm's yml entry (as the zoo's ``-params`` takes them)
    :param label: its name in the report (default: ``name``)
    """

    name: str
    algo: str
    hyperparams: dict[str, Any] = field(default_factory=dict, compare=False)
    label: str = ""


@dataclass(frozen=True)
class Logged:
    """
    A value the runs log along training, summarised in the report.

    :param name: its name in the report
    :param key: the logger key (a column of ``progress.csv``, e.g. ``train/cv_corr``)
    :param over: a second key: the summary is of ``key / over`` at each update (e.g. a variance ratio)
    """

    name: str
    key: str
    over: str | None = None


#: a variant's name is a folder name of the runs
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Suite:
    """
    A benchmark suite: same envs, budgets, seeds and evaluation for every algorithm of an env.

    :param name: the suite's name (its file's stem)
    :param path: the file it was read from
    :param description: one line on what it covers
    :param seeds: the seeds every (env, algorithm) cell runs
    :param eval_freq: env steps between deterministic evaluations
    :param eval_episodes: episodes per evaluation
    :param envs: the envs, in report order
    :param peers: for each of our algorithms, its SB3 peers in order of preference
    :param zoo_entry_aliases: envs whose SB3 hyperparameters are the zoo's entry of another id (v5 → v4)
    :param variants: the suite's variants, by name
    :param logged: values logged along training that the report summarises
    :param sample_efficiency: the envs on which the report gives the steps each of ours takes to reach its peer's final
        return (none: no such section)
    """

    name: str
    path: Path
    description: str
    seeds: list[int]
    eval_freq: int
    eval_episodes: int
    envs: list[EnvSpec]
    peers: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_PEERS))
    zoo_entry_aliases: dict[str, str] = field(default_factory=dict)
    variants: dict[str, Variant] = field(default_factory=dict)
    logged: list[Logged] = field(default_factory=list)
    sample_efficiency: tuple[str, ...] = ()

    def zoo_algo(self, algo: str) -> str:
        """The zoo algorithm a name of the suite trains: a variant's algorithm, else the name itself."""
        return self.variants[algo].algo if algo in self.variants else algo

    def overrides(self, algo: str) -> dict[str, Any]:
        """The hyperparameters a variant overrides (none for a plain algorithm)."""
        return dict(self.variants[algo].hyperparams) if algo in self.variants else {}

    def rows(self) -> dict[str, dict[str, str]]:
        """
        The report's rows over envs: per name (:func:`display`), the algorithm or variant that has it on each env.
        Variants that share a label, one algorithm with per-env overrides, are one row of the aggregates.
        """
        by_name: dict[str, dict[str, str]] = {}
        for env in self.envs:
            for algo in env.algos:
                per_env = by_name.setdefault(display(algo, self), {})
                if env.env_id in per_env:
                    raise ValueError(
                        f"{self.path}: env {env.env_id} lists {per_env[env.env_id]} and {algo}, which the report names "
                        f"alike ({display(algo, self)!r}); give one a label of its own"
                    )
                per_env[env.env_id] = algo
        return by_name

    def peer(self, algo: str, env: EnvSpec) -> str | None:
        """
        The peer ``algo`` is compared with on ``env`` (None for SB3's own algorithms): the first of its peers
        that runs on the env; a variant without peers of its own takes its algorithm's.
        """
        peers = self.peers.get(algo) or self.peers.get(self.zoo_algo(algo), [])
        return next((peer for peer in peers if peer in env.algos and peer != algo), None)


def display(algo: str, suite: Suite | None = None) -> str:
    """The report's name of ``algo``: a variant's label (or name), ours by class name, SB3's in capitals."""
    if suite is not None and algo in suite.variants:
        return suite.variants[algo].label or algo
    return NAMES.get(algo, algo.upper())


def is_ours(algo: str, suite: Suite) -> bool:
    """Whether ``algo`` (a zoo name or a variant of the suite) is one of the package's algorithms."""
    return suite.zoo_algo(algo) in ALGORITHMS


def suite_path(name_or_path: str | Path) -> Path:
    """A suite file: a path, or the name of one of the package's suites ("quick", "standard")."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = Path(str(resources.files("sb3_pgext.zoo_configs").joinpath(f"{name_or_path}.yml")))
    if packaged.is_file():
        return packaged
    available = sorted(p.name[:-4] for p in resources.files("sb3_pgext.zoo_configs").iterdir() if p.name.endswith(".yml"))
    raise ValueError(f"suite must be a file or one of {available}, got {str(name_or_path)!r}")


def load_suite(name_or_path: str | Path) -> Suite:
    """Read and check a suite file; ValueError names the bad key."""
    path = suite_path(name_or_path)
    with open(path) as file:
        raw: dict[str, Any] = yaml.safe_load(file)
    keys = {
        "description", "seeds", "eval_freq", "eval_episodes", "envs", "peers", "zoo_entry_aliases", "variants", "logged",
        "sample_efficiency",
    }  # fmt: skip
    unknown = set(raw) - keys
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    variants = {name: _variant(path, name, entry) for name, entry in (raw.get("variants") or {}).items()}
    logged = []
    for entry in raw.get("logged") or []:
        if not isinstance(entry, dict) or not {"name", "key"} <= set(entry) or set(entry) - {"name", "key", "over"}:
            raise ValueError(f"{path}: each entry of logged must be a mapping of name, key and optionally over, got {entry!r}")
        logged.append(Logged(str(entry["name"]), str(entry["key"]), None if entry.get("over") is None else str(entry["over"])))
    envs = []
    for env_id, entry in raw["envs"].items():
        missing = {"n_timesteps", "threshold", "algos"} - set(entry)
        if missing:
            raise ValueError(f"{path}: env {env_id} lacks {sorted(missing)}")
        unknown_env_keys = set(entry) - {"n_timesteps", "threshold", "algos", "note"}
        if unknown_env_keys:
            raise ValueError(f"{path}: env {env_id} has unknown keys {sorted(unknown_env_keys)}")
        envs.append(
            EnvSpec(env_id, int(entry["n_timesteps"]), float(entry["threshold"]), tuple(entry["algos"]), str(entry.get("note", "")))
        )
    efficiency = raw.get("sample_efficiency", False)
    env_ids = [env.env_id for env in envs]
    if efficiency is True:
        efficiency = env_ids
    elif efficiency is False:
        efficiency = []
    elif not isinstance(efficiency, list) or not efficiency or not set(efficiency) <= set(env_ids):
        raise ValueError(
            f"{path}: sample_efficiency must be true, false or a list of the suite's envs {env_ids}, got {efficiency!r}"
        )
    seeds = [int(seed) for seed in raw["seeds"]]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{path}: seeds must be a non-empty list of distinct integers, got {raw['seeds']}")
    suite = Suite(
        name=path.stem,
        path=path,
        description=raw.get("description", ""),
        seeds=seeds,
        eval_freq=int(raw["eval_freq"]),
        eval_episodes=int(raw["eval_episodes"]),
        envs=envs,
        peers={**DEFAULT_PEERS, **raw.get("peers", {})},
        zoo_entry_aliases=dict(raw.get("zoo_entry_aliases", {})),
        variants=variants,
        logged=logged,
        sample_efficiency=tuple(env_id for env_id in env_ids if env_id in efficiency),
    )
    suite.rows()  # two algorithms of one env that the report would name alike are refused here, before any run
    return suite


def _variant(path: Path, name: str, entry: Any) -> Variant:
    """One entry of a suite's ``variants``, checked; ValueError names the variant and what is wrong."""
    if not isinstance(name, str) or not _VARIANT_NAME.match(name):
        raise ValueError(f"{path}: variant name {name!r} must be letters, digits, '_', '-' or '.' (it names the runs' folder)")
    if not isinstance(entry, dict) or "algo" not in entry:
        raise ValueError(f"{path}: variant {name} must be a mapping with an 'algo' (and 'hyperparams', 'label'), got {entry!r}")
    unknown = set(entry) - {"algo", "hyperparams", "label"}
    if unknown:
        raise ValueError(f"{path}: variant {name} has unknown keys {sorted(unknown)}; allowed: algo, hyperparams, label")
    hyperparams = entry.get("hyperparams") or {}
    if not isinstance(hyperparams, dict) or not all(isinstance(key, str) for key in hyperparams):
        raise ValueError(f"{path}: variant {name}'s hyperparams must map hyperparameter names to values, got {hyperparams!r}")
    if name == entry["algo"]:
        raise ValueError(f"{path}: variant {name} has the name of its algorithm; give it a name of its own")
    return Variant(name, str(entry["algo"]), hyperparams, str(entry.get("label", "")))
