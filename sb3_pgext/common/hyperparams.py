"""Where the package's RL Zoo hyperparameter files (``hyperparams/<algo>.yml``) are installed."""

from importlib import resources
from pathlib import Path


def hyperparams_path(algo: str) -> Path:
    """
    Path of the package's zoo hyperparameter file for ``algo``, from a regular or an editable install.

    :param algo: the zoo name of the algorithm, the lowercased class name (e.g. "ppokl")
    :return: path of ``<algo>.yml``
    """
    path = Path(str(resources.files("sb3_pgext.hyperparams").joinpath(f"{algo}.yml")))
    if not path.is_file():
        raise ValueError(f"no hyperparameter file for algo={algo!r} at {path}")
    return path
