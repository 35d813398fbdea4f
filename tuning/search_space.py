"""The search space of a study, read from TOML: fixed run options, per-strategy options, and parameters.

A space file has three kinds of tables (keys are ``fedprune simulate`` options, hyphenated)::

    [fixed]                      # every trial
    dataset = "fashion-mnist"
    [strategy-options.fedtiny]   # every trial of one strategy
    model = "fl-cnn-bn"
    [parameters.density]         # searched: choices, or low/high (log, integer), grid values, a condition
    low = 0.01
    high = 0.2
    log = true
    grid = [0.01, 0.05, 0.2]
    when = { strategy = ["hidenseek", "fedtiny"] }

Parameters are suggested in file order; ``when`` may only name parameters declared before it. Dense FedAvg is
always among the strategies (the anchor every study is measured against). Every problem is a ``SpaceError``
naming the file, the table and the key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import optuna
from fedprune.server.run_config import ConfigError, RunSettings

PRESETS = ("fmnist-budgets",)
ANCHOR_STRATEGY = "fedavg"
# Options a trial never takes from a space: the tuner sets them (seed per run, out per trial) or they change
# what a run is (resume).
RESERVED = ("seed", "out", "resume", "extra")
OPTION_FIELDS = {f.name.replace("_", "-"): f for f in dataclasses.fields(RunSettings) if f.name not in RESERVED}


class SpaceError(ConfigError):
    """A search space file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Parameter:
    """One searched run option: categorical ``choices``, or a numeric range [low, high] (log scale, integer)."""

    name: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    grid: tuple[Any, ...] = ()  # values --sampler grid enumerates (choices by default)
    default: Any = None  # the value the dense anchor trial gets
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # active only where earlier parameters match

    def applies(self, chosen: Mapping[str, Any]) -> bool:
        """Whether this parameter is active given the values chosen so far."""
        return all(chosen.get(name) in values for name, values in self.when.items())

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value (Optuna's distribution of the same name; an enqueued trial gets its fixed value)."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this parameter's choices or range."""
        if self.choices:
            return value in self.choices
        return isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass(frozen=True)
class SearchSpace:
    """A parsed, checked space: fixed options, options per strategy, and parameters in suggestion order."""

    source: str
    fixed: dict[str, Any]
    strategy_options: dict[str, dict[str, Any]]
    parameters: tuple[Parameter, ...]

    def trial_options(self, chosen: Mapping[str, Any]) -> dict[str, Any]:
        """The run options of a trial: fixed, then its strategy's own, then the chosen parameter values."""
        strategy = chosen.get("strategy", self.fixed.get("strategy"))
        return {**self.fixed, **self.strategy_options.get(strategy, {}), **chosen}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every active parameter in order (conditional ones only where their condition holds)."""
        chosen: dict[str, Any] = {}
        for parameter in self.parameters:
            if parameter.applies(chosen):
                chosen[parameter.name] = parameter.suggest(trial)
        return chosen

    def anchor(self) -> dict[str, Any]:
        """The dense FedAvg trial's parameters: each active parameter at its default."""
        chosen: dict[str, Any] = {}
        for parameter in self.parameters:
            if parameter.applies(chosen):
                chosen[parameter.name] = ANCHOR_STRATEGY if parameter.name == "strategy" else parameter.default
        return chosen

    def grid(self) -> Iterator[dict[str, Any]]:
        """Every combination of grid values, conditions respected, in file order (the anchor excluded)."""

        def expand(index: int, chosen: dict[str, Any]) -> Iterator[dict[str, Any]]:
            if index == len(self.parameters):
                yield dict(chosen)
                return
            parameter = self.parameters[index]
            if not parameter.applies(chosen):
                yield from expand(index + 1, chosen)
                return
            for value in parameter.grid:
                yield from expand(index + 1, {**chosen, parameter.name: value})

        anchor = self.anchor()
        yield from (point for point in expand(0, {}) if point != anchor)

    def grid_size(self) -> int:
        """How many trials the grid holds, the anchor included."""
        return 1 + sum(1 for _ in self.grid())

    def describe(self) -> str:
        """A canonical text of the space (stored with a study, so a rerun with another space is refused)."""
        return repr((self.fixed, self.strategy_options, [dataclasses.astuple(p) for p in self.parameters]))


def load_space(path: str | None = None, preset: str | None = None) -> SearchSpace:
    """Read and check a space file, or a preset shipped with fedprune (``fmnist-budgets``)."""
    if preset is not None:
        if preset not in PRESETS:
            raise SpaceError("preset", f"unknown preset '{preset}'; one of {', '.join(PRESETS)}")
        text = resources.files("fedprune.tuning").joinpath("presets", f"{preset}.toml").read_text()
        source = f"preset {preset}"
    else:
        file = Path(path or "")
        if not file.is_file():
            raise SpaceError("space", f"{file} is not a file")
        text, source = file.read_text(), str(file)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError("space", f"{source} is not valid TOML: {exc}") from None
    return parse_space(document, source)


def parse_space(document: dict[str, Any], source: str) -> SearchSpace:
    """A checked ``SearchSpace`` from a parsed TOML document."""
    unknown = set(document) - {"fixed", "strategy-options", "parameters"}
    if unknown:
        raise SpaceError("space", f"{source}: unknown table [{sorted(unknown)[0]}] (fixed, strategy-options, "
                                  "parameters)")
    fixed = _options(document.get("fixed", {}), f"{source} [fixed]")
    per_strategy = {name: _options(table, f"{source} [strategy-options.{name}]")
                    for name, table in _table(document.get("strategy-options", {}), source).items()}
    parameters: list[Parameter] = []
    for name, table in _table(document.get("parameters", {}), source).items():
        parameters.append(_parameter(name, _table(table, f"{source} [parameters.{name}]"), parameters, source))
    names = {p.name for p in parameters}
    overlap = names & set(fixed)
    if overlap:
        raise SpaceError("space", f"{source}: '{sorted(overlap)[0]}' is both fixed and searched")
    parameters = _with_anchor_strategy(parameters, fixed)
    fixed = {k: v for k, v in fixed.items() if k != "strategy"}
    space = SearchSpace(source, fixed, per_strategy, tuple(parameters))
    _check_values(space)
    return space


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpaceError("space", f"{where} must be a table")
    return value


def _options(table: Any, where: str) -> dict[str, Any]:
    for key in _table(table, where):
        _option_field(key, where)
    return dict(table)


def _option_field(name: str, where: str) -> dataclasses.Field:
    if name in RESERVED:
        raise SpaceError("space", f"{where}: '{name}' is set by the tuner (--seeds / --out), not by a space")
    if name not in OPTION_FIELDS:
        raise SpaceError("space", f"{where}: unknown parameter '{name}' (not a `fedprune simulate` option)")
    return OPTION_FIELDS[name]


# size: one check per key of a parameter table, each with its own message
def _parameter(name: str, table: dict[str, Any], earlier: list[Parameter], source: str) -> Parameter:
    where = f"{source} [parameters.{name}]"
    kind = _option_field(name, where).type
    unknown = set(table) - {"choices", "low", "high", "log", "grid", "default", "when"}
    if unknown:
        raise SpaceError("space", f"{where}: unknown key '{sorted(unknown)[0]}'")
    choices = tuple(table.get("choices", ()))
    ranged = "low" in table or "high" in table
    if bool(choices) == ranged:
        raise SpaceError("space", f"{where}: give either a non-empty 'choices' list or 'low' and 'high'")
    low = high = None
    if ranged:
        if kind not in ("int", "float"):
            raise SpaceError("space", f"{where}: '{name}' is not numeric; give 'choices'")
        low, high = table.get("low"), table.get("high")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)) \
                or low >= high:
            raise SpaceError("space", f"{where}: needs finite numbers low < high")
        if table.get("log") and low <= 0:
            raise SpaceError("space", f"{where}: a log scale needs low > 0")
    when = {}
    for other, values in _table(table.get("when", {}), f"{where} when").items():
        match = next((p for p in earlier if p.name == other), None)
        values = tuple(values) if isinstance(values, list) else (values,)
        if match is None:
            raise SpaceError("space", f"{where}: 'when' names '{other}', which is not a parameter declared above")
        bad = [v for v in values if not match.contains(v)]
        if bad:
            raise SpaceError("space", f"{where}: 'when' value {bad[0]!r} is not a value of '{other}'")
        when[other] = values
    parameter = Parameter(name, choices, low, high, bool(table.get("log", False)), kind == "int",
                          tuple(table.get("grid", choices)), table.get("default"), when)
    return _with_defaults(parameter, where)


def _with_defaults(parameter: Parameter, where: str) -> Parameter:
    if not parameter.grid:
        raise SpaceError("space", f"{where}: a range needs 'grid' values (what --sampler grid tries)")
    for value in parameter.grid:
        if not parameter.contains(value):
            raise SpaceError("space", f"{where}: grid value {value!r} is outside the parameter's values")
    default = parameter.default
    if default is None:
        run_default = OPTION_FIELDS[parameter.name].default
        default = run_default if parameter.contains(run_default) else parameter.grid[0]
    if not parameter.contains(default):
        raise SpaceError("space", f"{where}: default {default!r} is outside the parameter's values")
    return dataclasses.replace(parameter, default=default)


def _with_anchor_strategy(parameters: list[Parameter], fixed: dict[str, Any]) -> list[Parameter]:
    """Make ``strategy`` the first parameter and make sure dense FedAvg is one of its choices."""
    strategy = next((p for p in parameters if p.name == "strategy"), None)
    if strategy is None:
        chosen = fixed.get("strategy", ANCHOR_STRATEGY)
        strategy = Parameter("strategy", (chosen,), grid=(chosen,), default=chosen)
    if strategy.when:
        raise SpaceError("space", "[parameters.strategy] cannot be conditional")
    if ANCHOR_STRATEGY not in strategy.choices:
        strategy = dataclasses.replace(strategy, choices=(ANCHOR_STRATEGY, *strategy.choices))
    return [strategy] + [p for p in parameters if p.name != "strategy"]


def _check_values(space: SearchSpace) -> None:
    """Every fixed value and every parameter value (choices, range ends, grid) must be a valid run option."""
    strategies = space.parameters[0].choices
    for strategy in strategies:
        base = space.trial_options({"strategy": strategy})
        _validate(base, f"{space.source}: strategy {strategy}")
        for parameter in space.parameters[1:]:
            if strategy not in parameter.when.get("strategy", (strategy,)):
                continue
            values = set(parameter.choices or (parameter.low, parameter.high)) | set(parameter.grid)
            for value in sorted(values, key=repr):
                _validate({**base, parameter.name: value}, f"{space.source} [parameters.{parameter.name}]")


def _validate(options: dict[str, Any], where: str) -> None:
    try:
        settings_for(options, seed=0, out="")
    except (ConfigError, TypeError, ValueError) as exc:
        raise SpaceError("space", f"{where}: {exc}") from None


def settings_for(options: Mapping[str, Any], *, seed: int, out: str) -> RunSettings:
    """Checked ``RunSettings`` for one run of a trial (``out`` empty: not checked, not created)."""
    values: dict[str, Any] = {}
    for key, value in options.items():
        f = OPTION_FIELDS[key]
        if f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        expected = {"int": int, "float": float, "str": str, "bool": bool}[f.type]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(key, f"{value!r} is not a {f.type}")
        values[f.name] = value
    settings = RunSettings(**values, seed=seed, out=out or "runs/unchecked")
    settings.validate(check_out_dir=False)
    return settings
