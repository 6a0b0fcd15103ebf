"""
The checks of the algorithms' constructor arguments: each algorithm's ``__init__`` calls them first, before
anything is built, and each raises a ValueError that names the argument, what it got and what is allowed.
"""

from collections.abc import Collection
from typing import Any

import numpy as np


def check_choice(name: str, value: Any, allowed: Collection[Any]) -> None:
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def check_integer(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    """``value`` must be an integer >= ``minimum`` (or None when ``optional``: the default)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        default = " (or None for the default)" if optional else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{default}, got {value!r}")


def check_number(
    name: str, value: Any, low: float | None = None, high: float | None = None, low_open: bool = False, why: str = ""
) -> None:
    """
    ``value`` must be a number within [low, high] (``(low, high]`` when ``low_open``; a missing bound is no bound).

    :param why: what the bound means, added to the message in parentheses
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    inside = not np.isnan(number)
    if inside and low is not None:
        inside = number > low if low_open else number >= low
    if inside and high is not None:
        inside = number <= high
    if not inside:
        if low is not None and high is not None:
            allowed = f"in {'(' if low_open else '['}{low}, {high}]"
        elif low is not None:
            allowed = f"{'>' if low_open else '>='} {low}"
        else:
            allowed = f"<= {high}"
        raise ValueError(f"{name} must be {allowed}{f' ({why})' if why else ''}, got {value!r}")
