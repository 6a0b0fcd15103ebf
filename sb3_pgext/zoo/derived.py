"""
Hyperparameters for every env of the RL Zoo, derived from the zoo's own files for the SB3 peer of each algorithm.

The package's ``hyperparams/<algo>.yml`` has two parts: the entries written (or tuned) for the algorithm, and
below :data:`MARKER` the entries this module derives from rl_zoo3's installed ``ppo.yml``, ``sac.yml`` and
``dqn.yml`` for every other env the zoo knows:

- PPOKL: PPO's values with the KL penalty's defaults (PPO's ``clip_range`` dropped: the paper's penalty-only
  surrogate with an adaptive β, ``kl_target=0.01``);
- CVPG: PPO's values (CVPG's default surrogate is PPO's clip) with CVPG's defaults for the control variate;
- OffPAC: SAC's values for Box actions (OffPAC with its defaults is SAC); DQN's values for Discrete actions,
  with OffPAC's all-action estimator: DQN's exploration schedule is dropped (the policy's entropy explores) and its
  hard target copy every ``target_update_interval`` env steps becomes ``tau=1.0`` every as many gradient steps.

Env ids are the gymnasium 1.x ones the zoo resolves: MuJoCo's ``-v4`` (and mujoco-py's ``-v2``) entries become
``-v5`` ones. Envs that do not install with gymnasium 1.x are left out (:data:`NOT_COVERED`, with the reason).
``python -m sb3_pgext.zoo.derived`` rewrites the derived part of the three files; ``tests/test_derived_hyperparams.py``
fails when they differ from what the installed rl_zoo3 gives.
"""

import argparse
from pathlib import Path
from typing import Any

import yaml

#: the line above the derived entries of a hyperparameter file; everything below it is generated
MARKER = "# ---- derived entries: written by `python -m sb3_pgext.zoo.derived`, do not edit below this line ----"
#: our algorithm -> the zoo files its entries derive from (peer, and the action spaces that file's entries are for)
SOURCES: dict[str, tuple[str, ...]] = {"ppokl": ("ppo",), "cvpg": ("ppo",), "offpac": ("sac", "dqn")}
#: the zoo's keys that are not envs
NOT_ENVS = ("default",)
#: zoo env ids that name an env gymnasium 1.x no longer has under that id (mujoco-py's -v2, the v4 MuJoCo envs)
RENAMED = {
    "Ant-v4": "Ant-v5",
    "HalfCheetah-v4": "HalfCheetah-v5",
    "Hopper-v4": "Hopper-v5",
    "Humanoid-v4": "Humanoid-v5",
    "Swimmer-v4": "Swimmer-v5",
    "Walker2d-v4": "Walker2d-v5",
    "HumanoidStandup-v2": "HumanoidStandup-v5",
    "InvertedDoublePendulum-v2": "InvertedDoublePendulum-v5",
    "InvertedPendulum-v2": "InvertedPendulum-v5",
    "Reacher-v2": "Reacher-v5",
}
#: (zoo file, env id) of the zoo's entries with no gymnasium 1.x env to install from the package registries, and why
NOT_COVERED = {
    ("ppo", "MinitaurBulletEnv-v0"): "pybullet-envs-gymnasium, the gymnasium port of pybullet's envs, has no Minitaur envs",
    ("ppo", "MinitaurBulletDuckEnv-v0"): "pybullet-envs-gymnasium, the gymnasium port of pybullet's envs, has no Minitaur envs",
    ("sac", "MinitaurBulletEnv-v0"): "pybullet-envs-gymnasium, the gymnasium port of pybullet's envs, has no Minitaur envs",
    ("sac", "MinitaurBulletDuckEnv-v0"): "pybullet-envs-gymnasium, the gymnasium port of pybullet's envs, has no Minitaur envs",
    ("sac", "donkey-generated-track-v0"): "gym-donkeycar is gym-era and needs the Donkey simulator, a separate download",
    ("sac", "NeckEnvRelative-v2"): "a private env of the zoo's authors (neck-rl), not on the package registries",
    ("sac", "CarRacing-v3"): "SAC's entry wraps the env in an autoencoder of the zoo's authors (ae), not on the registries",
    ("sac", "FetchReach-v1"): "gymnasium-robotics 1.4 (FetchReach-v4) fails with mujoco 4 (an assertion in its mujoco_utils)",
}

#: DQN's keys OffPAC has no counterpart for (it explores through its policy's entropy)
DQN_ONLY = ("exploration_fraction", "exploration_initial_eps", "exploration_final_eps", "target_update_interval")
NOTES = {
    "ppokl": "PPO's values with the KL penalty's defaults (PPO's clip_range dropped)",
    "cvpg": "PPO's values with CVPG's defaults",
    "sac": "SAC's values (OffPAC with its defaults is SAC)",
    "dqn": "DQN's values with OffPAC's all-action estimator; DQN's exploration dropped, its target copy as tau=1.0",
}


def zoo_hyperparams_path(algo: str) -> Path:
    """
    Path of rl_zoo3's own hyperparameter file for one of SB3's algorithms.

    :param algo: the zoo name of the algorithm (e.g. "ppo", "sac", "dqn")
    :return: path of the installed rl_zoo3's ``hyperparams/<algo>.yml``
    """
    import rl_zoo3

    return Path(rl_zoo3.__file__).parent / "hyperparams" / f"{algo}.yml"


def zoo_hyperparams(peer: str) -> dict[str, dict[str, Any]]:
    """rl_zoo3's installed ``<peer>.yml``, YAML anchors resolved."""
    with open(zoo_hyperparams_path(peer)) as file:
        return yaml.safe_load(file)


def _gradient_steps_per_env_step(entry: dict[str, Any]) -> float | None:
    """Gradient steps per env step of an off-policy entry (SB3: ``gradient_steps=-1`` is one per env step)."""
    train_freq, gradient_steps = entry.get("train_freq", 1), entry.get("gradient_steps", 1)
    if not isinstance(train_freq, int) or not isinstance(gradient_steps, int):
        return None  # a train_freq in episodes: no fixed ratio
    return float(entry.get("n_envs", 1)) if gradient_steps == -1 else gradient_steps / train_freq


def from_dqn(entry: dict[str, Any]) -> dict[str, Any]:
    """
    OffPAC's entry from DQN's: DQN's exploration dropped; its hard target copy every C env steps becomes
    ``tau=1.0`` with ``target_update_interval`` the gradient steps in C env steps (SAC's and OffPAC's interval
    counts gradient steps).

    :param entry: the zoo's DQN entry
    """
    derived = {key: value for key, value in entry.items() if key not in DQN_ONLY}
    interval, ratio = entry.get("target_update_interval"), _gradient_steps_per_env_step(entry)
    if isinstance(interval, int):
        derived["tau"] = 1.0
        derived["target_update_interval"] = max(1, round(interval * ratio)) if ratio is not None else interval
    return derived


def derive(algo: str, peer: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Our algorithm's entry from the peer's (see the module docstring)."""
    if algo == "ppokl":
        return {key: value for key, value in entry.items() if key != "clip_range"}
    if peer == "dqn":
        return from_dqn(entry)
    return dict(entry)


def derived_entries(algo: str, written: set[str]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """
    (env id, zoo file, zoo env id, entry) of every env of the algorithm's zoo files that ``written`` (the entries
    written above the marker) does not already have, in the zoo files' order; the first file wins an env both have.

    :param algo: our algorithm's zoo name
    :param written: the env ids of the file's own entries
    """
    found: dict[str, tuple[str, str, str, dict[str, Any]]] = {}
    for peer in SOURCES[algo]:
        for zoo_id, entry in zoo_hyperparams(peer).items():
            env_id = RENAMED.get(zoo_id, zoo_id)
            if zoo_id in NOT_ENVS or (peer, zoo_id) in NOT_COVERED or env_id in written or env_id in found:
                continue
            found[env_id] = (env_id, peer, zoo_id, derive(algo, peer, entry))
    return list(found.values())


def unknown_envs(algo: str, path: Path | None = None) -> list[str]:
    """
    The env ids of an algorithm's hyperparameter file that no entry of its peers' zoo files names (after
    :data:`RENAMED`): a typo, or an env the zoo does not know.

    :param algo: our algorithm's zoo name
    :param path: the file (default: the package's ``hyperparams/<algo>.yml``)
    """
    from sb3_pgext.common.hyperparams import hyperparams_path

    known = {RENAMED.get(zoo_id, zoo_id) for peer in SOURCES[algo] for zoo_id in zoo_hyperparams(peer)}
    with open(path or hyperparams_path(algo)) as file:
        return [env_id for env_id in yaml.safe_load(file) if env_id not in known]


def _yaml_entry(env_id: str, entry: dict[str, Any]) -> str:
    return yaml.safe_dump({env_id: entry}, sort_keys=False, default_flow_style=False, width=120)


def derived_text(algo: str, written: set[str]) -> str:
    """The part of ``hyperparams/<algo>.yml`` below :data:`MARKER`."""
    lines = [
        MARKER,
        f"# Derived from rl_zoo3's {' and '.join(f'{peer}.yml' for peer in SOURCES[algo])} for every env the entries above leave out;",
        "# not tuned for this algorithm. See sb3_pgext/zoo/derived.py for the rules.",
        "",
    ]
    for env_id, peer, zoo_id, entry in derived_entries(algo, written):
        note = NOTES[algo if algo != "offpac" else peer]
        lines.append(f"# {note}: {peer}.yml's {zoo_id}")
        lines.append(_yaml_entry(env_id, entry))
    return "\n".join(lines)


def split(text: str) -> tuple[str, str]:
    """A hyperparameter file's written part and its derived part (empty without the marker)."""
    head, marker, tail = text.partition(MARKER)
    return head, marker + tail


def written_envs(head: str) -> set[str]:
    """The env ids of the written part of a file."""
    return set(yaml.safe_load(head) or {})


def regenerate(path: Path, algo: str) -> str:
    """The file's text with its derived part written anew from the installed rl_zoo3."""
    head, _ = split(path.read_text())
    head = head.rstrip("\n") + "\n\n"
    return head + derived_text(algo, written_envs(head))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sb3_pgext.zoo.derived", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("hyperparams"), help="the hyperparameter files' folder")
    args = parser.parse_args(argv)
    for algo in SOURCES:
        path = args.folder / f"{algo}.yml"
        head, _ = split(path.read_text())
        path.write_text(regenerate(path, algo))
        print(f"{path}: {len(derived_entries(algo, written_envs(head)))} derived entries")


if __name__ == "__main__":
    main()
