"""Typed, validated configs from plain dicts (YAML), with errors that name the field.

A config is a dataclass whose fields carry `meta(...)`: help text, an allowed range or
choices, and optionally a parser for human units. `from_dict` checks every key (unknown
keys are errors), every type and every range, and raises `UserError` naming the field
path, the value and what is allowed. Nothing is clamped.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import MISSING, field
from typing import Any, Callable

import yaml

from hdc.errors import UserError
from hdc.units import UnitError


def meta(help: str, *, default: Any = MISSING, default_factory: Any = MISSING,
         ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None, choices: tuple | None = None,
         parse: Callable[[Any], Any] | None = None, unit: str | None = None) -> Any:
    """A dataclass field with validation metadata."""
    md = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices,
          "parse": parse, "unit": unit}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=md)
    return field(default=default, metadata=md)


def fail(path: str, msg: str) -> UserError:
    return UserError(f"{path}: {msg}" if path else msg)


def _describe_range(md: dict) -> str:
    parts = []
    if md.get("ge") is not None:
        parts.append(f">= {md['ge']}")
    if md.get("gt") is not None:
        parts.append(f"> {md['gt']}")
    if md.get("le") is not None:
        parts.append(f"<= {md['le']}")
    if md.get("lt") is not None:
        parts.append(f"< {md['lt']}")
    return " and ".join(parts)


def check_range(path: str, value: float, md: dict, kind: str = "") -> None:
    ok = True
    if md.get("ge") is not None and not value >= md["ge"]:
        ok = False
    if md.get("gt") is not None and not value > md["gt"]:
        ok = False
    if md.get("le") is not None and not value <= md["le"]:
        ok = False
    if md.get("lt") is not None and not value < md["lt"]:
        ok = False
    if not ok:
        raise fail(path, f"must be {kind}{_describe_range(md)}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def convert(path: str, value: Any, tp: Any, md: dict | None = None) -> Any:
    """Check/convert one value against a type annotation and field metadata."""
    md = md or {}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return convert(path, value, a, md)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if len(errors) == 1 else f"{path}: invalid value {value!r}")
    if md.get("parse") is not None and not dataclasses.is_dataclass(tp):
        try:
            out = md["parse"](value)
        except (UnitError, ValueError, TypeError) as e:
            raise fail(path, str(e)) from None
        check_range(path, out, md)
        return out
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail(path, f"must be a list, got {value!r}")
        inner = args[0] if args else Any
        return (list if origin is list else tuple)(
            convert(f"{path}[{i}]", v, inner, {k: md.get(k) for k in ("ge", "gt", "le", "lt", "choices")})
            for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise fail(path, f"must be a mapping, got {value!r}")
        vt = args[1] if len(args) > 1 else Any
        return {str(k): convert(f"{path}.{k}", v, vt) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(path, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise fail(path, f"must be an integer{_range_suffix(md)}, got {value!r}")
        _check_choices(path, value, md)
        check_range(path, value, md, "an integer ")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(path, f"must be a number{_range_suffix(md)}, got {value!r}")
        value = float(value)
        if value != value:
            raise fail(path, "must be a number, got NaN")
        check_range(path, value, md, "a number ")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise fail(path, f"must be a string, got {value!r}")
        _check_choices(path, value, md)
        return value
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise fail(path, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _range_suffix(md: dict) -> str:
    r = _describe_range(md)
    return f" {r}" if r else ""


def _check_choices(path: str, value: Any, md: dict) -> None:
    if md.get("choices") is not None and value not in md["choices"]:
        raise fail(path, f"must be one of {', '.join(map(str, md['choices']))}, got {value!r}")


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from `data`, validating every field; unknown keys are errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise fail(path, f"must be a mapping with keys {', '.join(f.name for f in dataclasses.fields(cls))}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]  # shown as typed, or quoted when it is no plain name (e.g. holds a newline)
        raise fail(_join(path, k if isinstance(k, str) and re.fullmatch(r"[\w.\-]+", k) else repr(k)),
                   f"unknown key; allowed keys are {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        sub = _join(path, name)
        if name in data:
            kwargs[name] = convert(sub, data[name], hints[name], dict(f.metadata))
        elif f.default is MISSING and f.default_factory is MISSING:
            raise fail(sub, f"is required ({f.metadata.get('help', '')})".replace(" ()", ""))
    obj = cls(**kwargs)
    post = getattr(obj, "validate", None)
    if callable(post):
        post(path)
    return obj


def convert_fields(obj: Any, path: str) -> None:
    """Run `convert` (types, ranges, choices, parsers) on every field of a dataclass built in
    Python, as from_dict does for a file; the converted values replace the given ones."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, convert(f"{path}.{f.name}", getattr(obj, f.name), hints[f.name], dict(f.metadata)))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def to_dict(obj: Any) -> Any:
    """A dataclass config back to plain data (what `recipe show` prints)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str) -> Any:
    """Read a YAML file; a missing file or a syntax error is a UserError."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def yaml_names(folder: str) -> list[str]:
    """Preset names: the .yaml files of a folder, without the extension."""
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))


def preset_source(ref: str, folder: str, kind: str) -> str:
    """The file a `PATH|PRESET` argument names: an existing path, or `folder/ref.yaml`."""
    if os.path.exists(ref):
        return ref
    if ref in yaml_names(folder):
        return os.path.join(folder, f"{ref}.yaml")
    raise UserError(f"{kind} {ref!r}: no such file and no such preset (presets: {', '.join(yaml_names(folder))})")


_PATH_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_\-]*)((?:\[\d+\])*)$")


def set_in(root: dict, dotted: str, value: Any) -> Any:
    """Set `a.b[2].c` inside nested dicts and lists (a missing mapping is created, a missing
    list item is an error naming the path); returns the dict or list that received `value`."""
    tokens: list = []
    for part in dotted.split("."):
        m = _PATH_PART.match(part)
        if not m:
            raise UserError(f"{dotted}: {part!r} is not a key or key[index]")
        tokens += [m.group(1), *(int(x) for x in re.findall(r"\[(\d+)\]", m.group(2)))]

    def shown(n: int) -> str:  # the path up to token n, as typed
        return "".join(f"[{t}]" if isinstance(t, int) else f".{t}" for t in tokens[:n]).lstrip(".") or "root"

    cur: Any = root
    for n, tok in enumerate(tokens):
        if isinstance(tok, str) and not isinstance(cur, dict):
            raise UserError(f"{dotted}: {shown(n)} is not a mapping")
        if isinstance(tok, int) and (not isinstance(cur, list) or tok >= len(cur)):
            have = f"it has {len(cur)} items" if isinstance(cur, list) else "not a list"
            raise UserError(f"{dotted}: index [{tok}] out of range for {shown(n)} ({have})")
        if n == len(tokens) - 1:
            cur[tok] = value
            return cur
        if isinstance(tok, str) and cur.get(tok) is None:
            if isinstance(tokens[n + 1], int):
                raise UserError(f"{dotted}: no list {shown(n + 1)} here")
            cur[tok] = {}
        cur = cur[tok]
    return cur


def set_dotted(data: dict, assignment: str) -> None:
    """Apply a `key.sub=value` or `key[i].sub=value` override (value parsed as YAML) to nested data."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise UserError(f"--set {assignment!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    try:
        set_in(data, key, value)
    except UserError as e:
        raise UserError(f"--set {e}") from None


def help_table(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) rows for README/--help config references."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = _join(prefix, f.name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(help_table(tp, name))
            continue
        if f.default is not MISSING:
            default = repr(f.default)
        elif f.default_factory is not MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        rows.append((name, _type_name(tp), default, f.metadata.get("help", "")))
    return rows
