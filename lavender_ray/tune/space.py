"""The search space of `lavender tune`: dotted config keys -> sampling expressions, in YAML.

    tune:
      search_space:
        loss.lambda: loguniform(1, 30)
        optim.lr: loguniform(1.0e-5, 1.0e-3)
        lora.r: choice([4, 8, 16])
        aligner.variant: grid([light, sim, deep])

Expressions (arguments are YAML flow values, as in `--set`; bounds as in Ray Tune):

    uniform(low, high)        float in [low, high)
    quniform(low, high, q)    float in [low, high], a multiple of q
    loguniform(low, high)     float in [low, high), log-uniform, 0 < low
    randint(low, high)        int in [low, high)      (high excluded)
    lograndint(low, high)     int in [low, high), log-uniform, 0 < low
    choice([a, b, ...])       one of the values, sampled
    grid([a, b, ...])         every value (`tune.num_samples` repeats the whole grid)

`parse_search_space` checks every key against the config tree and every bound and option by
applying it to the base config through the same override parser as `--set`, so a bad space fails
before any trial starts, naming the key, the expression and what is allowed. A trial's values go
back into the config with `apply_overrides` (`lavender_ray.tune.trial.trial_config`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml
from ray import tune

from lavender_ray.config import ConfigError, LavenderConfig, apply_overrides

EXPRESSION = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$", re.DOTALL)

# function -> (argument kinds, sampled type); "num" a number, "list" a non-empty YAML list
SIGNATURES: dict[str, tuple[tuple[str, ...], str]] = {
    "uniform": (("num", "num"), "float"),
    "quniform": (("num", "num", "num"), "float"),
    "loguniform": (("num", "num"), "float"),
    "randint": (("num", "num"), "int"),
    "lograndint": (("num", "num"), "int"),
    "choice": (("list",), "value"),
    "grid": (("list",), "value"),
}
USAGE = (
    "uniform(low, high), quniform(low, high, q), loguniform(low, high), randint(low, high), "
    "lograndint(low, high), choice([a, b, ...]), grid([a, b, ...])"
)


@dataclass(frozen=True)
class Dimension:
    """One searched config key: `function(*args)` with validated, typed arguments."""

    key: str
    function: str
    args: tuple[Any, ...]

    def to_tune(self) -> Any:
        """The Ray Tune domain (`tune.loguniform(...)`, `tune.grid_search([...])`, ...)."""
        if self.function == "grid":
            return tune.grid_search(list(self.args[0]))
        if self.function == "choice":
            return tune.choice(list(self.args[0]))
        return getattr(tune, self.function)(*self.args)

    def largest(self) -> Any:
        """The largest value this dimension can give (None when its options are not all
        numbers): what GPU memory grows with, for the searched keys it depends on."""
        if self.function in ("choice", "grid"):
            options = self.args[0]
            numeric = all(isinstance(o, int | float) and not isinstance(o, bool) for o in options)
            return max(options) if numeric else None
        return _probes(self.function, self.args)[-1]


@dataclass(frozen=True)
class SearchSpace:
    """The parsed `tune.search_space`, in the order it was written."""

    dimensions: tuple[Dimension, ...]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def trial_count(self, num_samples: int) -> int:
        """Trials of a search with `num_samples` samples: each sample runs every grid point."""
        grids = [len(d.args[0]) for d in self.dimensions if d.function == "grid"]
        return num_samples * math.prod(grids)

    def largest(self) -> dict[str, Any]:
        """Dotted key -> the largest value of each numeric dimension (`Dimension.largest`)."""
        values = {d.key: d.largest() for d in self.dimensions}
        return {k: v for k, v in values.items() if v is not None}

    def param_space(self) -> dict[str, Any]:
        """Tune's `param_space`: dotted key -> domain; a trial's config is dotted key -> value."""
        return {d.key: d.to_tune() for d in self.dimensions}


def parse_search_space(search_space: dict[str, str], base: dict[str, Any]) -> SearchSpace:
    """Parse and validate `tune.search_space` against `base`, a resolved config dict."""
    if not search_space:
        raise ConfigError(
            "tune.search_space is empty: give dotted keys with expressions, e.g. "
            "--set 'tune.search_space={loss.lambda: \"loguniform(1, 30)\"}'; allowed: " + USAGE
        )
    return SearchSpace(tuple(parse_dimension(k, e, base) for k, e in search_space.items()))


def parse_dimension(key: str, expression: str, base: dict[str, Any]) -> Dimension:
    """One `key: expression` entry -> `Dimension`, every bound/option validated on `base`."""
    where = f"tune.search_space[{key!r}]={expression!r}"
    if key.startswith("tune."):
        raise ConfigError(f"{where}: the tune section cannot be searched")
    match = EXPRESSION.match(str(expression))
    if not match or match.group(1) not in SIGNATURES:
        raise ConfigError(
            f"{where} is not a search expression; allowed: {USAGE} "
            "(fixed values go in the preset or --set)"
        )
    function = match.group(1)
    kinds, sampled = SIGNATURES[function]
    args = _parse_args(where, match.group(2), kinds)
    if sampled == "value":
        options = [check_value(where, key, option, base) for option in args[0]]
        return Dimension(key, function, (tuple(options),))
    _check_range(where, function, args)
    for probe in _probes(function, args):
        check_value(where, key, probe, base)
    if sampled == "int":
        args = tuple(int(a) for a in args)
    return Dimension(key, function, args)


def check_value(where: str, key: str, value: Any, base: dict[str, Any]) -> Any:
    """`value` as the config types it at `key` (`'1e-4'` -> 0.0001), or `ConfigError`."""
    try:
        resolved = LavenderConfig.from_dict(apply_overrides(base, {key: value})).to_dict()
    except ConfigError as err:
        raise ConfigError(f"{where}: the value {value!r} does not fit the config: {err}") from None
    for part in key.split("."):
        resolved = resolved[part]
    return resolved


def _parse_args(where: str, text: str, kinds: tuple[str, ...]) -> tuple[Any, ...]:
    try:
        args = yaml.safe_load(f"[{text}]")
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: arguments are not YAML values ({err})") from None
    if len(args) != len(kinds):
        raise ConfigError(f"{where}: takes {len(kinds)} argument(s), got {len(args)}; {USAGE}")
    parsed = []
    for arg, kind in zip(args, kinds):
        if kind == "list":
            if not isinstance(arg, list) or not arg:
                raise ConfigError(f"{where}: expects a non-empty list [a, b, ...], got {arg!r}")
            parsed.append(arg)
        else:
            parsed.append(_number(where, arg))
    return tuple(parsed)


def _number(where: str, value: Any) -> float:
    """YAML reads `1e-4` as a string: numbers are accepted in either form."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    return int(number) if number.is_integer() and not isinstance(value, float) else number


def _check_range(where: str, function: str, args: tuple[Any, ...]) -> None:
    low, high = args[0], args[1]
    if not low < high:
        raise ConfigError(f"{where}: needs low < high, got low={low}, high={high}")
    if function.startswith("log") and low <= 0:
        raise ConfigError(f"{where}: a log scale needs 0 < low, got low={low}")
    if function.endswith("randint") and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: integer bounds expected, got low={low}, high={high}")
    if function == "quniform" and not args[2] > 0:
        raise ConfigError(f"{where}: the step q must be > 0, got {args[2]}")


def _probes(function: str, args: tuple[Any, ...]) -> list[Any]:
    """Values the domain can produce that the config must accept: both ends and, for float
    domains, a value with a fraction (an integer field cannot take a float domain)."""
    low, high = args[0], args[1]
    if function.endswith("randint"):
        return [int(low), int(high) - 1]
    top = high if function == "quniform" else math.nextafter(float(high), -math.inf)
    return [float(low), low + (high - low) / math.pi, top]
