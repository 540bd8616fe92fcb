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
    """Map every key path to the 1-based line where it appears in the file."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            out[sub] = key.start_mark.line + 1
            _line_map(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out)
    return out


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
        raise ScenarioError([f"{path}:{line}: YAML syntax error: {exc.problem or exc.context}"]) from None
    if node is None or data is None:
        raise ScenarioError([f"{path}:1: the file is empty (a scenario needs at least machine.memory and machine.vcpus)"])
    if not isinstance(data, dict):
        raise ScenarioError([f"{path}:1: the top level must be a mapping of keys (got {type(data).__name__})"])
    return data, _line_map(node)


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
    return json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__


def _lookup(data: Any, loc: Iterable) -> tuple[bool, Any]:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return False, None
    return True, data


def _describe(err: dict, data: dict) -> tuple[tuple, str]:
    """Turn one pydantic error into (loc, 'message (got ...; allowed ...)')."""
    ctx = err.get("ctx") or {}
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("uniform", "hotset")))
    loc = tuple(ctx.get("loc", loc))
    kind = err["type"]
    present, value = _lookup(data, loc)
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
        msg = "unknown workload kind"
        allowed = ctx.get("expected_tags")
    elif kind == "union_tag_not_found":
        msg = "the workload needs a 'kind'"
        allowed = "uniform, hotset"
    elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        op = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}[kind]
        bound = next(v for k, v in ctx.items() if k in ("ge", "le", "gt", "lt"))
        msg = "out of range"
        allowed = f"{op} {bound}"
        if err["loc"][-1] in ("zero_fraction", "hot_share"):
            allowed = "0.0 .. 1.0"
    elif kind == "too_short":
        msg = "must not be empty"
        allowed = f"at least {ctx.get('min_length')} item"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        msg = msg[0].lower() + msg[1:] if msg else msg
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
                report.append(f"--set {key}: {text}")
                continue
            line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), 1)
            report.append(f"{path}:{line}: {key}: {text}")
        raise ScenarioError(report) from None


def scenario_json_schema() -> dict:
    """JSON Schema of the scenario file (``dirtysim schema``)."""
    return Scenario.model_json_schema()
