"""
The RL Zoo plugin: this package's algorithms in rl_zoo3's commands.

rl_zoo3 2.9.2 has no plugin mechanism: its scripts read ``ALGOS`` (``rl_zoo3/utils.py``),
``HYPERPARAMS_SAMPLER`` and ``HYPERPARAMS_CONVERTER`` (``rl_zoo3/hyperparams_opt.py``) when they
build their argparse ``choices``, before ``--gym-packages`` is imported, and look hyperparameters up
inside rl_zoo3 unless ``--conf-file`` is given. :func:`register` fills those dicts; ``python -m
sb3_pgext.zoo`` (or ``sb3-pgext-zoo``) registers, then runs rl_zoo3's own script with every flag intact,
plus ``--conf-file`` with the package's ``hyperparams/<algo>.yml`` for our algorithms when none is given,
and one flag of its own for ``train``: ``--log-csv`` (see :class:`ProgressCSV`). Code that builds an
``ExperimentManager`` itself passes ``config=str(hyperparams_path(algo))``.
"""

import os
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import CSVOutputFormat

from sb3_pgext.registry import ALGORITHMS
from sb3_pgext.zoo.hyperparams_opt import CONVERTERS, SAMPLERS

#: Zoo name -> class, for rl_zoo3's ``ALGOS``
ALGOS: dict[str, type[BaseAlgorithm]] = {name: algorithm.algo_class for name, algorithm in ALGORITHMS.items()}


#: ``train --log-csv``: runs write ``progress.csv`` into their log folder (set by :func:`register`)
_LOG_CSV = False


class ProgressCSV(BaseCallback):
    """
    Adds a CSV output to the model's logger for the whole of ``learn()``: ``<folder>/progress.csv``, one row
    per logger dump with every logged value at full precision (SB3's ``progress.csv``), beside the outputs
    SB3 configured (stdout, TensorBoard). ``python -m sb3_pgext.zoo train --log-csv`` adds it to every run,
    in the run's log folder, which the benchmark suite keeps as raw data (``train/`` values along training).

    :param folder: where ``progress.csv`` is written
    """

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder
        self.output: CSVOutputFormat | None = None

    def _on_training_start(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        self.output = CSVOutputFormat(os.path.join(self.folder, "progress.csv"))
        self.logger.output_formats.append(self.output)

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self.output is not None and self.output in self.logger.output_formats:
            self.logger.output_formats.remove(self.output)
            self.output.close()


def register(log_csv: bool = False) -> None:
    """
    Add this package's algorithms to rl_zoo3's ``ALGOS``, ``HYPERPARAMS_SAMPLER`` and
    ``HYPERPARAMS_CONVERTER``; make ``ExperimentManager`` accept ``null`` where a schedule may be None
    (e.g. PPOKL's ``clip_range``) and add :class:`ProgressCSV` for ``--log-csv``; fix the zoo's hub
    scripts (see :mod:`sb3_pgext.zoo.hub`). SB3's and sb3-contrib's algorithms are left as they are. Idempotent.

    :param log_csv: every run the ``ExperimentManager`` trains from now on also writes ``progress.csv``
        into its log folder (:class:`ProgressCSV`)
    """
    global _LOG_CSV
    _LOG_CSV = _LOG_CSV or log_csv
    import rl_zoo3.exp_manager as zoo_exp_manager
    import rl_zoo3.hyperparams_opt as zoo_opt
    import rl_zoo3.utils as zoo_utils

    from sb3_pgext.zoo import hub

    zoo_utils.ALGOS.update(ALGOS)
    zoo_opt.HYPERPARAMS_SAMPLER.update(SAMPLERS)
    zoo_opt.HYPERPARAMS_CONVERTER.update(CONVERTERS)

    # The two patches of ExperimentManager below have no supported way in rl_zoo3 2.9.2; each keeps the zoo's
    # method as ``_sb3_pgext_original``, and tests/test_zoo.py (test_experiment_manager_patches_match_upstream)
    # fails when the zoo's method changes the signature they rely on.
    manager = zoo_exp_manager.ExperimentManager
    if not hasattr(manager.learn, "_sb3_pgext_original"):
        zoo_schedules = manager._preprocess_schedules

        # why (private name): the zoo raises ValueError on None, and no yml key or flag lets a value bypass it
        def _preprocess_schedules(hyperparams: dict[str, Any]) -> dict[str, Any]:
            # null keeps its meaning (PPOKL's clip_range: None is the penalty without clipping; a
            # stored trial can hold it) where the zoo only accepts a number or "lin_<x>"
            nones = [key for key, value in hyperparams.items() if value is None]
            converted = zoo_schedules({key: value for key, value in hyperparams.items() if value is not None})
            return {**converted, **dict.fromkeys(nones)}

        _preprocess_schedules._sb3_pgext_original = zoo_schedules  # type: ignore[attr-defined]
        manager._preprocess_schedules = staticmethod(_preprocess_schedules)  # type: ignore[method-assign]

        zoo_learn = manager.learn

        # why: the yml's `callback:` key builds callbacks before the run's folder (save_path) exists and would
        # replace a yml's own callbacks; --log-csv needs the folder, known to the manager only
        def learn(self: Any, model: BaseAlgorithm) -> None:
            if _LOG_CSV:
                # after the zoo's own callbacks: the first of them is the one the zoo ends by hand
                self.callbacks.append(ProgressCSV(self.save_path))
            zoo_learn(self, model)

        learn._sb3_pgext_original = zoo_learn  # type: ignore[attr-defined]
        manager.learn = learn  # type: ignore[method-assign]
    hub.install({algorithm.__name__ for algorithm in ALGOS.values()})


__all__ = ["ALGOS", "ProgressCSV", "register"]
