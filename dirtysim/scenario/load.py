"""Load a scenario file: YAML -> overrides -> validated ``Scenario``.

Every problem is reported before anything runs, as
``FILE:LINE: key.path: message (got VALUE; allowed ...)``, or ``--set KEY: ...`` /
``--seed: ...`` when an override is at fault.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Iterable, Union

import yaml
from pydantic import AliasChoices, BaseModel, ValidationError

from . import limits, units
from .schema import MAX_SEED, PAGE_SIZE, QEMU_BARE_UNITS, QEMU_SPELLINGS, Device, Scenario, UnitFormat, Workload
from .source import SourceError, load_yaml, read_yaml_file


class ScenarioError(ValueError):
    """A scenario file (or an override) is not valid. ``str()`` is the user-facing report."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


def read_yaml(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """(data, line map) of any YAML input file, with the scenario reader's limits. Raises ``ScenarioError``."""
    try:
        return read_yaml_file(Path(path))
    except SourceError as exc:
        raise ScenarioError([f"{path}{'' if exc.line is None else f':{exc.line}'}: {exc.message}"]) from None


def _read(path: Path) -> tuple[dict, dict[tuple, int]]:
    data, lines = read_yaml(path)
    if data is None:
        raise ScenarioError([f"{path}:1: the file is empty (a scenario needs at least machine.memory and machine.vcpus)"])
    if not isinstance(data, dict):
        raise ScenarioError([f"{path}:1: the top level must be a mapping of keys (got {type(data).__name__})"])
    return data, lines


# -- the models' keys -------------------------------------------------------------------------------

def _spellings(model: type[BaseModel]) -> dict[str, str]:
    """Every key a model accepts (field names and QEMU's spellings) -> its field name."""
    out = {}
    for name, field in model.model_fields.items():
        out[name] = name
        if isinstance(field.validation_alias, AliasChoices):
            out.update((alias, name) for alias in field.validation_alias.choices if isinstance(alias, str))
    return out


def _model_at(loc: tuple, data: Any) -> type[BaseModel] | None:
    """The pydantic model whose field list applies at ``loc`` (for 'allowed keys')."""
    ann: Any = Scenario
    for part in loc:
        if isinstance(part, int):
            data = data[part] if isinstance(data, list) and part < len(data) else None
            ann = _resolve(ann.__args__[0], data) if getattr(ann, "__origin__", None) is list else None
            continue
        model = _resolve(ann, data)
        name = _spellings(model).get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if name is None:
            return None
        data = data.get(part) if isinstance(data, dict) else None
        ann = _strip(model.model_fields[name].annotation)
    model = _resolve(ann, data)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _strip(ann: Any) -> Any:
    """Annotated[X, ...] and Optional[X] -> X (lists stay lists)."""
    while True:
        if getattr(ann, "__metadata__", None) is not None:
            ann = ann.__origin__
        elif getattr(ann, "__origin__", None) is Union and type(None) in ann.__args__:
            rest = [a for a in ann.__args__ if a is not type(None)]
            ann = rest[0] if len(rest) == 1 else Union[tuple(rest)]
        else:
            return ann


def _resolve(ann: Any, data: Any) -> Any:
    """A (discriminated) union down to the model that applies to ``data``."""
    ann = _strip(ann)
    if getattr(ann, "__origin__", None) is Union:
        models = [a for a in ann.__args__ if isinstance(a, type) and issubclass(a, BaseModel)]
        kind = data.get("kind") if isinstance(data, dict) else None
        for m in models:
            if "kind" in m.model_fields and kind in getattr(m.model_fields["kind"].annotation, "__args__", ()):
                return m
        return models[0] if len(models) == 1 else ann
    return ann


def _unknown_key(key: str, model: type[BaseModel] | None) -> tuple[str, str | None]:
    """('unknown key' with a did-you-mean, the allowed keys) for ``key`` at ``model``."""
    if model is None:
        return "unknown key", None
    spellings = _spellings(model)
    by_lower = {s.lower(): s for s in spellings}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f"; did you mean {by_lower[close[0]]}?" if close else ""
    return f"unknown key{hint}", ", ".join(model.model_fields)


# -- overrides -------------------------------------------------------------------------------------

def _apply_override(data: dict, text: str) -> tuple:
    """Apply one ``--set key.path=value`` (value parsed as YAML). Returns the path to blame on it.

    That is the full path, or the first key the override created (an unknown key there is its fault).
    """
    if "=" not in text:
        raise ScenarioError([f"--set {text}: expected key.path=value (got {text!r}; allowed: e.g. "
                             f"migration.downtime_limit=500ms)"])
    key, raw = (s.strip() for s in text.split("=", 1))
    parts = key.split(".")
    if not all(parts):
        raise ScenarioError([f"--set {key}: not a key path (got {key!r}; allowed: names joined by dots, "
                             f"e.g. machine.memory.size)"])
    try:
        value = load_yaml(raw)[0] if raw else None
    except SourceError as exc:
        raise ScenarioError([f"--set {key}: the value is not valid YAML: {exc.message} (got {raw!r})"]) from None
    path: tuple = ()
    blame: tuple | None = None
    target: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(map(str, path)) or "(top level)"
        if isinstance(target, list):
            if not part.isdigit() or int(part) >= len(target):
                allowed = f"0 .. {len(target) - 1}" if target else f"none: {here} is empty"
                raise ScenarioError([f"--set {key}: {here} has no item {part} (got {part}; allowed: {allowed})"])
            part = int(part)
        elif isinstance(target, dict):
            model = _model_at(path, data)
            spellings = _spellings(model) if model is not None else {}
            if model is not None and part not in spellings:
                msg, allowed = _unknown_key(part, model)
                raise ScenarioError([f"--set {'.'.join(map(str, path + (part,)))}: {msg} (got {_got(value)}; "
                                     f"allowed: {allowed})"])
            for other, field in spellings.items():  # --set max_bandwidth replaces a max-bandwidth in the file
                if field == spellings.get(part) and other != part and other in target:
                    target[part] = target.pop(other)
            if part not in target and not last:
                if parts[i + 1].isdigit():
                    raise ScenarioError([f"--set {key}: {'.'.join(map(str, path + (part,)))} has no item {parts[i + 1]} "
                                         f"(got {parts[i + 1]}; allowed: none: the list is not in the file)"])
                target[part] = {}
                blame = blame or path + (part,)
        else:
            raise ScenarioError([f"--set {key}: {here} is a value, not a mapping or list (got {_got(target)})"])
        path += (part,)
        if last:
            target[part] = value
        else:
            target = target[part]
    return blame or path


# -- pydantic errors -> one line each ---------------------------------------------------------------

def _got(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**21:
        return f"an integer of {len(str(abs(value)))} digits"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):  # a date, bytes, a set: YAML types no scenario key takes
        text = f"{value} ({type(value).__name__})"
    return clip(text)


def clip(text: str) -> str:
    """A value shown in an error: whole up to 60 characters, else its start and its length."""
    return text if len(text) <= 60 else text[:50] + f"... ({len(text)} characters)"


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
    "model_type": "not a mapping", "model_attributes_type": "not a mapping", "list_type": "not a list",
    "literal_error": "not an allowed value",
}
# pydantic puts a discriminated union's tag in the error location (machine.devices.0.vhost-user-net.packet)
_UNION_TAGS = {tag for union in (Workload, Device) for model in union.__origin__.__args__
               for tag in model.model_fields["kind"].annotation.__args__}
_RANGE_ERRORS = ("greater_than_equal", "less_than_equal", "greater_than", "less_than")


def _bounds(loc: tuple, data: Any) -> str | None:
    """The whole allowed range of a numeric field, e.g. '6 .. 31' (from its ge/le/gt/lt constraints)."""
    key = next((p for p in reversed(loc) if isinstance(p, str)), None)
    model = _model_at(loc[:-1], data)
    name = _spellings(model).get(key) if model is not None else None
    if name is None:
        return None
    meta = model.model_fields[name].metadata
    fmt = next((m.fmt for m in meta if isinstance(m, UnitFormat)), str)
    limits_ = {attr: fmt(getattr(m, attr)) for m in meta for attr in ("ge", "le", "gt", "lt")
               if getattr(m, attr, None) is not None}
    if "ge" in limits_ and "le" in limits_:
        return f"{limits_['ge']} .. {limits_['le']}"
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{words[a]} {v}" for a, v in limits_.items()) or None


def _describe(err: dict, data: dict) -> tuple[tuple, str]:
    """Turn one pydantic error into (loc, 'message (got ...; allowed ...)')."""
    ctx = err.get("ctx") or {}
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
    loc = tuple(ctx.get("loc", loc))
    kind = err["type"]
    allowed = ctx.get("allowed")
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], data)
        msg, allowed = _unknown_key(str(loc[-1]), model)
        twin = _twin(loc, model, data)
        if twin:
            msg, allowed = f"given twice: {loc[-1]} is QEMU's spelling of {twin}", f"one of {twin}, {loc[-1]}"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "literal_error":
        msg = "not an allowed value"
        allowed = ctx.get("expected")
    elif kind == "union_tag_invalid":
        msg, loc, allowed = f"unknown {_union_of(loc)} kind", loc + ("kind",), ctx.get("expected_tags")
    elif kind == "union_tag_not_found":
        union = Device if _union_of(loc) == "device" else Workload
        msg, loc, kind = "required key is missing", loc + ("kind",), "missing"
        allowed = ", ".join(t for m in union.__origin__.__args__ for t in m.model_fields["kind"].annotation.__args__)
    elif kind in _RANGE_ERRORS:
        msg, allowed = "out of range", _bounds(loc, data)
    elif kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        msg = "must not be empty" if "short" in kind and ctx.get("min_length") == 1 else "wrong length"
        lo, hi = ctx.get("min_length"), ctx.get("max_length")
        noun = "character" if kind.startswith("string") else "item"
        allowed = f"at least {lo} {noun}" if lo is not None else f"at most {hi} {noun}s"
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


def _union_of(loc: tuple) -> str:
    return "device" if "devices" in loc else "workload"


def _twin(loc: tuple, model: type[BaseModel] | None, data: Any) -> str | None:
    """The other spelling of the same field, when both are given (``max_bandwidth`` and ``max-bandwidth``)."""
    if model is None:
        return None
    spellings = _spellings(model)
    field = spellings.get(loc[-1])
    present, here = _lookup(data, loc[:-1])
    if field is None or not isinstance(here, dict):
        return None
    return next((k for k, f in spellings.items() if f == field and k != loc[-1] and k in here), None)


# -- the loader ------------------------------------------------------------------------------------

def _check_seed(seed: Any) -> None:
    if seed is not None and (type(seed) is not int or not 0 <= seed <= MAX_SEED):
        raise ScenarioError([f"--seed: out of range (got {_got(seed)}; allowed: 0 .. {MAX_SEED})"])


def _check_host_memory(scenario: Scenario) -> tuple[tuple, str] | None:
    """The page oracle and bitmaps must fit in this machine's available memory."""
    guest = scenario.machine.memory.size + scenario.machine.device_memory
    need, have = limits.host_memory_needed(guest, PAGE_SIZE), limits.available_memory()
    if have is None or need <= have:
        return None
    return ("machine", "memory", "size"), (
        f"the run needs about {units.format_size(need >> 20 << 20)} of host memory "
        f"({limits.HOST_BYTES_PER_PAGE} bytes per guest page + {units.format_size(limits.HOST_BASE_BYTES)}), "
        f"more than the {units.format_size(have >> 20 << 20)} available "
        f"(got {units.format_size(guest)} of guest memory; allowed: at most about "
        f"{units.format_size(max(0, have - limits.HOST_BASE_BYTES) // limits.HOST_BYTES_PER_PAGE * PAGE_SIZE >> 30 << 30)}"
        f" on this machine)")


def load_scenario(path: str | Path, overrides: Iterable[str] = (), seed: int | None = None) -> Scenario:
    """Read, override and validate a scenario file. Raises ``ScenarioError``.

    ``seed`` (the ``--seed`` option) replaces the file's seed and is checked first.
    """
    path = Path(path)
    _check_seed(seed)
    data, lines = _read(path)
    return resolve_scenario(data, lines, path, overrides, seed)


def resolve_scenario(data: dict, lines: dict[tuple, int], path: str | Path, overrides: Iterable[str] = (),
                     seed: int | None = None) -> Scenario:
    """``load_scenario`` on scenario data already read (``data`` is changed): a sweep reads its base once for
    every point, and an inline base reports its errors at ``path`` (the sweep file) with ``lines`` of it."""
    path = Path(path)
    _check_seed(seed)
    blamed = [_apply_override(data, o) for o in overrides]
    if seed is not None:
        data["seed"] = seed
        blamed.append(("seed",))
    if data.get("name") is None:  # 'name: null' too means the default
        data["name"] = path.stem

    def where(loc: tuple) -> tuple[int, str]:
        key = ".".join(map(str, loc)) or "(top level)"
        if any(loc[: len(b)] == b for b in blamed):
            return 0, "--seed" if loc[:1] == ("seed",) and seed is not None else f"--set {key}"
        line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), 1)
        return line, f"{path}:{line}: {key}"

    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        report = []
        for err in exc.errors():
            loc, text = _describe(err, data)
            loc = _written(loc, data)
            line, prefix = where(loc)
            report.append((line, f"{prefix}: {text}"))
        raise ScenarioError([text for _, text in sorted(report, key=lambda r: r[0])]) from None
    problem = _check_host_memory(scenario)
    if problem is not None:
        raise ScenarioError([f"{where(problem[0])[1]}: {problem[1]}"])
    return scenario


def _written(loc: tuple, data: Any) -> tuple:
    """``loc`` with each field name replaced by the spelling the file used (``downtime-limit``)."""
    out: list = []
    for part in loc:
        here = _lookup(data, out)[1]
        if isinstance(part, str) and isinstance(here, dict) and part not in here:
            model = _model_at(tuple(out), data)
            spellings = _spellings(model) if model is not None else {}
            part = next((k for k, f in spellings.items() if f == spellings.get(part) and k in here), part)
        out.append(part)
    return tuple(out)


def resolved_to_file(resolved: dict) -> dict:
    """A resolved scenario as stored in the event log (bare base units) -> the same with units.

    ``summary.json`` carries this, so that ``dirtysim run`` accepts it again as is. A log whose
    scenario this version rejects (an older dirtysim's) keeps its scenario as recorded.
    """
    try:
        return Scenario.model_validate(resolved, context={"base_units": True}).to_file()
    except ValidationError:
        return resolved


def scenario_yaml(scenario: Scenario) -> str:
    """The resolved scenario as YAML a scenario file may contain (``dirtysim validate``)."""
    return yaml.safe_dump(scenario.to_file(), sort_keys=False, allow_unicode=True)


def scenario_json_schema() -> dict:
    """JSON Schema of the scenario file (``dirtysim schema``): defaults written with units, QEMU's spellings included."""
    schema = Scenario.model_json_schema()
    models = {m.__name__: m for m in _models(Scenario)}
    for title, definition in [("Scenario", schema), *schema.get("$defs", {}).items()]:
        props, model = definition.get("properties", {}), models.get(title)
        if model is not None:
            defaulted = {n for n, f in model.model_fields.items() if not f.is_required()}
            written = model.model_construct().model_dump(mode="json", context={"units": True, "defaults": True},
                                                            include=defaulted)
            for name, value in written.items():
                props[name]["default"] = value
        for name, qemu in [(n, QEMU_SPELLINGS[n]) for n in list(props) if n in QEMU_SPELLINGS]:
            props[qemu] = {**props[name], "description": f"QEMU's spelling of {name}"}
            if qemu in QEMU_BARE_UNITS:
                props[qemu].update(type=["string", "integer"], description=f"QEMU's spelling of {name}; a bare "
                                   f"integer is {QEMU_BARE_UNITS[qemu]}, as in QMP")
    return schema


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """``model`` and every model its fields may hold."""
    out, todo = [], [model]
    while todo:
        m = todo.pop()
        if m in out:
            continue
        out.append(m)
        for field in m.model_fields.values():
            ann = _strip(field.annotation)
            ann = _strip(ann.__args__[0]) if getattr(ann, "__origin__", None) is list else ann
            todo += [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
    return out
