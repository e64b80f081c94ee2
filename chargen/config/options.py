"""One definition per option: config dataclass fields carry their flag, help, checks and resume rule.

A config field is declared with :func:`option`::

    hidden_size: int = option(256, "hidden size", flag="hidden", minimum=1)

and everything else is derived from that one line: the command-line flag and
its help (:func:`add_flags`), the checks run in the dataclass's
``__post_init__`` (:func:`check_fields`), the keys a TOML file may hold and
their types (:func:`load_toml`), and whether the option may change when a run
is resumed (:func:`resumable`). The value type is the field's annotation.

This module imports nothing from chargen but the error type.
"""

from __future__ import annotations

import argparse
import itertools
import math
import numbers
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ChargenError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_T = TypeVar("_T")


@dataclass(frozen=True)
class Spec:
    """What a config field means on the command line and in files."""

    help: str
    flag: str  # without the leading dashes
    kind: type  # bool, int, float or str
    optional: bool  # None is allowed (it means "not set" / "derived")
    default: Any
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None  # value >= minimum
    above: float | None = None  # value > above
    below: float | None = None  # value < below
    maximum: float | None = None  # value <= maximum
    resumable: bool = False  # may change when a run is resumed
    group: str | None = None  # the heading of its flag in --help
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None  # text (flag or TOML string) -> value

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable (a phrase such as "must be at least 1, got 0"), or None."""
        if value is None:
            return None if self.optional else f"must be set, got {value!r}"
        kind = self.kind
        if kind is bool and not isinstance(value, bool):
            return f"must be true or false, got {value!r}"
        if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, (int, bool)):
            return f"must be a Python int, got {value!r}: pass int(...) of it"  # numpy's integers, say
        if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            return f"must be a whole number, got {value!r}"
        if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool) or not _finite(value)):
            return f"must be a finite number, got {value!r}"
        if kind is str and not isinstance(value, str):
            return f"must be text, got {value!r}"
        if kind is tuple and not (isinstance(value, tuple) and all(isinstance(v, str) and v for v in value)):
            return f"must be non-empty text, got {value!r}"
        if kind is list:
            return _increasing_problem(value, self.minimum, self.maximum)
        if kind is dict:
            return _bias_problem(value, self.minimum, self.maximum)
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}, got {value!r}"
        return self._range_problem(value)

    def _range_problem(self, value: Any) -> str | None:
        low_ok = (self.minimum is None or value >= self.minimum) and (self.above is None or value > self.above)
        high_ok = (self.below is None or value < self.below) and (self.maximum is None or value <= self.maximum)
        if low_ok and high_ok:
            return None
        low = self.minimum if self.minimum is not None else self.above
        high = self.below if self.below is not None else self.maximum
        if low is not None and high is not None:
            left = "[" if self.minimum is not None else "("
            right = ")" if self.below is not None else "]"
            return f"must be in {left}{_num(low)}, {_num(high)}{right}, got {value!r}"
        if self.minimum is not None:
            return f"must be at least {_num(self.minimum)}, got {value!r}"
        if self.above is not None:
            return f"must be greater than {_num(self.above)}, got {value!r}"
        assert high is not None  # neither bound below is set, so a bound above is what failed
        return f"must be at most {_num(high)}, got {value!r}"


def _increasing_problem(value: Any, minimum: float | None, maximum: float | None) -> str | None:
    """A list option (``--cutoffs 300,1000``): whole numbers, strictly increasing, from ``minimum`` to
    ``maximum``."""
    if not (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return f"must be whole numbers separated by commas, such as 300,1000, got {value!r}"
    if any(b <= a for a, b in itertools.pairwise(value)):
        return f"must increase from one number to the next, got {','.join(map(str, value))}"
    if minimum is not None and value[0] < minimum:
        return f"must start at {_num(minimum)} or more, got {','.join(map(str, value))}"
    if maximum is not None and value[-1] > maximum:
        return f"must each be at most {maximum:,}, got {','.join(map(str, value))}"
    return None


def _finite(x: float) -> bool:
    """Whether a number is finite as a float (a whole number too large for one is not)."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _bias_problem(value: Any, minimum: float | None, maximum: float | None) -> str | None:
    """A bias per character (``{"e": -5.0}``): keys of one character, finite numbers from ``minimum`` to
    ``maximum``."""
    if not isinstance(value, dict):
        return f"must be a dict of characters to numbers, such as {{'e': -5}}, got {value!r}"
    for char, bias in value.items():
        if not isinstance(char, str) or len(char) != 1:
            return f"must have one character per key, got the key {char!r}"
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not _finite(bias):
            return f"must give {char!r} a finite number, got {bias!r}"
        if (minimum is not None and bias < minimum) or (maximum is not None and bias > maximum):
            return f"must give each character a number in [{_num(minimum or 0)}, {_num(maximum or 0)}], got {bias!r} for {char!r}"
    return None


def parse_int_list(text: str | Sequence[int]) -> list[int]:
    """``"300,1000"`` -> [300, 1000] (spaces and ``_`` between digits allowed); a list passes through."""
    if isinstance(text, (list, tuple)):
        return list(text)
    words = [w.strip() for w in str(text).split(",")]
    if not all(re.fullmatch(r"[0-9]+(_[0-9]+)*", w) for w in words):
        raise ChargenError(f"must be whole numbers separated by commas, such as 300,1000, got {text!r}")
    return [int(w.replace("_", "")) for w in words]


def _num(x: float) -> str:
    if isinstance(x, int) and x >= 2**31 and (x + 1) & x == 0:  # 2**63 - 1 reads better than its digits
        return f"2**{(x + 1).bit_length() - 1} - 1"
    return str(int(x)) if float(x).is_integer() else str(x)


def option(
    default: _T,
    help: str,
    *,
    flag: str | None = None,
    choices: Iterable[Any] | None = None,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    maximum: float | None = None,
    resumable: bool = False,
    group: str | None = None,
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
) -> _T:
    """A dataclass field that is also a user-facing option (see the module docstring)."""
    meta = dict(
        help=help,
        flag=flag,
        choices=tuple(choices) if choices else None,
        minimum=minimum,
        above=above,
        below=below,
        maximum=maximum,
        resumable=resumable,
        group=group,
        metavar=metavar,
        parse=parse,
    )
    return field(default=default, metadata={"option": meta})


@cache
def specs(cls: type[DataclassInstance]) -> dict[str, Spec]:
    """``{field name: Spec}`` for the option fields of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        meta = f.metadata.get("option")
        if meta is None:
            continue
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
        if optional:
            hint = next(a for a in args if a is not type(None))
        kind = typing.get_origin(hint) or hint
        default = f.default if f.default is not MISSING else None
        out[f.name] = Spec(
            **{**meta, "flag": meta["flag"] or f.name.replace("_", "-")}, kind=kind, optional=optional, default=default
        )
    return out


def check_fields(config: DataclassInstance, *, by: str = "flag") -> None:
    """Check every option field of a config dataclass instance; the first problem is a ChargenError
    naming the option by its flag (``--hidden``) or, with ``by="name"``, by its Python name."""
    for name, spec in specs(type(config)).items():
        problem = spec.problem(getattr(config, name))
        if problem:
            raise ChargenError(f"{_dashes(spec.flag) if by == 'flag' else name} {problem}")


def _dashes(flag: str) -> str:
    return f"-{flag}" if len(flag) == 1 else f"--{flag}"


def resumable(cls: type[DataclassInstance]) -> set[str]:
    """The fields of ``cls`` that may change when a run is resumed."""
    return {name for name, spec in specs(cls).items() if spec.resumable}


def keys(*classes: type[DataclassInstance]) -> dict[str, str]:
    """Every spelling a user may give an option (flag or field name, dashes or underscores) -> field."""
    table = {}
    for cls in classes:
        for name, spec in specs(cls).items():
            for spelling in (name, spec.flag):
                table[spelling.replace("-", "_")] = name
    return table


def canonical(key: str, table: dict[str, str]) -> str | None:
    """The field a user's key names, or None."""
    return table.get(key.replace("-", "_"))


# --------------------------------------------------------------------------- the command line


def add_flags(parser: argparse.ArgumentParser, cls: type[DataclassInstance]) -> None:
    """Add one flag per option field of ``cls`` to an argparse parser, under its group's heading.

    Flags default to ``argparse.SUPPRESS``, so the parsed namespace holds only
    the options the user gave: the dataclass (or a preset, or a TOML file)
    supplies the rest, and a resume can tell what was asked for.
    """
    groups: dict[str | None, Any] = {None: parser}
    for name, spec in specs(cls).items():
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        target = groups[spec.group]
        kwargs: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=_help(spec))
        if spec.kind is bool and spec.default:  # on by default: --NAME and --no-NAME
            kwargs.update(action=argparse.BooleanOptionalAction)
        elif spec.kind is bool:  # off by default: --NAME turns it on
            kwargs.update(action="store_const", const=True)
        elif spec.kind is tuple:  # repeatable: each use adds one value
            kwargs.update(action="append", type=spec.parse or str, metavar=spec.metavar)
        elif spec.kind is dict:  # repeatable: each use adds one (key, value) pair
            kwargs.update(action="append", type=_flag_type(spec), metavar=spec.metavar)
        else:
            kwargs.update(type=_flag_type(spec), metavar=spec.metavar)
            if spec.choices:
                kwargs.update(choices=spec.choices, metavar=None)
        target.add_argument(_dashes(spec.flag), **kwargs)


def given(args: argparse.Namespace, cls: type[DataclassInstance]) -> dict[str, Any]:
    """The options of ``cls`` that the user gave on the command line (see :func:`add_flags`)."""
    return {name: getattr(args, name) for name in specs(cls) if hasattr(args, name)}


def _help(spec: Spec) -> str:
    if spec.kind in (bool, tuple) or spec.default is None or "default" in spec.help:
        return spec.help
    return f"{spec.help} (default {spec.default})"


def _flag_type(spec: Spec) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if spec.parse is not None:
            try:
                value = spec.parse(text)
            except ChargenError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        elif spec.choices is not None:
            return text  # argparse checks choices itself, with its own message
        else:
            try:
                value = spec.kind(text)
            except ValueError:
                what = {int: "a whole number", float: "a number"}.get(spec.kind, "a value")
                raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        problem = spec.problem(dict([value]) if spec.kind is dict else value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    convert.__name__ = spec.kind.__name__  # argparse names the type in its messages
    return convert


# --------------------------------------------------------------------------- TOML files


def load_toml(
    path: str | os.PathLike[str], classes: Sequence[type[DataclassInstance]], extra: typing.Iterable[str] = ()
) -> dict[str, Any]:
    """Options from a TOML file whose keys are flag names, each checked like its flag.

    Returns ``{field name: value}``; ``extra`` names further keys passed through
    unchecked (``source``, ``preset``).
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ChargenError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ChargenError(f"config file {path} is not valid TOML: {e}") from None
    table = keys(*classes)
    by_name = {name: spec for cls in classes for name, spec in specs(cls).items()}
    out = {}
    for key, value in raw.items():
        if key in extra:
            out[key] = value
            continue
        name = canonical(key, table)
        if name is None:
            negated = canonical(key[3:], table) if key[:3] in ("no-", "no_") else None
            if negated is not None and by_name[negated].kind is bool:
                raise ChargenError(f"config file {path}: unknown key {key!r}; write {negated} = false")
            raise ChargenError(f"config file {path}: unknown key {key!r}; keys are the flag names of chargen train")
        spec = by_name[name]
        if spec.parse is not None and isinstance(value, str):
            try:
                value = spec.parse(value)
            except ChargenError as e:
                raise ChargenError(f"config file {path}: {key} {e}") from None
        problem = spec.problem(value)
        if problem:
            raise ChargenError(f"config file {path}: {key} {problem}")
        out[name] = value
    return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$")


def parse_duration(text: str | float) -> float:
    """``"90"``, ``"90s"``, ``"5m"``, ``"1.5h"`` -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise ChargenError(f"must be a duration such as 90s, 5m or 1h, got {text!r}")
    unit = {"s": 1, "sec": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * unit
