"""A SWEEP.yaml -> every run it asks for, each validated and keyed, before anything runs.

The file (see README, "Sweeps")::

    base: ../quickstart.yaml        # a scenario file (relative to this file), or an inline scenario mapping
    set: {migration.timeout: 20s}   # overrides for every run (optional)
    axes:                           # combined as a cartesian product, in order
      - grid: {machine.vcpus.0.workload.rate: [32MiB/s, 64MiB/s], network.bandwidth: [1Gbit/s, 10Gbit/s]}
      - zip: {migration.multifd-channels: [2, 4], network.bandwidth: [10Gbit/s, 25Gbit/s]}
      - random: {samples: 20, seed: 1, keys: {migration.downtime-limit: {uniform: [100, 1000], unit: ms}}}
    seeds: [1, 2, 3]                # or a count N (seeds 1 .. N); default: the scenario's seed
    variants: {name: {key.path: value}}   # or a variants file; crossed with the axes

A grid is the product of its keys' values, a zip steps its keys together, a random
axis draws ``samples`` points from its own seed (the same file always draws the same
points). Every run is keyed by a hash of (resolved scenario, seed, dirtysim
version): a finished run is known by its key, whatever the order of the file.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from . import __version__
from .report.files import OutputError, child
from .scenario.load import ScenarioError, clip, read_yaml, resolve_scenario
from .scenario.schema import MAX_SEED, Scenario
from .sweep import load_variants, yaml_value

AXIS_KINDS = ("grid", "zip", "random")
RANDOM_KINDS = ("uniform", "log-uniform", "choice")
TOP_KEYS = ("base", "set", "axes", "seeds", "variants")
# every run is resolved and held before any runs (~0.7 ms and ~6 KiB each): 100 000 is a minute and 600 MiB;
# the former 1 000 000 took 12 minutes and 6 GiB before the first run (or the error of its last point)
MAX_RUNS = 100_000


@dataclass(frozen=True)
class Override:
    """One ``key.path=value`` and where the sweep file gives it (for the error that blames it)."""

    key: str
    value: Any
    where: str  # FILE:LINE: source, e.g. "s.yaml:7: axes.0.grid.network.bandwidth[1]"
    given: str | None = None  # a --set as typed, which the scenario loader parses and checks

    @property
    def text(self) -> str:
        return self.given if self.given is not None else f"{self.key}={yaml_value(self.value)}"


@dataclass
class Run:
    """One run of the sweep: its key, its coordinates (the swept values as written) and its scenario."""

    key: str
    variant: str | None
    seed: int
    params: dict[str, Any]
    scenario: Scenario = field(repr=False)

    @property
    def label(self) -> str:
        parts = ([f"variant={self.variant}"] if self.variant is not None else [])
        parts += [f"{k}={v}" for k, v in self.params.items()] + [f"seed={self.seed}"]
        return ", ".join(parts)


@dataclass
class Plan:
    """Every run of a sweep file, in the file's order; ``axes``: each swept key with its values in order;
    ``dims``: the keys that vary on their own (every key of a grid, the first of a zip), what the plots span."""

    path: Path
    runs: list[Run]
    axes: dict[str, list]
    variants: list[str]
    dims: list[str]


def run_key(scenario: Scenario) -> str:
    """The hash naming a run: the resolved scenario (its seed included) and the dirtysim version."""
    blob = json.dumps({"scenario": scenario.model_dump(mode="json"), "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_plan(path: str | Path, overrides: Iterable[str] = ()) -> Plan:
    """Read and expand a sweep file; every run is resolved here. Raises ``ScenarioError`` listing every bad value.

    ``overrides``: ``--set`` for every run, after the file's ``set``.
    """
    path = Path(path)
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise ScenarioError([f"{path}:1: a sweep file is a mapping with base, axes, seeds, variants "
                             f"(got {type(data).__name__})"])
    at = lambda *loc: f"{path}:{lines.get(loc, 1)}"  # noqa: E731
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ScenarioError([f"{at(unknown[0])}: {unknown[0]}: unknown key (allowed: {', '.join(TOP_KEYS)})"])
    base, base_lines, base_path = _base(path, data, lines)
    common = [Override(k, v, f"{at('set', k)}: set.{k}") for k, v in _mapping(data, "set", at).items()]
    common += [_cli_override(text) for text in overrides]
    given = _list(data, "axes", at)
    axes = [_axis(i, axis, at) for i, axis in enumerate(given)]
    dims = [key for axis in given for kind, body in axis.items() if kind != "random"
            for key in (list(body) if kind == "grid" else list(body)[:1])]
    variants = _variants(path, data, at)
    seeds = _seeds(data.get("seeds"), at)
    count = math.prod([len(a) for a in axes] + [len(variants), len(seeds)])
    if count > MAX_RUNS:
        raise ScenarioError([f"{at('axes')}: axes: {count} runs (allowed: at most {MAX_RUNS} in one sweep file)"])
    runs, errors, seen = [], [], {}
    for variant, *points in itertools.product(variants, *axes):
        point_overrides = common + variant[1] + [o for point in points for o in point]
        params = {o.key: o.value for point in points for o in point}
        texts = [o.text for o in point_overrides]
        for seed in seeds:
            try:
                scenario = resolve_scenario(copy.deepcopy(base), base_lines, base_path, texts, seed)
            except ScenarioError as exc:
                errors += [(*_blame(line, point_overrides), variant[0], params) for line in exc.lines]
                continue
            run = Run(run_key(scenario), variant[0], scenario.seed, params, scenario)
            if run.key in seen:
                errors.append((f"{path}: runs {seen[run.key]!r} and {run.label!r} are the same scenario and seed "
                               f"(allowed: each point of a sweep a different run)", True, None, {}))
            seen[run.key] = run.label
            runs.append(run)
    if errors:
        raise ScenarioError(_report(errors, count))
    swept: dict[str, list] = {}
    for axis in axes:
        for point in axis:
            for o in point:
                swept.setdefault(o.key, [])
                if o.value not in swept[o.key]:
                    swept[o.key].append(o.value)
    return Plan(path, runs, swept, [v for v, _ in variants if v is not None], dims)


def _cli_override(text: str) -> Override:
    key, _, raw = text.partition("=")
    return Override(key.strip(), raw.strip(), "--set", given=text)


def _blame(line: str, overrides: list[Override]) -> tuple[str, bool]:
    """(A loader's error line, prefixed with where the sweep file gives the value it names; whether it is)."""
    if line.startswith("--set "):
        key = line[len("--set "):].split(":", 1)[0]
        owners = [o for o in overrides if key == o.key or key.startswith(o.key + ".") or o.key.startswith(key + ".")]
        if owners:
            return (line if owners[-1].given is not None else f"{owners[-1].where}: {line}"), True
    return line, False


def _report(errors: list[tuple[str, bool, str | None, dict]], count: int) -> list[str]:
    """Each error once; one about the base that only some points have names the first of them."""
    points: dict[str, list] = {}
    blamed = {line for line, located, _, _ in errors if located}
    for line, _, variant, params in errors:
        points.setdefault(line, []).append((variant, params))
    out = []
    for line, where in points.items():
        if len(where) == count or line in blamed:
            out.append(line)
            continue
        variant, params = where[0]
        point = ", ".join([f"variant={variant}"] * (variant is not None) + [f"{k}={v}" for k, v in params.items()])
        out.append(f"{line} (at the point {point}" + (f", and {len(where) - 1} more)" if len(where) > 1 else ")"))
    return out


def _base(path: Path, data: dict, lines: dict) -> tuple[dict, dict, Path]:
    """The base scenario's data and line map, and the file its errors name."""
    base = data.get("base")
    if isinstance(base, dict):
        return base, {k[1:]: v for k, v in lines.items() if k[:1] == ("base",)}, path
    if not isinstance(base, str) or not base:
        raise ScenarioError([f"{path}:{lines.get(('base',), 1)}: base: expected a scenario file or an inline scenario "
                             f"(got {_got(base)}; allowed: base: ../quickstart.yaml, or base: {{machine: ...}})"])
    file = path.parent / base
    base_data, base_lines = read_yaml(file)
    if not isinstance(base_data, dict):
        raise ScenarioError([f"{file}:1: the top level must be a mapping of keys (got {type(base_data).__name__})"])
    return base_data, base_lines, file


def _mapping(data: dict, key: str, at) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ScenarioError([f"{at(key)}: {key}: expected a mapping of key.path: value (got {_got(value)})"])
    return value


def _list(data: dict, key: str, at) -> list:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise ScenarioError([f"{at(key)}: {key}: expected a list of axes, each starting with \"- \" "
                             f"(got {_got(value)})"])
    return value


def _axis(i: int, axis: Any, at) -> list[list[Override]]:
    """One axis -> its points, each the overrides it sets."""
    if not isinstance(axis, dict) or len(axis) != 1 or next(iter(axis)) not in AXIS_KINDS:
        raise ScenarioError([f"{at('axes', i)}: axes.{i}: expected one of {', '.join(AXIS_KINDS)} "
                             f"(got {_got(axis)})"])
    kind, body = next(iter(axis.items()))
    name = f"axes.{i}.{kind}"
    if kind == "random":
        return _random(i, body, at)
    if not isinstance(body, dict) or not body:
        raise ScenarioError([f"{at('axes', i, kind)}: {name}: expected a mapping of key.path: [values]"])
    for key, values in body.items():
        if not isinstance(values, list) or not values:
            raise ScenarioError([f"{at('axes', i, kind, key)}: {name}.{key}: expected a non-empty list of values "
                                 f"(got {_got(values)})"])
    columns = [[Override(key, v, f"{at('axes', i, kind, key, j)}: {name}.{key}[{j}]") for j, v in enumerate(values)]
               for key, values in body.items()]
    if kind == "grid":
        return [list(p) for p in itertools.product(*columns)]
    lengths = {key: len(values) for key, values in body.items()}
    if len(set(lengths.values())) > 1:
        raise ScenarioError([f"{at('axes', i, kind)}: {name}: the lists of a zip step together, so they need one length "
                             f"(got {', '.join(f'{k}: {n}' for k, n in lengths.items())})"])
    return [list(p) for p in zip(*columns)]


def _random(i: int, body: Any, at) -> list[list[Override]]:
    """``samples`` draws from ``seed``: uniform / log-uniform over [lo, hi] (rounded in ``unit`` if given), or a
    choice among values; the distinct points, in the order first drawn."""
    name = f"axes.{i}.random"
    where = at("axes", i, "random")
    keys = body.get("keys") if isinstance(body, dict) else None
    samples, seed = (body.get("samples"), body.get("seed")) if isinstance(body, dict) else (None, None)
    if (not isinstance(keys, dict) or not keys or type(samples) is not int or not 1 <= samples <= MAX_RUNS
            or type(seed) is not int or not 0 <= seed <= MAX_SEED):
        raise ScenarioError([f"{where}: {name}: expected samples (1 .. {MAX_RUNS}), seed (0 .. {MAX_SEED}) and keys: "
                             f"{{key.path: {{uniform: [lo, hi], unit: MiB/s}}}} (got {_got(body)})"])
    rng = np.random.default_rng(seed)
    columns = []
    for key, spec in keys.items():
        line = at("axes", i, "random", "keys", key)
        columns.append([Override(key, v, f"{line}: {name}.keys.{key} (sample {j})")
                        for j, v in enumerate(_draw(rng, samples, spec, f"{line}: {name}.keys.{key}"))])
    points: dict[tuple, list[Override]] = {}
    for point in zip(*columns):  # a point drawn twice (a choice, a value rounded in its unit) runs once
        points.setdefault(tuple(yaml_value(o.value) for o in point), list(point))
    return list(points.values())


def _draw(rng: np.random.Generator, n: int, spec: Any, where: str) -> list:
    kind = next(iter(spec), None) if isinstance(spec, dict) else None
    args = spec.get(kind) if kind in RANDOM_KINDS else None
    unit = spec.get("unit") if isinstance(spec, dict) else None
    extra = set(spec) - {kind, "unit"} if isinstance(spec, dict) else set()
    if kind == "choice" and isinstance(args, list) and args and unit is None and not extra:
        return [args[k] for k in rng.integers(0, len(args), n)]
    numbers = (isinstance(args, list) and len(args) == 2 and all(type(a) in (int, float) for a in args)
               and _finite_width(*args) and (0 if kind == "log-uniform" else -math.inf) < args[0] <= args[1])
    if kind not in RANDOM_KINDS or not numbers or extra or not (unit is None or isinstance(unit, str)):
        raise ScenarioError([f"{where}: expected {{uniform: [lo, hi]}}, {{log-uniform: [lo, hi]}} (0 < lo <= hi) or "
                             f"{{choice: [values]}}, finite, with an optional unit for the first two (got "
                             f"{_got(spec)})"])
    lo, hi = args
    x = rng.uniform(lo, hi, n) if kind == "uniform" else np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    return [f"{round(v)}{unit}" for v in x] if unit else [float(v) for v in x]


def _finite_width(lo: int | float, hi: int | float) -> bool:
    """Bounds numpy can draw between: floats, and their width too (``uniform`` overflows on [-1e308, 1e308])."""
    try:
        return math.isfinite(float(hi) - float(lo))
    except OverflowError:  # an int beyond a float
        return False


def _variants(path: Path, data: dict, at) -> list[tuple[str | None, list[Override]]]:
    """(name, overrides) per variant, from the mapping or a variants file; [(None, [])] without variants."""
    given = data.get("variants")
    if given is None:
        return [(None, [])]
    if isinstance(given, str):
        file = path.parent / given
        loaded = load_variants(file)
        return [(name, [Override(k, v, f"{loaded.where[name]}: variants.{name}") for k, v in over.items()])
                for name, over in loaded.mapping.items()]
    if not isinstance(given, dict) or not given:
        raise ScenarioError([f"{at('variants')}: variants: expected a mapping of variant names to overrides, or a "
                             f"variants file (got {_got(given)})"])
    out = []
    for name, over in given.items():
        try:
            child(Path("runs"), str(name), "variant")
        except OutputError as exc:
            raise ScenarioError([f"{at('variants', name)}: variants.{name}: {exc}"]) from None
        if not isinstance(over, dict):
            raise ScenarioError([f"{at('variants', name)}: variants.{name}: expected a mapping of key.path: value "
                                 f"(got {_got(over)})"])
        out.append((str(name), [Override(k, v, f"{at('variants', name, k)}: variants.{name}.{k}")
                                for k, v in over.items()]))
    return out


def _seeds(given: Any, at) -> list[int | None]:
    if given is None:
        return [None]  # the scenario's own seed
    if type(given) is int and 1 <= given <= 10_000:
        return list(range(1, given + 1))
    if (isinstance(given, list) and given and all(type(s) is int and 0 <= s <= MAX_SEED for s in given)
            and len(set(given)) == len(given)):
        return given
    raise ScenarioError([f"{at('seeds')}: seeds: expected a count (1 .. 10000) or a list of distinct seeds "
                         f"(0 .. {MAX_SEED}) (got {_got(given)})"])


def _got(value: Any) -> str:
    """A value in an error: on one line, clipped as the scenario loader clips it."""
    return clip(yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip().removesuffix("...").strip())
