"""
Fixes for rl_zoo3 2.9.2's Hugging Face Hub scripts with today's huggingface_hub and sb3-team-hf-integration.

The zoo command runs the scripts with ``runpy`` (a fresh copy of the module), so every fix here replaces a public
name of *another* package that the script imports when it starts, never a name of the script itself:

- ``rl_zoo3.load_from_hub`` treats a missing optional file (``vec_normalize.pkl``) as absent only when
  ``requests.HTTPError`` is raised; huggingface_hub raises ``EntryNotFoundError`` (remote: 404;
  offline: ``LocalEntryNotFoundError``), so every agent without VecNormalize failed to download.
  ``huggingface_sb3.load_from_hub`` is wrapped to raise ``requests.HTTPError`` from it (:func:`load_from_hub`).
- ``rl_zoo3.push_to_hub`` imports ``generate_metadata``, which sb3-team-hf-integration 3.2 renamed
  ``_generate_metadata`` and which now returns a ``ModelCardData`` where the zoo saves a dict
  (:func:`generate_metadata`, which also tags this package's agents).
- The model card of this package's algorithms names the package and its commands (``pip install
  sb3-pgext``, ``python -m sb3_pgext.zoo ...``), since ``rl_zoo3`` alone cannot load them: the zoo writes the card,
  then saves the metadata into it with ``huggingface_hub.repocard.metadata_save``, which is wrapped to rewrite the
  card of an agent tagged ``sb3-pgext`` first (:func:`metadata_save`).

``tests/test_zoo.py`` fails when a wrapped name changes signature (``test_hub_patches_match_upstream``) or when a
fix no longer takes effect (``test_push_to_hub_then_load_from_hub_and_enjoy_offline``).
"""

import importlib
from pathlib import Path
from typing import Any

from huggingface_hub.errors import EntryNotFoundError

# the module itself: ``import huggingface_sb3.push_to_hub`` gives the function of that name, which the
# package's __init__ imports over its submodule
hf_push = importlib.import_module("huggingface_sb3.push_to_hub")

PACKAGE = "sb3-pgext"
PACKAGE_URL = "https://github.com/sb3-pgext/sb3_pgext"

#: the class names of this package's algorithms (set by :func:`install`): their agents' metadata and card are edited
_OUR_CLASSES: set[str] = set()


def generate_metadata(model_name: str, env_id: str, mean_reward: float, std_reward: float) -> dict[str, Any]:
    """The hub metadata (tags, evaluation result) as the dict ``rl_zoo3.push_to_hub`` saves; this package's tags on its agents."""
    metadata = hf_push._generate_metadata(model_name, env_id, mean_reward, std_reward)
    metadata = metadata.to_dict() if hasattr(metadata, "to_dict") else dict(metadata)
    if model_name in _OUR_CLASSES:
        metadata["tags"] = [*metadata.get("tags", []), PACKAGE, model_name]
    return metadata


def package_card(card: str, algo_class_name: str) -> str:
    """The zoo's model card of one of this package's agents, naming the package and its commands."""
    card = card.replace("pip install rl_zoo3", f"pip install {PACKAGE}").replace("python -m rl_zoo3.", "python -m sb3_pgext.zoo ")
    header = (
        f"\n**{algo_class_name}** is an algorithm of [{PACKAGE}]({PACKAGE_URL}), a plugin package of "
        f"policy-gradient algorithms for Stable-Baselines3: loading this model needs `pip install {PACKAGE}` "
        f"(`from sb3_pgext import {algo_class_name}`), and the RL Zoo commands below run through "
        "`python -m sb3_pgext.zoo` (or `sb3-pgext-zoo`).\n"
    )
    title = card.find("# **")
    title_end = card.index("\n", title) + 1 if title >= 0 and "\n" in card[title:] else 0  # no title: on top
    return card[:title_end] + header + card[title_end:]


def wrap_metadata_save(zoo_metadata_save: Any) -> Any:
    """Wrap huggingface_hub's ``metadata_save``: the card of an agent tagged ``sb3-pgext`` is rewritten first."""

    def metadata_save(local_path: str | Path, data: dict) -> None:
        tags = data.get("tags", []) if isinstance(data, dict) else []
        ours = [tag for tag in tags if tag in _OUR_CLASSES]
        if PACKAGE in tags and ours and Path(local_path).is_file():
            path = Path(local_path)
            path.write_text(package_card(path.read_text(encoding="utf-8"), ours[0]), encoding="utf-8")
        return zoo_metadata_save(local_path, data)

    metadata_save._sb3_pgext = True  # type: ignore[attr-defined]
    metadata_save._sb3_pgext_original = zoo_metadata_save  # type: ignore[attr-defined]
    return metadata_save


def wrap_load_from_hub(hf_load_from_hub: Any) -> Any:
    """Wrap ``huggingface_sb3.load_from_hub``: a missing file raises ``requests.HTTPError``, which rl_zoo3 catches."""
    from requests.exceptions import HTTPError

    def load_from_hub(repo_id: str, filename: str) -> str:
        try:
            return hf_load_from_hub(repo_id, filename)
        except EntryNotFoundError as error:
            raise HTTPError(str(error)) from error

    load_from_hub._sb3_pgext = True  # type: ignore[attr-defined]
    load_from_hub._sb3_pgext_original = hf_load_from_hub  # type: ignore[attr-defined]
    return load_from_hub


def install(our_classes: set[str]) -> None:
    """
    Apply the fixes above (idempotent), before an rl_zoo3 hub script is imported or run.

    :param our_classes: the class names of this package's algorithms (``PPOKL`` ...)
    """
    import huggingface_hub.repocard
    import huggingface_sb3

    _OUR_CLASSES.update(our_classes)
    # sb3-team-hf-integration 3.2 renamed it; rl_zoo3.push_to_hub imports the old name
    if not hasattr(hf_push, "generate_metadata"):
        hf_push.generate_metadata = generate_metadata  # type: ignore[attr-defined]
    # rl_zoo3.load_from_hub catches requests.HTTPError only; huggingface_hub raises EntryNotFoundError
    if not getattr(huggingface_sb3.load_from_hub, "_sb3_pgext", False):
        huggingface_sb3.load_from_hub = wrap_load_from_hub(huggingface_sb3.load_from_hub)
    # rl_zoo3.push_to_hub writes a card that only names rl_zoo3; no hook between writing it and uploading
    if not getattr(huggingface_hub.repocard.metadata_save, "_sb3_pgext", False):
        huggingface_hub.repocard.metadata_save = wrap_metadata_save(huggingface_hub.repocard.metadata_save)
