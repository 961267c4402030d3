"""The words a configuration key's check is written in, shared by the run-file check
(``config_keys.py``) and the model schema (``models/config.py``), which both import it.

* a type spec: ``"int"``, ``"float"`` (an int too), ``"bool"``, ``"str"``, ``"list"``,
  ``"dict"``, ``"any"``, joined by ``|`` (``"int|null"``): ``type_of``, ``fits``, ``describe``;
* allowed values: None (any), a range (``">= 1"``, ``"> 0"``, ``"[0, 1)"``) or a tuple of
  choices: ``out_of_range``;
* ``ConfigError``, raised for a configuration that cannot work.
"""
import re

from omegaconf import DictConfig, ListConfig

ANY = "any"


class ConfigError(ValueError):
    """A run configuration that cannot work (a key nothing reads, a value of the wrong type, a
    missing file, ...); the message says what to change. launch.run_main prints it and exits
    with status 2."""


def type_of(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple, ListConfig)):
        return "list"
    if isinstance(value, (dict, DictConfig)):
        return "dict"
    return ANY


def fits(value, spec):
    allowed = spec.split("|")
    if ANY in allowed:
        return True
    kind = type_of(value)
    if kind in allowed:
        return True
    return "float" in allowed and kind == "int"


_TYPE_WORDS = {"int": "an integer", "float": "a number", "float|int": "a number", "bool": "true or false",
               "str": "a string", "list": "a list", "dict": "a mapping", "null": "null"}


def describe(spec):
    kinds = spec.split("|")
    if "float" in kinds:
        kinds = [k for k in kinds if k != "int"]
    return " or ".join(_TYPE_WORDS.get(t, t) for t in kinds)


_BOUND = re.compile(r"^(>=|>|<=|<) (\S+)$")
_INTERVAL = re.compile(r"^([\[(])(\S+), (\S+)([\])])$")


def out_of_range(value, allowed):
    """None if ``value`` is among the ``allowed`` values (a range such as ">= 1" or "[0, 1)",
    a tuple of choices, or None for any), else the allowed values in words. Null and values
    of another type are left to the type check."""
    if allowed is None or value is None:
        return None
    if isinstance(allowed, tuple):  # choices; of a list, for each of its items
        many = isinstance(value, (list, tuple, ListConfig))
        if all(v in allowed for v in (value if many else [value])):
            return None
        return ("items among " if many else "one of ") + ", ".join(map(repr, allowed))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    bound = _BOUND.match(allowed)
    if bound:
        op, limit = bound.group(1), float(bound.group(2))
        ok = {">=": value >= limit, ">": value > limit, "<=": value <= limit, "<": value < limit}[op]
    else:
        low_side, low, high, high_side = _INTERVAL.match(allowed).groups()
        low, high = float(low), float(high)
        ok = (value >= low if low_side == "[" else value > low) and (
            value <= high if high_side == "]" else value < high)
    return None if ok else allowed  # NaN fails every comparison: out of range


def merge_spec(old, value):
    """The type spec ``old`` widened by the type of one more default ``value``. Numbers are one
    kind (a yaml writes `drop_path_rate: 0` where the key takes any number)."""
    kind = type_of(value)
    if kind == ANY or old == ANY:
        return ANY
    kinds = set(old.split("|")) if old else set()
    kinds.update(("int", "float") if kind in ("int", "float") else (kind,))
    return "|".join(sorted(kinds))

