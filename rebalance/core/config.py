"""Pipeline YAML: loading (``extends:`` presets, ``key=value`` overrides) and validation.

Validation runs before any work and reports every problem at once, each naming the file the key came
from, its dotted path, what was expected and a did-you-mean. A YAML file can only name registered
steps; it never imports code.
"""

from __future__ import annotations

import dataclasses
import graphlib
import hashlib
import heapq
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
import yaml

from rebalance.core.registry import StepSpec, all_steps
from rebalance.errors import ConfigError, ConfigIssue, did_you_mean

COMMAND_LINE = "command line"
# A step that declares this keyword parameter receives the resolved config of itself and every step
# it depends on (e.g. to print in a dataset card). It is derived from the upstream configs, which
# already key the cache, so it never causes extra re-runs; users cannot set it.
LINEAGE_PARAM = "lineage"
RESERVED_STEP_KEYS = ("step", "inputs", "shard_rows")
TOP_LEVEL_KEYS = ("name", "seed", "device", "buckets", "cache_dir", "output_dir", "executor", "steps")
DEVICES = ("auto", "cpu", "cuda")


_Section = TypeVar("_Section", bound=pydantic.BaseModel)


class ExecutorConfig(pydantic.BaseModel):
    """Where sharded steps run.

    ``dask`` without ``scheduler`` starts a LocalCluster sized to the machine when a sharded step
    has work: one GPU worker per visible GPU (``gpu_workers`` to choose how many), each pinned to
    its GPU with ``CUDA_VISIBLE_DEVICES`` and declaring the dask resource ``GPU=1``, plus
    ``n_workers`` CPU workers (default: the CPUs the GPU workers leave). With ``scheduler:
    tcp://host:port`` it joins an existing cluster (the cache folder must then be on storage every
    worker can reach; start GPU workers with ``--resources GPU=1``). ``local`` runs shards one by
    one in process.
    """

    model_config = pydantic.ConfigDict(extra="forbid")
    kind: Literal["local", "dask"] = "dask"
    scheduler: str | None = None
    n_workers: pydantic.PositiveInt | None = None
    gpu_workers: pydantic.NonNegativeInt | None = None
    shard_rows: pydantic.PositiveInt = 1000
    retries: pydantic.NonNegativeInt = 2


class BucketConfig(pydantic.BaseModel):
    """The rare / common / frequent thresholds, in training images per class, counted before
    rebalancing (LVIS: rare ≤ 10 < common ≤ 100 < frequent). Pipeline-wide: every step that declares
    ``rare_max_images`` / ``common_max_images`` receives them, so stats, retrieval, thinning,
    training, export and report share one definition."""

    model_config = pydantic.ConfigDict(extra="forbid")
    rare_max_images: pydantic.PositiveInt = 10
    common_max_images: pydantic.PositiveInt = 100

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> BucketConfig:
        if self.common_max_images <= self.rare_max_images:
            raise ValueError("common_max_images must be larger than rare_max_images")
        return self


@dataclasses.dataclass(frozen=True)
class StepConfig:
    id: str
    spec: StepSpec
    inputs: dict[str, str]
    params: dict[str, Any]  # validated, paths resolved to absolute
    # Rows a shard for this sharded step, instead of executor.shard_rows: a pool's index wants
    # shards of a million vectors where image steps want a thousand images.
    shard_rows: int | None = None


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    name: str
    seed: int
    cache_dir: Path
    output_dir: Path
    executor: ExecutorConfig
    steps: dict[str, StepConfig]  # in topological order
    source: Path
    overrides: tuple[str, ...] = ()  # as given on the command line: the resume hint repeats them

    def consumers(self, step_id: str) -> list[str]:
        return [s.id for s in self.steps.values() if step_id in s.inputs.values()]

    def sinks(self) -> list[str]:
        return [step_id for step_id in self.steps if not self.consumers(step_id)]

    def to_json(self) -> dict[str, Any]:
        """The resolved config: what ``config_hash`` covers and the manifest records."""
        return {
            "name": self.name,
            "seed": self.seed,
            "steps": {
                s.id: {"step": s.spec.name, "inputs": s.inputs, "params": _jsonable(_own_params(s))}
                for s in self.steps.values()
            },
        }

    @property
    def config_hash(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _own_params(step: StepConfig) -> dict[str, Any]:
    return {k: v for k, v in step.params.items() if k != LINEAGE_PARAM}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


# --- loading -------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Tree:
    """A merged config tree and, for each key path, the file (or command line) it came from."""

    data: dict[str, Any]
    sources: dict[tuple[str, ...], str]

    def source_of(self, path: tuple[str, ...]) -> str:
        while path:
            if path in self.sources:
                return self.sources[path]
            path = path[:-1]
        return self.sources[()]


def _read_yaml(path: Path, issues: list[ConfigIssue], named_by: str, key: str) -> dict[str, Any] | None:
    if not path.is_file():
        issues.append(ConfigIssue(named_by, key, f"file not found: {path}", "check the path"))
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        issues.append(ConfigIssue(str(path), "(file)", f"invalid YAML: {where}{problem}"))
        return None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        issues.append(ConfigIssue(str(path), "(file)", "a pipeline file must be a mapping of keys"))
        return None
    return data


def _record_sources(data: Any, path: tuple[str, ...], source: str, sources: dict) -> None:
    sources[path] = source
    if isinstance(data, dict):
        for key, value in data.items():
            _record_sources(value, (*path, str(key)), source, sources)


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load_tree(
    path: Path, issues: list[ConfigIssue], seen: tuple[Path, ...], named_by: str, key: str
) -> _Tree | None:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        issues.append(ConfigIssue(str(seen[-1]), "extends", f"extends itself: {chain}"))
        return None
    data = _read_yaml(path, issues, named_by, key)
    if data is None:
        return None
    extends = data.pop("extends", [])
    parents = [extends] if isinstance(extends, str) else extends
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        issues.append(ConfigIssue(str(path), "extends", "expected a path or a list of paths"))
        parents = []
    tree = _Tree({}, {(): str(path)})
    for parent in parents:
        parent_tree = _load_tree(path.parent / parent, issues, (*seen, path), str(path), "extends")
        if parent_tree is not None:
            tree.data = _merge(tree.data, parent_tree.data)
            tree.sources.update(parent_tree.sources)
    tree.data = _merge(tree.data, data)
    for key_name, value in data.items():
        _record_sources(value, (str(key_name),), str(path), tree.sources)
    return tree


def _apply_overrides(tree: _Tree, overrides: Sequence[str], issues: list[ConfigIssue]) -> None:
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            issues.append(ConfigIssue(COMMAND_LINE, override, "an override must look like key.path=value"))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        path = tuple(key.strip().split("."))
        node = tree.data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
        _record_sources(value, path, COMMAND_LINE, tree.sources)


# --- validation ----------------------------------------------------------------------------------


def load_pipeline(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> PipelineConfig:
    """Load, merge and validate a pipeline file. Raises ``ConfigError`` listing every problem."""
    issues: list[ConfigIssue] = []
    pipeline_path = Path(path)
    tree = _load_tree(pipeline_path, issues, (), COMMAND_LINE, "PIPELINE")
    if tree is None:
        raise ConfigError(issues)
    _apply_overrides(tree, overrides, issues)
    data = tree.data

    for key in data:
        if key not in TOP_LEVEL_KEYS:
            issues.append(
                ConfigIssue(tree.source_of((key,)), key, "unknown key", did_you_mean(key, TOP_LEVEL_KEYS))
            )
    name = data.get("name", pipeline_path.stem)
    if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
        issues.append(
            ConfigIssue(
                tree.source_of(("name",)), "name", f"invalid name {name!r}", "use letters, digits, _ and -"
            )
        )
        name = pipeline_path.stem
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        issues.append(ConfigIssue(tree.source_of(("seed",)), "seed", f"expected an integer, got {seed!r}"))
        seed = 0
    device = data.get("device", "auto")
    if device not in DEVICES:
        issues.append(
            ConfigIssue(
                tree.source_of(("device",)),
                "device",
                f"unknown device {device!r}",
                f"allowed: {', '.join(DEVICES)}",
            )
        )
        device = "auto"
    executor = _validate_section(tree, "executor", ExecutorConfig, issues)
    buckets = _validate_section(tree, "buckets", BucketConfig, issues)
    cache_dir = _resolve_dir(tree, "cache_dir", Path(os.environ.get("REBALANCE_CACHE", "cache")), issues)
    output_dir = _resolve_dir(tree, "output_dir", Path("runs") / name, issues)

    raw_steps = data.get("steps")
    steps: dict[str, StepConfig] = {}
    if not isinstance(raw_steps, dict) or not raw_steps:
        issues.append(
            ConfigIssue(
                tree.source_of(("steps",)), "steps", "expected a non-empty mapping of step id -> step"
            )
        )
    else:
        registry = all_steps()
        for step_id, raw in raw_steps.items():
            filled = {"seed": seed, "device": device, **buckets.model_dump()}
            step = _validate_step(tree, str(step_id), raw, filled, registry, issues)
            if step is not None:
                steps[step.id] = step
        _validate_wiring(tree, raw_steps, steps, issues)

    if issues:
        raise ConfigError(issues)
    ordered = {step_id: steps[step_id] for step_id in _topological_order(steps)}
    return PipelineConfig(
        name=name,
        seed=seed,
        cache_dir=cache_dir,
        output_dir=output_dir,
        executor=executor,
        steps=_with_lineage(ordered, seed),
        source=pipeline_path.resolve(),
        overrides=tuple(overrides),
    )


def _with_lineage(steps: dict[str, StepConfig], seed: int) -> dict[str, StepConfig]:
    """Fill ``lineage`` for the steps that declare it: their own and their ancestors' configs."""
    filled = {}
    for step in steps.values():
        if step.spec.param(LINEAGE_PARAM) is not None:
            needed, pending = {step.id}, [step.id]
            while pending:
                for upstream in steps[pending.pop()].inputs.values():
                    if upstream not in needed:
                        needed.add(upstream)
                        pending.append(upstream)
            lineage = {
                "seed": seed,
                "steps": {
                    s.id: {"step": s.spec.name, "inputs": s.inputs, "params": _jsonable(_own_params(s))}
                    for s in steps.values()
                    if s.id in needed
                },
            }
            step = dataclasses.replace(step, params={**step.params, LINEAGE_PARAM: lineage})
        filled[step.id] = step
    return filled


def _pydantic_issues(
    error: pydantic.ValidationError, tree: _Tree, prefix: tuple[str, ...], fields: Sequence[str]
) -> list[ConfigIssue]:
    issues = []
    for detail in error.errors():
        loc = tuple(str(part) for part in detail["loc"])
        path = (*prefix, *loc)
        source = tree.source_of(path)
        key = ".".join(path)
        if detail["type"] == "extra_forbidden":
            issues.append(ConfigIssue(source, key, "unknown parameter", did_you_mean(loc[-1], fields)))
        elif detail["type"] == "missing":
            issues.append(ConfigIssue(source, key, "missing required parameter"))
        else:
            got = detail.get("input")
            issues.append(ConfigIssue(source, key, f"{detail['msg']}, got {got!r}"))
    return issues


def _validate_section(tree: _Tree, key: str, model: type[_Section], issues: list[ConfigIssue]) -> _Section:
    """A top-level mapping validated by ``model``; its defaults (and the issues) when it is invalid."""
    raw = tree.data.get(key, {})
    if not isinstance(raw, dict):
        issues.append(ConfigIssue(tree.source_of((key,)), key, "expected a mapping"))
        return model()
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as error:
        issues.extend(_pydantic_issues(error, tree, (key,), list(model.model_fields)))
        return model()


def _resolve_dir(tree: _Tree, key: str, default: Path, issues: list[ConfigIssue]) -> Path:
    value = tree.data.get(key)
    if value is None:
        return default.resolve()
    if not isinstance(value, str):
        issues.append(ConfigIssue(tree.source_of((key,)), key, f"expected a path, got {value!r}"))
        return default.resolve()
    return _resolve_path(value, tree.source_of((key,)))


def _resolve_path(value: str | Path, source: str) -> Path:
    """Paths in a YAML file are relative to that file; on the command line, to the cwd."""
    path = Path(value).expanduser()
    if not path.is_absolute() and source != COMMAND_LINE:
        path = Path(source).parent / path
    return path.resolve()


def _validate_step(
    tree: _Tree,
    step_id: str,
    raw: Any,
    defaults: dict[str, Any],
    registry: Mapping[str, StepSpec],
    issues: list[ConfigIssue],
) -> StepConfig | None:
    prefix = ("steps", step_id)
    source = tree.source_of(prefix)
    key = ".".join(prefix)
    if not step_id.replace("-", "_").isidentifier():
        issues.append(
            ConfigIssue(source, key, f"invalid step id {step_id!r}", "use letters, digits, _ and -")
        )
    if not isinstance(raw, dict):
        issues.append(ConfigIssue(source, key, "expected a mapping with a 'step' key"))
        return None
    name = raw.get("step")
    if name is None:
        issues.append(
            ConfigIssue(
                source, f"{key}.step", "missing: which registered step to run", "`rebalance steps` lists them"
            )
        )
        return None
    if name not in registry:
        issues.append(
            ConfigIssue(
                tree.source_of((*prefix, "step")),
                f"{key}.step",
                f"unknown step {name!r}",
                did_you_mean(str(name), list(registry))
                if registry
                else "no step is registered: steps are found through installed package metadata, so "
                "install rebalance (`pip install -e .`) instead of running it from a source folder",
            )
        )
        return None
    spec = registry[name]

    inputs = raw.get("inputs", {}) or {}
    if not isinstance(inputs, dict):
        issues.append(
            ConfigIssue(
                tree.source_of((*prefix, "inputs")),
                f"{key}.inputs",
                "expected a mapping of input name -> step id",
            )
        )
        inputs = {}
    input_names = [spec_input.name for spec_input in spec.inputs]
    for input_name, upstream in inputs.items():
        input_key = f"{key}.inputs.{input_name}"
        if input_name not in input_names:
            issues.append(
                ConfigIssue(
                    tree.source_of((*prefix, "inputs", input_name)),
                    input_key,
                    f"step {name!r} has no input {input_name!r}",
                    did_you_mean(str(input_name), input_names) if input_names else "it takes no inputs",
                )
            )
        elif not isinstance(upstream, str):
            issues.append(
                ConfigIssue(
                    tree.source_of((*prefix, "inputs", input_name)),
                    input_key,
                    f"expected a step id, got {upstream!r}",
                )
            )
    for spec_input in spec.inputs:
        if not spec_input.optional and spec_input.name not in inputs:
            issues.append(
                ConfigIssue(
                    source,
                    f"{key}.inputs.{spec_input.name}",
                    f"missing required input ({spec_input.artifact_type.__name__})",
                    "name the step that produces it",
                )
            )

    shard_rows = raw.get("shard_rows")
    if shard_rows is not None and not spec.shardable:
        issues.append(
            ConfigIssue(
                tree.source_of((*prefix, "shard_rows")),
                f"{key}.shard_rows",
                f"step {name!r} is not sharded",
                "shard_rows applies to sharded steps (`rebalance steps` marks them)",
            )
        )
    elif shard_rows is not None and (
        isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1
    ):
        issues.append(
            ConfigIssue(
                tree.source_of((*prefix, "shard_rows")),
                f"{key}.shard_rows",
                f"expected a positive integer, got {shard_rows!r}",
            )
        )
    raw_params = {k: v for k, v in raw.items() if k not in RESERVED_STEP_KEYS}
    param_names = [p.name for p in spec.params]
    # Pipeline-wide `seed` and `device` reach every step that declares them, unless it sets its own.
    for name, value in defaults.items():
        if any(p.name == name for p in spec.params):
            raw_params.setdefault(name, value)
    if LINEAGE_PARAM in raw_params:
        issues.append(
            ConfigIssue(
                tree.source_of((*prefix, LINEAGE_PARAM)),
                f"{key}.{LINEAGE_PARAM}",
                "is filled in by the runner",
                "remove it",
            )
        )
        raw_params.pop(LINEAGE_PARAM)
    for param in spec.params:
        value = raw_params.get(param.name)
        if param.is_path and isinstance(value, (str, Path)):
            raw_params[param.name] = _resolve_path(value, tree.source_of((*prefix, param.name)))
        elif param.model_ref and isinstance(value, str):
            local = _resolve_path(value, tree.source_of((*prefix, param.name)))
            raw_params[param.name] = str(local) if local.exists() else value
    wired = {k: v for k, v in inputs.items() if isinstance(v, str)}
    try:
        validated = spec.params_model.model_validate(raw_params)
    except pydantic.ValidationError as error:
        issues.extend(_pydantic_issues(error, tree, prefix, [*RESERVED_STEP_KEYS, *param_names]))
        # Still returned, so that its wiring is checked too; the issues make the config fail.
        return StepConfig(step_id, spec, wired, {})
    params = {p.name: getattr(validated, p.name) for p in spec.params}
    for param in spec.params:
        value = params[param.name]
        if param.content_hashed and value is not None and not Path(value).exists():
            issues.append(
                ConfigIssue(
                    tree.source_of((*prefix, param.name)),
                    f"{key}.{param.name}",
                    f"path does not exist: {value}",
                    "fix the path or override it with key=value",
                )
            )
    return StepConfig(step_id, spec, wired, params, shard_rows)


def _validate_wiring(
    tree: _Tree, raw_steps: dict, steps: dict[str, StepConfig], issues: list[ConfigIssue]
) -> None:
    ids = list(raw_steps)
    for step in steps.values():
        for input_name, upstream in step.inputs.items():
            path = ("steps", step.id, "inputs", input_name)
            if upstream not in raw_steps:
                issues.append(
                    ConfigIssue(
                        tree.source_of(path),
                        ".".join(path),
                        f"no step with id {upstream!r}",
                        did_you_mean(upstream, ids),
                    )
                )
                continue
            producer = steps.get(upstream)
            expected = step.spec.input(input_name)
            if (
                producer is not None
                and expected is not None
                and not issubclass(producer.spec.output_type, expected.artifact_type)
            ):
                issues.append(
                    ConfigIssue(
                        tree.source_of(path),
                        ".".join(path),
                        f"step {upstream!r} produces {producer.spec.output_type.__name__}, but input {input_name!r} expects {expected.artifact_type.__name__}",
                    )
                )
    cycle = _find_cycle(steps)
    if cycle:
        issues.append(
            ConfigIssue(
                tree.source_of(("steps", cycle[0])),
                f"steps.{cycle[0]}.inputs",
                "the steps form a cycle: " + " -> ".join(cycle),
                "a step cannot depend on its own output",
            )
        )


def _find_cycle(steps: dict[str, StepConfig]) -> list[str]:
    try:
        graphlib.TopologicalSorter(_upstream_graph(steps)).prepare()
    except graphlib.CycleError as error:
        return list(reversed(error.args[1]))  # in data-flow order: a -> b -> a
    return []


def _topological_order(steps: dict[str, StepConfig]) -> list[str]:
    """Each step as early as its inputs allow; among steps ready together, the one declared first."""
    sorter = graphlib.TopologicalSorter(_upstream_graph(steps))
    sorter.prepare()
    declared = {step_id: position for position, step_id in enumerate(steps)}
    ready = [(declared[step_id], step_id) for step_id in sorter.get_ready()]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, step_id = heapq.heappop(ready)
        order.append(step_id)
        sorter.done(step_id)
        for released in sorter.get_ready():
            heapq.heappush(ready, (declared[released], released))
    return order


def _upstream_graph(steps: dict[str, StepConfig]) -> dict[str, set[str]]:
    return {step_id: {up for up in step.inputs.values() if up in steps} for step_id, step in steps.items()}
