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


# Every number a config holds is finite and at most this large in magnitude (1e18: an exabyte, a
# billion seconds), whatever its field: beyond it a simulator time or a size has no physical
# meaning and arithmetic on it overflows. A field narrows it with `le`/`ge`.
MAX_MAGNITUDE = 1e18


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
    if isinstance(value, (int, float)) and not abs(value) <= MAX_MAGNITUDE:  # NaN and inf fail too
        shown = (repr(value) if isinstance(value, float) else f"{value:.3e}" if value.bit_length() < 1000
                 else f"an integer of about {int(value.bit_length() * 0.30103)} digits")
        raise fail(path, f"must be a finite number{_range_suffix(md)}, at most {MAX_MAGNITUDE:g} in magnitude, "
                         f"got {shown}")


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
    if tp is dict:  # a free-form mapping (checked by its owner's validate)
        if not isinstance(value, dict):
            raise fail(path, f"must be a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(path, f"must be true or false, got {value!r}")
        return value
    if tp in (int, float) and isinstance(value, str) and _YAML12_NUMBER.fullmatch(value.strip()):
        value = float(value)  # '1e-6' and '4e9' are numbers in YAML 1.2 (and to TRL users), strings to PyYAML
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_MAGNITUDE:
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


_YAML12_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")  # exponent forms only


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


# Limits of the safe YAML loader (what no hand-written config comes near): the nodes that
# aliases may add when expanded ("billion laughs" adds 10^9), how deep mappings and lists may
# nest (the composer recurses per level), and how large a file may be.
MAX_ALIAS_NODES = 10_000
MAX_YAML_DEPTH = 64
MAX_YAML_BYTES = 16 * 2**20


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys, nesting beyond MAX_YAML_DEPTH and aliases
    whose expansion would add more than MAX_ALIAS_NODES nodes (or refer to themselves)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _YamlLimit(f"nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeConstructor says so itself
                continue
            if duplicate:
                raise _YamlLimit(f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _YamlLimit(yaml.YAMLError):
    def __init__(self, problem: str, mark=None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class YamlLimitError(UserError):
    """YAML refused for what it would do (expand, nest, repeat a key), not for its syntax."""


def _check_aliases(root) -> None:
    """Refuse a document whose aliases expand to more than MAX_ALIAS_NODES nodes beyond those
    written, or that contains itself. Each node's expanded size is counted once (memoised), so
    the check is linear in the file even when the expansion is exponential."""
    size: dict[int, int] = {}  # expanded size of each node done, by id
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            continue
        if key in size or key in on_path:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise _YamlLimit("an alias refers to the node that holds it (a recursive structure)",
                                 child.start_mark)
            stack.append((child, False))
    if size[id(root)] - len(size) > MAX_ALIAS_NODES:
        raise _YamlLimit(f"aliases expand to {size[id(root)]:,} nodes, more than {MAX_ALIAS_NODES:,} beyond "
                         f"the {len(size):,} written")


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def parse_yaml(text: str, where: str) -> Any:
    """YAML text to data with the safe loader; any problem is a UserError naming `where`."""
    loader = None
    try:
        loader = _SafeLoader(text)  # its reader already refuses control characters
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = (getattr(e, "problem", None) or str(e)).splitlines()[0]  # a ReaderError spans two lines
        raise (YamlLimitError if isinstance(e, _YamlLimit) else UserError)(
            f"{where}: invalid YAML{at}: {problem}") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise UserError(f"{where}: invalid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:  # a construct that nests without the composer's help (e.g. a deep flow key)
        raise UserError(f"{where}: invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: str) -> Any:
    """Read a YAML file with the safe loader (see `parse_yaml`); a missing, binary, oversized
    or invalid file is a UserError naming it."""
    try:
        if os.path.getsize(path) > MAX_YAML_BYTES:
            raise UserError(f"{path}: larger than {MAX_YAML_BYTES // 2**20} MiB, not a config file")
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except PermissionError:
        raise UserError(f"{path}: not readable (permission denied)") from None
    if "\x00" in text:
        raise UserError(f"{path}: not a text file (holds NUL bytes)")
    return parse_yaml(text, path)


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
    value = yaml_value(raw, f"--set {key}")
    try:
        set_in(data, key, value)
    except UserError as e:
        raise UserError(f"--set {e}") from None


def yaml_value(text: str, where: str) -> Any:
    """A command-line value as YAML reads it (numbers, booleans, lists, mappings); text that is
    not valid YAML stays a string. Aliases, depth and duplicate keys are checked as in files."""
    if text == "":
        return ""
    try:
        return parse_yaml(text, where)
    except YamlLimitError:
        raise
    except UserError:
        return text


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
