"""
Fixes for rl_zoo3 2.9.2's Hugging Face Hub scripts with today's huggingface_hub and sb3-team-hf-integration.

- ``rl_zoo3.load_from_hub`` treats a missing optional file (``vec_normalize.pkl``) as absent only when
  ``requests.HTTPError`` is raised; huggingface_hub raises ``EntryNotFoundError`` (remote: 404;
  offline: ``LocalEntryNotFoundError``), so every agent without VecNormalize failed to download.
- ``rl_zoo3.push_to_hub`` imports ``generate_metadata``, which sb3-team-hf-integration 3.2 renamed
  ``_generate_metadata`` and which now returns a ``ModelCardData`` where the zoo saves a dict.
- The model card of this package's algorithms names the package and its commands (``pip install
  sb3-pgext``, ``python -m sb3_pgext.zoo ...``), since ``rl_zoo3`` alone cannot load them.
"""

import importlib
from typing import Any

from huggingface_hub.errors import EntryNotFoundError

# the module itself: ``import huggingface_sb3.push_to_hub`` gives the function of that name, which the
# package's __init__ imports over its submodule
hf_push = importlib.import_module("huggingface_sb3.push_to_hub")

PACKAGE = "sb3-pgext"
PACKAGE_URL = "https://github.com/sb3-pgext/sb3_pgext"


def generate_metadata(model_name: str, env_id: str, mean_reward: float, std_reward: float) -> dict[str, Any]:
    """The hub metadata (tags, evaluation result) as the dict ``rl_zoo3.push_to_hub`` saves."""
    metadata = hf_push._generate_metadata(model_name, env_id, mean_reward, std_reward)
    return metadata.to_dict() if hasattr(metadata, "to_dict") else dict(metadata)


def package_model_card(generate_model_card: Any, our_algos: set[str]) -> Any:
    """Wrap the zoo's ``generate_model_card``: for this package's algorithms, name the package and its commands."""

    def generate(algo_name: str, algo_class_name: str, organization: str, env_id: str, *args: Any, **kwargs: Any):
        card, metadata = generate_model_card(algo_name, algo_class_name, organization, env_id, *args, **kwargs)
        if algo_name not in our_algos:
            return card, metadata
        metadata = dict(metadata)
        metadata["tags"] = [*metadata.get("tags", []), PACKAGE, algo_class_name]
        card = card.replace("pip install rl_zoo3", f"pip install {PACKAGE}").replace("python -m rl_zoo3.", "python -m sb3_pgext.zoo ")
        header = (
            f"\n**{algo_class_name}** is an algorithm of [{PACKAGE}]({PACKAGE_URL}), a plugin package of "
            f"policy-gradient algorithms for Stable-Baselines3: loading this model needs `pip install {PACKAGE}` "
            f"(`from sb3_pgext import {algo_class_name}`), and the RL Zoo commands below run through "
            "`python -m sb3_pgext.zoo` (or `sb3-pgext-zoo`).\n"
        )
        title_end = card.index("\n", card.index("# **")) + 1
        return card[:title_end] + header + card[title_end:], metadata

    return generate


def install(our_algos: set[str]) -> None:
    """Apply the fixes above (idempotent). Needs ``requests`` for ``rl_zoo3.load_from_hub``'s own import."""
    if not hasattr(hf_push, "generate_metadata"):
        hf_push.generate_metadata = generate_metadata  # type: ignore[attr-defined]

    import rl_zoo3.load_from_hub as zoo_load
    import rl_zoo3.push_to_hub as zoo_push

    if not isinstance(zoo_load.HTTPError, tuple):
        zoo_load.HTTPError = (zoo_load.HTTPError, EntryNotFoundError)  # type: ignore[assignment,misc]
    if not getattr(zoo_push.generate_model_card, "_sb3_pgext", False):
        zoo_push.generate_model_card = package_model_card(zoo_push.generate_model_card, our_algos)
        zoo_push.generate_model_card._sb3_pgext = True  # type: ignore[attr-defined]
