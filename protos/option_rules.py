"""The rules a run-config value must meet, applied on both sides of a run.

The server checks every option before a run starts (``server.run_config.RunSettings``); each client checks
the options it reads on its node (``client.settings.ClientSettings``), whoever sent them. Both take the
ranges, the integer limits and the conversion of a run-config value to an option's type from here, so a
node refuses exactly what the server refuses.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

INT64_MAX = 2**63 - 1  # Flower's run config carries integers as sint64
SEED_MAX = 2**32 - 1  # numpy's legacy np.random.seed, which the ServerApp calls, takes 0..2^32-1

# Allowed range of every float option: (low, high, low included, high included); high None = unbounded.
FLOAT_RANGES: dict[str, tuple[float, float | None, bool, bool]] = {
    "alpha": (0.0, None, False, False),
    "local_test_fraction": (0.0, 1.0, True, False),
    "lr": (0.0, None, False, False),
    "momentum": (0.0, 1.0, True, False),
    "density": (0.0, 1.0, False, True),
    "score_lr": (0.0, None, False, False),
    "score_momentum": (0.0, 1.0, True, False),
    "server_lr": (0.0, None, False, False),
    "server_momentum": (0.0, 1.0, True, False),
    "moved_share": (0.0, 1.0, False, True),
    "score_step": (0.0, None, True, False),
    "candidate_spread": (0.0, None, True, False),
    "bn_selection_z": (0.0, None, True, False),
    "adjust_alpha": (0.0, 1.0, False, True),
    "round_timeout": (0.0, None, False, False),
}


class OptionError(ValueError):
    """An option has a value fedprune cannot run with; ``option`` names it. Each side raises its own kind."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"--{option}: {message}")
        self.option = option


def allowed_range(name: str) -> str:
    """Where float option ``name`` must lie, as an error message says it: ``> 0``, ``in [0, 1)``."""
    low, high, low_in, high_in = FLOAT_RANGES[name]
    if high is None:
        return f"{'>=' if low_in else '>'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def check_numbers(settings: Any, error: type[OptionError], name_non_finite: bool = True) -> None:
    """Raise ``error`` naming the first field of the dataclass ``settings`` that is a float option outside its
    range or not finite (NaN passes any ``x <= 0`` test, so finiteness first), or an integer beyond the run
    config's 64 bits. ``name_non_finite``: say that a NaN or infinity is not a finite number (the server's
    wording) rather than only where the value must lie (a client's)."""
    for f in dataclasses.fields(settings):
        value, option = getattr(settings, f.name), f.name.replace("_", "-")
        if f.name in FLOAT_RANGES:
            low, high, low_in, high_in = FLOAT_RANGES[f.name]
            if name_non_finite and not math.isfinite(value):
                raise error(option, f"{value} is not a finite number; it must be {allowed_range(f.name)}")
            above = value >= low if low_in else value > low
            below = high is None or (value <= high if high_in else value < high)
            if not (math.isfinite(value) and above and below):
                raise error(option, f"{value} must be {allowed_range(f.name)}")
        elif f.type == "int" and abs(value) > INT64_MAX:
            raise error(option, f"{value} does not fit the run config's 64-bit integers")


def check_choice(option: str, value: str, choices: Any, error: type[OptionError]) -> None:
    """Raise ``error`` unless ``value`` is one of ``choices`` (the message lists them sorted)."""
    if value not in choices:
        raise error(option, f"'{value}' is not one of: {', '.join(sorted(choices))}")


def coerce_option(option: str, kind: Any, value: Any, error: type[OptionError]) -> Any:
    """``value`` (from a run config, where any type may arrive) as an option of type ``kind`` (a dataclass
    field's type: ``bool``, ``int``, ``float``, ``str``; any other passes it through); ``error`` if it is not."""
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "str":
            return str(value)
    except (TypeError, ValueError):
        raise error(option, f"{value!r} is not a valid {kind}") from None
    return value
