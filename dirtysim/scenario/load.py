"""Load a scenario file: YAML -> overrides -> validated ``Scenario``.

Every problem is reported before anything runs, as
``FILE:LINE: key.path: message (got VALUE; allowed ...)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from .schema import Scenario


class ScenarioError(ValueError):
    """A scenario file (or an override) is not valid. ``str()`` is the user-facing report."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every key path to the 1-based line where it appears; reject duplicate keys."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            if sub in out:
                raise _Duplicate(".".join(map(str, sub)), out[sub], key.start_mark.line + 1)
            out[sub] = key.start_mark.line + 1
            _line_map(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out)
    return out


class _Duplicate(Exception):
    def __init__(self, key: str, first: int, again: int):
        self.key, self.first, self.again = key, first, again


def _read_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot read the file: {exc.strerror}"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        text = exc.problem or exc.context
        if exc.problem and exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
            text += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
        raise ScenarioError([f"{path}:{line}: YAML syntax error: {text}"]) from None
    if node is None or data is None:
        raise ScenarioError([f"{path}:1: the file is empty (a scenario needs at least machine.memory and machine.vcpus)"])
    if not isinstance(data, dict):
        raise ScenarioError([f"{path}:1: the top level must be a mapping of keys (got {type(data).__name__})"])
    try:
        return data, _line_map(node)
    except _Duplicate as dup:
        raise ScenarioError([f"{path}:{dup.again}: {dup.key}: duplicate key (first given on line {dup.first})"]) from None


def _apply_override(data: dict, text: str) -> tuple:
    """Apply one ``--set key.path=value`` (value parsed as YAML). Returns the path."""
    if "=" not in text:
        raise ScenarioError([f"--set {text}: expected key.path=value"])
    key, raw = text.split("=", 1)
    path = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
    value = yaml.safe_load(raw) if raw.strip() else None
    target = data
    for part in path[:-1]:
        if isinstance(target, list) and isinstance(part, int) and part < len(target):
            target = target[part]
        elif isinstance(target, dict):
            target = target.setdefault(part, {})
        else:
            raise ScenarioError([f"--set {key}: {'.'.join(map(str, path))} does not name a key of the scenario"])
    if isinstance(target, list) and isinstance(path[-1], int) and path[-1] < len(target):
        target[path[-1]] = value
    elif isinstance(target, dict):
        target[path[-1]] = value
    else:
        raise ScenarioError([f"--set {key}: {'.'.join(map(str, path))} does not name a key of the scenario"])
    return path


def _model_at(loc: tuple, data: Any) -> type[BaseModel] | None:
    """The pydantic model whose field list applies at ``loc`` (for 'allowed keys')."""
    model: Any = Scenario
    for part in loc:
        if isinstance(part, int):
            data = data[part] if isinstance(data, list) and part < len(data) else None
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        data = data.get(part) if isinstance(data, dict) else None
        model = _resolve(ann, data)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _resolve(ann: Any, data: Any) -> Any:
    """Strip Optional/list/discriminated unions down to the model that applies to ``data``."""
    args = getattr(ann, "__args__", ())
    metadata = getattr(ann, "__metadata__", None)
    if metadata is not None:  # Annotated[...]
        return _resolve(ann.__origin__, data)
    if getattr(ann, "__origin__", None) is list:
        return _resolve(args[0], None)
    if args:
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        kind = data.get("kind") if isinstance(data, dict) else None
        for m in models:
            if "kind" in m.model_fields and kind in getattr(m.model_fields["kind"].annotation, "__args__", ()):
                return m
        return models[0] if len(models) == 1 else ann
    return ann


def _got(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    text = json.dumps(value)
    return text if len(text) <= 60 else type(value).__name__


def _lookup(data: Any, loc: Iterable) -> tuple[bool, Any]:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return False, None
    return True, data


_TYPE_ERRORS = {
    "int_type": "not an integer", "int_parsing": "not an integer", "int_from_float": "not an integer",
    "float_type": "not a number", "float_parsing": "not a number", "bool_type": "not a boolean",
    "bool_parsing": "not a boolean", "string_type": "not a string", "dict_type": "not a mapping",
    "model_type": "not a mapping", "list_type": "not a list",
}
_RANGE_ERRORS = ("greater_than_equal", "less_than_equal", "greater_than", "less_than")


def _bounds(loc: tuple, data: Any) -> str | None:
    """The whole allowed range of a numeric field, e.g. '6 .. 31' (from its ge/le/gt/lt constraints)."""
    field_name = next((p for p in reversed(loc) if isinstance(p, str)), None)
    model = _model_at(loc[:-1], data)
    if model is None or field_name not in model.model_fields:
        return None
    limits = {}
    for meta in model.model_fields[field_name].metadata:
        for attr in ("ge", "le", "gt", "lt"):
            if getattr(meta, attr, None) is not None:
                limits[attr] = getattr(meta, attr)
    lo = f"{limits['ge']}" if "ge" in limits else (f"> {limits['gt']}" if "gt" in limits else None)
    hi = f"{limits['le']}" if "le" in limits else (f"< {limits['lt']}" if "lt" in limits else None)
    if "ge" in limits and "le" in limits:
        return f"{lo} .. {hi}"
    return " and ".join(x if x.startswith(("<", ">")) else (">= " + x if x == lo else "<= " + x)
                        for x in (lo, hi) if x) or None


def _describe(err: dict, data: dict) -> tuple[tuple, str]:
    """Turn one pydantic error into (loc, 'message (got ...; allowed ...)')."""
    ctx = err.get("ctx") or {}
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("uniform", "hotset")))
    loc = tuple(ctx.get("loc", loc))
    kind = err["type"]
    allowed = ctx.get("allowed")
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], data)
        msg = "unknown key"
        allowed = ", ".join(model.model_fields) if model else None
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "literal_error":
        msg = "not an allowed value"
        allowed = ctx.get("expected")
    elif kind == "union_tag_invalid":
        msg, loc, allowed = "unknown workload kind", loc + ("kind",), ctx.get("expected_tags")
    elif kind == "union_tag_not_found":
        msg, loc, allowed, kind = "required key is missing", loc + ("kind",), "uniform, hotset", "missing"
    elif kind in _RANGE_ERRORS:
        msg, allowed = "out of range", _bounds(loc, data)
    elif kind == "too_short":
        msg, allowed = "must not be empty", f"at least {ctx.get('min_length')} item"
    elif kind in _TYPE_ERRORS:
        msg = _TYPE_ERRORS[kind]
        if kind == "list_type":
            allowed = 'a list of items, each starting with "- "'
            if loc[-1:] == ("vcpus",):
                allowed = 'a list of vCPU groups, each item starting with "- "'
        else:
            allowed = _bounds(loc, data)
    else:
        msg = err["msg"].removeprefix("Value error, ")
    present, value = _lookup(data, loc)
    parts = []
    if "got" in ctx:
        parts.append(f"got {ctx['got']}")
    elif present and kind != "missing":
        parts.append(f"got {_got(value)}")
    if allowed:
        parts.append(f"allowed: {allowed}")
    return loc, msg + (f" ({'; '.join(parts)})" if parts else "")


def load_scenario(path: str | Path, overrides: Iterable[str] = (), seed: int | None = None) -> Scenario:
    """Read, override and validate a scenario file. Raises ``ScenarioError``."""
    path = Path(path)
    data, lines = _read_yaml(path)
    set_paths = {_apply_override(data, o) for o in overrides}
    if seed is not None:
        data["seed"] = seed
    data.setdefault("name", path.stem)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        report = []
        for err in exc.errors():
            loc, text = _describe(err, data)
            key = ".".join(map(str, loc)) or "(top level)"
            if any(loc[: len(p)] == p for p in set_paths):
                report.append((0, f"--set {key}: {text}"))
                continue
            line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), 1)
            report.append((line, f"{path}:{line}: {key}: {text}"))
        raise ScenarioError([text for _, text in sorted(report, key=lambda r: r[0])]) from None


def scenario_json_schema() -> dict:
    """JSON Schema of the scenario file (``dirtysim schema``)."""
    return Scenario.model_json_schema()
