"""Nested configuration dataclasses from JSON: one recursive, validated loader.

Used by every config object that users write as JSON (training, preprocessing protocol);
it imports nothing heavy, so torch-free code can load configs too.

``load_config(TrainConfig, {"schedule": {"iterations": 300}})`` merges a *partial* nested
mapping over a base instance (the defaults when none is given): every key must name a
field, every value must have the field's type (tuples from JSON lists, floats from ints,
``None`` only where the annotation allows it), and nested dataclasses are loaded the same
way. Errors are :class:`~rada.errors.InputError` with one line naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from rada.errors import InputError

T = TypeVar("T")


def load_config(cls: type[T], raw: Mapping[str, Any], base: T | None = None, where: str = "") -> T:
    """``cls`` built from ``raw`` merged over ``base`` (default: ``cls()``), recursively.

    Args:
        cls: a dataclass type whose fields are annotated with plain types, tuples,
            optionals and nested dataclasses.
        raw: a JSON-like mapping; missing keys keep ``base``'s values.
        base: the instance to update; ``cls()`` when None.
        where: dotted prefix of ``raw`` in the whole config (for error messages).

    Returns:
        A new ``cls`` instance.

    Raises:
        InputError: an unknown key or a value of the wrong type.
    """
    if not isinstance(raw, Mapping):
        raise InputError(f"config {where.rstrip('.') or cls.__name__}: expected an object, got {type(raw).__name__}")
    base = base if base is not None else cls()
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - names)
    if unknown:
        raise InputError(f"config: unknown key '{where}{unknown[0]}'; allowed: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(hints[k], v, getattr(base, k), f"{where}{k}") for k, v in raw.items()}
    return dataclasses.replace(base, **values)  # type: ignore[type-var]


def _coerce(tp: Any, value: Any, current: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return load_config(tp, value, current if isinstance(current, tp) else None, f"{where}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, current, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if errors else f"config {where}: cannot be {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config {where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, None, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise InputError(f"config {where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, None, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"config {where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"config {where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"config {where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"config {where}: expected a string, got {value!r}")
        return value
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready nested dict of a config dataclass (tuples become lists).

    Args:
        config: a (nested) config dataclass instance.

    Returns:
        Plain dicts, lists and scalars; ``load_config(type(config), result)`` gives ``config`` back.
    """
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def read_config_file(cls: type[T], path: str | os.PathLike, base: T | None = None) -> T:
    """``cls`` from a JSON file holding a partial, nested config, merged over ``base``.

    Args:
        cls: the config dataclass (e.g. ``TrainConfig``).
        path: the JSON file.
        base: the instance to update; ``cls()`` when None.

    Returns:
        A new ``cls`` instance.

    Raises:
        InputError: the file cannot be read or is not JSON, an unknown key, a wrong type.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot use config {path}: {exc}") from None
    return load_config(cls, raw, base)


__all__ = ["load_config", "config_to_dict", "read_config_file"]
