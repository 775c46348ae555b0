"""Build pluggable pieces (codecs, strategies, selectors) by registered name.

Each plugin package keeps an explicit ``dict`` from name to class and builds
through :func:`build`, so that every piece reports a wrong name or parameter the
same way. The parameters a plugin accepts are exactly the keyword parameters of
its constructor; the constructor validates their values with the ``check_*``
helpers below, which name the plugin, the parameter and what is allowed.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Collection, Mapping
from typing import Any

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def build(kind: str, registry: Mapping[str, type], name: str, params: Mapping[str, Any]) -> Any:
    """Instantiate ``registry[name](**params)``.

    ``kind`` ("codec", "strategy", ...) only words the errors. Raises
    ``ValueError`` listing the allowed names for an unknown ``name`` and the
    allowed parameters for an unknown parameter; value errors come from the
    plugin's constructor.
    """
    try:
        cls = registry[name]
    except KeyError:
        raise ValueError(f"unknown {kind} '{name}'; choose one of: {', '.join(registry)}") from None
    allowed = [p.name for p in inspect.signature(cls).parameters.values() if p.kind in _NAMED]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"{kind} '{name}': unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed) or '(none)'}"
        )
    return cls(**params)


def check_number(
    owner: str,
    param: str,
    value: Any,
    *,
    integer: bool = False,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Any:
    """Return ``value`` as ``int`` (``integer``) or ``float`` if it lies in the interval.

    ``lo``/``hi`` bound it (``None`` = unbounded), excluded when ``lo_open`` /
    ``hi_open``. Otherwise raise ``ValueError`` like
    ``"strategy 'krum': f must be an integer >= 0, got -1"``; ``owner`` is the
    ``"kind 'name'"`` prefix. Booleans and NaN are rejected.
    """
    if lo is not None and hi is not None:
        where = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        where = f"{'>' if lo_open else '>='} {lo}"
    elif hi is not None:
        where = f"{'<' if hi_open else '<='} {hi}"
    else:
        where = "finite"
    what = "an integer" if integer else "a number"
    error = ValueError(f"{owner}: {param} must be {what} {where}, got {value!r}")
    # bool is an int subclass; True as a count or a rate is always a config mistake
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # Real admits NumPy scalars
        raise error
    if integer and not float(value).is_integer():
        raise error
    number = int(float(value)) if integer else float(value)
    if not math.isfinite(number):
        raise error
    if lo is not None and (number < lo or (lo_open and number == lo)):
        raise error
    if hi is not None and (number > hi or (hi_open and number == hi)):
        raise error
    return number


def check_choice(owner: str, param: str, value: Any, choices: Collection[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{owner}: {param} must be one of {allowed}, got {value!r}")
    return value
