"""
Saving without losing what was saved before.

SB3 writes a model zip, a replay buffer or ``VecNormalize`` statistics in place: a save that fails or is
killed midway leaves a truncated file where the previous one was. Here every file is written to a
temporary file beside its target (same folder, so same filesystem), flushed to disk, and renamed over the
target (``os.replace``, atomic on POSIX and Windows): the target is either the previous file or the new
one, never a part of one. A temporary file left by a killed process is hidden (``.<name>.<pid>.<random>.tmp``).
"""

import contextlib
import os
import pathlib
import secrets
from collections.abc import Iterator


def target_path(path: str | pathlib.Path, suffix: str | None = None) -> pathlib.Path:
    """
    The file SB3's ``open_path`` writes for ``path``: ``path`` itself, or with ``.<suffix>`` added when it has
    no suffix (``save("model")`` writes ``model.zip``).

    :param path: the path as the user gave it
    :param suffix: the suffix SB3 adds (``"zip"``, ``"pkl"``), or None
    """
    path = pathlib.Path(path)
    if suffix and path.suffix == "":
        path = pathlib.Path(f"{path}.{suffix}")
    return path


def _fsync(path: pathlib.Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


@contextlib.contextmanager
def atomic_path(path: str | pathlib.Path, suffix: str | None = None) -> Iterator[pathlib.Path]:
    """
    Yield a temporary path beside the target for the block to write; when the block ends without an error, the
    file is flushed to disk and renamed over the target, otherwise it is deleted and the target is left as it
    was. The target's folder is created if needed.

    :param path: the target, as the user gave it (see :func:`target_path`)
    :param suffix: the suffix SB3 would add to a path without one
    """
    target = target_path(path, suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    # ends in ".tmp": SB3's open_path adds no suffix to it
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | pathlib.Path, text: str) -> None:
    """
    ``pathlib.Path(path).write_text(text)``, through :func:`atomic_path`: a reader sees the previous text or the
    new one, never a part.

    :param path: the file
    :param text: its new content
    """
    with atomic_path(path) as temporary:
        temporary.write_text(text)


class AtomicSaveMixin:
    """
    ``save`` for this package's algorithms: SB3's, written through :func:`atomic_path`, so that an error or a
    kill during the save leaves the previous file whole. A file-like target is written as SB3 writes it.
    """

    def save(
        self,
        path: str | pathlib.Path | os.PathLike,
        exclude: list[str] | None = None,
        include: list[str] | None = None,
    ) -> None:
        """
        Save all the attributes of the object and the model parameters in a zip-file (SB3's ``save``), without
        destroying the previous file at ``path`` if the save fails midway.

        :param path: path to the file where the RL agent should be saved (``.zip`` is added if it has no suffix),
            or a file-like object
        :param exclude: name of parameters that should be excluded in addition to the default ones
        :param include: name of parameters that might be excluded but should be included anyway
        """
        if not isinstance(path, (str, os.PathLike)) or pathlib.Path(path).is_dir():
            # a file object, or a folder (SB3 then writes "<path>_2" and warns): SB3's own behaviour
            super().save(path, exclude=exclude, include=include)  # type: ignore[misc]
            return
        with atomic_path(path, suffix="zip") as temporary:
            super().save(temporary, exclude=exclude, include=include)  # type: ignore[misc]


@contextlib.contextmanager
def atomic_vec_normalize_saves() -> Iterator[None]:
    """
    Within the block, ``VecNormalize.save`` writes through :func:`atomic_path`. The RL Zoo saves the statistics
    (``vecnormalize.pkl``) with ``model.get_vec_normalize_env().save(path)``, at the end of training and every
    ``--save-freq`` steps, writing in place; SB3 offers no other way in, so the package's zoo command replaces the
    method for the command's duration and puts SB3's back on exit. The pickle is SB3's own (same class, same
    content): files load without this package. ``tests/test_save_util.py`` fails if SB3's method changes shape.
    """
    from stable_baselines3.common.vec_env import VecNormalize

    write_in_place = VecNormalize.save

    def save(self: VecNormalize, save_path: str) -> None:
        with atomic_path(save_path) as temporary:
            write_in_place(self, str(temporary))

    save.__doc__ = write_in_place.__doc__
    VecNormalize.save = save  # type: ignore[method-assign]
    try:
        yield
    finally:
        VecNormalize.save = write_in_place  # type: ignore[method-assign]
