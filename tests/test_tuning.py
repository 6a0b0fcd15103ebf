"""benchmark/tuning/run.py: the flags ``verify`` gives the zoo for trial 0, which ``--trial-id`` cannot name."""

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
from rl_zoo3.utils import StoreDict
from torch import nn

from sb3_pgext.zoo.cli import python_literal
from sb3_pgext.zoo.hyperparams_opt import CONVERTERS

RUN_PY = Path(__file__).resolve().parents[1] / "benchmark" / "tuning" / "run.py"


@pytest.fixture(scope="module")
def tuning_run():
    spec = importlib.util.spec_from_file_location("tuning_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def zoo_hyperparams(flags: list[str]) -> dict:
    """What rl_zoo3's ``train`` parses from ``--hyperparams`` (its own StoreDict, which evaluates each value)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--hyperparams", nargs="+", action=StoreDict)
    return parser.parse_args(flags).hyperparams


def test_trial_0_is_given_as_the_hyperparameters_the_zoo_would_convert(tuning_run):
    """Every committed study's trial 0 (PPOKL's carry a torch.nn activation class, whose repr is not Python)."""
    checked = set()
    for study in tuning_run.STUDIES.values():
        path = tuning_run.export_path(study)
        if not path.exists():
            continue
        trial = json.loads(path.read_text(encoding="utf-8"))["trials"][0]
        flags = tuning_run.trial_flags(study, trial)
        assert flags[0] == "--hyperparams"
        assert zoo_hyperparams(flags) == CONVERTERS[study.algo](trial["params"])
        checked.add(study.algo)
    if not checked:
        pytest.skip("no committed benchmark/tuning exports in this checkout")


def test_a_later_trial_is_named_by_its_number(tuning_run):
    study = next(iter(tuning_run.STUDIES.values()))
    flags = tuning_run.trial_flags(study, {"number": 3, "params": {}})
    assert flags[:2] == ["--trial-id", "3"]
    assert flags[flags.index("--study-name") + 1] == study.name


def test_python_literal_round_trips_nested_values_and_refuses_others():
    value = {"net_arch": {"pi": [64], "vf": [64]}, "activation_fn": nn.Tanh, "pair": (1, 2.5), "one": ("a",), "x": None}
    assert zoo_hyperparams(["--hyperparams", f"v:{python_literal(value)}"])["v"] == value
    with pytest.raises(TypeError, match="no --hyperparams literal"):
        python_literal(object())
