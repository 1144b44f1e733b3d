"""The runner: plans a pipeline, runs what is not cached, writes the manifest.

Cache key of a step = sha256(step name, its optional version override, the fingerprint of its code
(``rebalance.core.fingerprint``), validated params, content hashes of its input paths, cache keys of
its upstream steps). A rerun with nothing changed executes no step; a change re-runs exactly the
steps downstream of it. Sharded steps keep every finished shard, so a killed run redoes only
unfinished shards. A key that ``rebalance cache keep`` pinned to an earlier entry is served that
entry, and its downstream keys are those of the kept entry.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import platform
import shlex
import shutil
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rebalance.core import worker_cache
from rebalance.core.artifact import Artifact
from rebalance.core.cache import MARKER, Cache, read_marker, write_concatenated, write_entry
from rebalance.core.config import LINEAGE_PARAM, PipelineConfig, StepConfig
from rebalance.core.device import visible_gpus
from rebalance.core.executors import GPU, Executor, make_executor
from rebalance.core.fingerprint import CodeFingerprinter
from rebalance.core.fs import atomic_dir, remove_stale_temps, write_json_atomic
from rebalance.core.hashing import ContentHasher, stable_hash
from rebalance.core.progress import Reporter, SilentReporter
from rebalance.core.registry import get_step
from rebalance.errors import ConfigError, ConfigIssue, RebalanceError, StepError, StorageError

MANIFEST = "manifest.json"
_VERSIONED_PACKAGES = (
    "rebalance",
    "numpy",
    "pyarrow",
    "datasets",
    "torch",
    "dask",
    "distributed",
    "pydantic",
    "pillow",
)


# One per process: a file is parsed again only when its size or mtime changed, so the many runs
# of `rebalance compare` share the work.
_FINGERPRINTS = CodeFingerprinter()


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What the runner will do for one step, and why.

    ``key`` names the cache entry the step reads or writes. ``kept`` is set when ``rebalance cache
    keep`` pinned this step's current key (``kept["code_key"]``) to that earlier entry.
    """

    step: StepConfig
    key: str
    components: dict[str, Any]
    cached: bool
    reason: str
    kept: dict[str, Any] | None = None
    # The code files whose change makes this step (or a step upstream of it) run; for the reason.
    code_changed: tuple[str, ...] = ()


def plan_pipeline(config: PipelineConfig, previous_manifest: dict[str, Any] | None = None) -> list[StepPlan]:
    """Compute every step's cache key and whether it will run, without running anything.

    ``previous_manifest`` (default: read from the output folder) explains what changed since.
    """
    cache = Cache(config.cache_dir)
    if previous_manifest is None:
        previous_manifest = _read_manifest(config.output_dir)
    previous = {s["id"]: s for s in previous_manifest.get("steps", [])}
    keys: dict[str, str] = {}
    plans: dict[str, StepPlan] = {}
    with ContentHasher(config.cache_dir / ".hashes.sqlite") as hasher:
        for step in config.steps.values():
            components = {
                "step": step.spec.name,
                "version": step.spec.version,
                "code": _FINGERPRINTS.fingerprint(step.spec.fn.__module__),
                "params": json.loads(json.dumps(step.params, default=str, sort_keys=True)),
                "files": {
                    p.name: hasher.hash_path(Path(step.params[p.name]))
                    for p in step.spec.params
                    if (p.content_hashed and step.params[p.name] is not None)
                    or (p.model_ref and step.params[p.name] and Path(step.params[p.name]).exists())
                },
                "inputs": {name: keys[upstream] for name, upstream in step.inputs.items()},
            }
            key = stable_hash(components)[:20]
            kept = cache.kept(step.spec.name, key)
            if kept is not None:
                kept = {"code_key": key, **kept}
                key = kept["key"]
            keys[step.id] = key
            complete = cache.has(step.spec.name, key)
            # A complete entry whose rows point at images in a cleared entry is recomputed, not served.
            cleared = cache.cleared_sources(step.spec.name, key) if complete else []
            cached = complete and not cleared
            code_changed: tuple[str, ...] = ()
            if kept is not None and cached:
                reason = "kept by `rebalance cache keep` (code changed: " + _files(kept["code_changed"]) + ")"
            elif cached:
                reason = "cached"
            elif cleared:
                reason = "reads images of a cleared cache entry: " + ", ".join(
                    "/".join(Path(c).parts[-2:]) for c in cleared
                )
            else:
                reason, code_changed = _why_changed(components, previous.get(step.id), config, plans)
            plans[step.id] = StepPlan(step, key, components, cached, reason, kept, code_changed)
    return list(plans.values())


def keep_outputs(config: PipelineConfig, step_ids: list[str]) -> list[StepPlan]:
    """Serve each step's output of the previous run although the step's code changed since.

    For a change its author knows leaves the output as it was (a refactor, a faster kernel) on a
    step too expensive to rerun. Only a step whose code alone changed can be kept: its parameters,
    input files and inputs must be those of the previous run recorded in ``manifest.json``, so a
    step downstream of a changed one is kept only after it (list both). Downstream steps then see
    the kept entry's key and stay cached. The manifest of the next run records each keep.
    """
    unknown = [step_id for step_id in step_ids if step_id not in config.steps]
    if unknown:
        raise RebalanceError(
            f"no step {unknown[0]!r} in {config.source}: steps are {', '.join(config.steps)}"
        )
    previous = {s["id"]: s for s in _read_manifest(config.output_dir).get("steps", [])}
    cache = Cache(config.cache_dir)
    kept = []
    for step_id in [s for s in config.steps if s in step_ids]:
        # Planned again after each keep: a kept upstream gives its consumers their earlier inputs.
        plan = next(p for p in plan_pipeline(config) if p.step.id == step_id)
        if plan.cached:
            raise RebalanceError(f"step {step_id!r} is {plan.reason}: there is nothing to keep")
        before = previous.get(step_id)
        if before is None or not cache.has(plan.step.spec.name, before["key"]):
            raise RebalanceError(
                f"step {step_id!r}: no earlier output to keep ({config.output_dir / MANIFEST} records "
                "none, or its cache entry was cleared)"
            )
        then, now = before["components"], plan.components
        changed = code_changes(now["code"], then.get("code", {}))
        if not changed or any(
            now[part] != then.get(part) for part in ("step", "version", "params", "files", "inputs")
        ):
            raise RebalanceError(
                f"step {step_id!r} would run because {plan.reason}: `rebalance cache keep` keeps an output "
                "only when the step's own code is all that changed (keep the upstream steps first)"
            )
        cache.keep(plan.step.spec.name, plan.key, {"key": before["key"], "code_changed": changed})
        kept.append(plan)
    return kept


def _files(paths: list[str] | tuple[str, ...], most: int = 3) -> str:
    shown = ", ".join(paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def code_changes(now: dict[str, str], then: dict[str, str]) -> list[str]:
    """The files of two code fingerprints that differ, were added or are gone, sorted."""
    return sorted(path for path in now.keys() | then.keys() if now.get(path) != then.get(path))


def _why_changed(
    now: dict[str, Any], before: dict[str, Any] | None, config: PipelineConfig, plans: dict[str, StepPlan]
) -> tuple[str, tuple[str, ...]]:
    """Why a step is not cached, and the code files behind it when a code change is the cause."""
    if before is None:
        return "new", ()
    then = before["components"]
    if then["step"] != now["step"]:
        return f"step changed ({then['step']} -> {now['step']})", ()
    if then["version"] != now["version"]:
        return f"step version changed ({then['version']} -> {now['version']})", ()
    changed_code = code_changes(now["code"], then.get("code", {}))
    if changed_code:
        return "code changed: " + _files(changed_code), tuple(changed_code)
    # lineage is derived from upstream configs: a change there is reported as an upstream change.
    changed = sorted(
        k
        for k in now["params"].keys() | then["params"].keys()
        if k != LINEAGE_PARAM and now["params"].get(k) != then["params"].get(k)
    )
    if changed:
        return "changed parameter: " + ", ".join(changed), ()
    files = sorted(k for k in now["files"] if now["files"][k] != then["files"].get(k))
    if files:
        return "changed input file: " + ", ".join(files), ()
    upstream = sorted(k for k in now["inputs"] if now["inputs"][k] != then["inputs"].get(k))
    if upstream:
        ids = [config.steps[before["id"]].inputs[k] for k in upstream]
        causes = [plans[i].code_changed for i in ids]
        if all(causes):  # every changed input changed because code did: say which
            code = tuple(sorted({path for cause in causes for path in cause}))
            return f"upstream changed: {', '.join(ids)} (code changed: {_files(code)})", code
        return "upstream changed: " + ", ".join(ids), ()
    return "not in cache", ()


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard of a sharded step; a plain picklable value sent to executors."""

    step_name: str
    params: dict[str, Any]
    inputs: dict[str, tuple[str, type]]  # input name -> (artifact folder, artifact type)
    primary: str
    index: int
    num_shards: int
    out_dir: str
    key: str


def run_shard(task: ShardTask) -> dict[str, Any]:
    """Compute one shard and write it atomically with its marker. Runs on executors' workers;
    returns where it ran and how many models it loaded there (0 when the worker kept them)."""
    built_before = worker_cache.builds()
    spec = get_step(task.step_name)
    inputs = {name: artifact_type.read(Path(folder)) for name, (folder, artifact_type) in task.inputs.items()}
    inputs[task.primary] = inputs[task.primary].shard(task.index, task.num_shards)
    result = spec.fn(**inputs, **task.params)
    write_entry(Path(task.out_dir), result, {"step": task.step_name, "key": task.key, "shard": task.index})
    return {"index": task.index, "worker": _worker_name(), "loads": worker_cache.builds() - built_before}


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return "local"


@dataclasses.dataclass(frozen=True)
class RunResult:
    manifest: dict[str, Any]
    output_dir: Path

    @property
    def executed(self) -> list[str]:
        return [s["id"] for s in self.manifest["steps"] if s["cache"] == "miss"]


def run_pipeline(
    config: PipelineConfig, *, reporter: Reporter | None = None, executor: Executor | None = None
) -> RunResult:
    """Run every step that is not cached, publish the sink outputs, write ``manifest.json``."""
    reporter = reporter or SilentReporter()
    executor = executor or make_executor(config.executor)
    cache = Cache(config.cache_dir)
    started = time.perf_counter()
    previous = _read_manifest(config.output_dir)
    plans = plan_pipeline(config, previous)
    try:
        _check_devices(plans, executor)
    except ConfigError:
        executor.close()
        raise
    records: list[dict[str, Any]] = []
    # Artifacts are immutable, so one read per run serves every step that consumes it.
    loaded: dict[str, Artifact] = {}
    by_id = {p.step.id: p for p in plans}
    status = "failed"
    outputs: dict[str, str] = {}
    try:
        for plan in plans:
            records.append(_run_step(plan, by_id, cache, config, executor, reporter, loaded))
        try:
            outputs = _publish(config, by_id, cache, previous)
        except Exception as error:
            if (cause := storage_failure(error)) is None:
                raise
            raise StorageError(
                f"cannot publish the outputs under {config.output_dir}: {cause}. Free space (or point "
                f"output_dir= elsewhere); the outputs published before are kept.\n{_resume_hint(config)}"
            ) from error
        status = "complete"
    finally:
        reporter.close()
        executor.close()
        manifest = {
            "pipeline": config.name,
            "source": str(config.source),
            "status": status,
            "config_hash": config.config_hash,
            "config": config.to_json(),
            "seed": config.seed,
            "executor": executor.describe(),
            "versions": _versions(),
            "steps": records,
            "outputs": outputs,
            "wall_s": round(time.perf_counter() - started, 3),
        }
        try:
            write_json_atomic(config.output_dir / MANIFEST, manifest)
        except OSError as error:
            # A run that already failed reports its own error; only a complete run fails here.
            if status == "complete" and (cause := storage_failure(error)) is not None:
                raise StorageError(f"cannot write {config.output_dir / MANIFEST}: {cause}") from error
            if status == "complete":
                raise
    return RunResult(manifest, config.output_dir)


def _check_devices(plans: list[StepPlan], executor: Executor) -> None:
    """Every step to run with ``device: cuda`` has a GPU, checked before any step runs: a GPU step's
    shards need a worker that declares one (on this machine, a visible GPU), and a step that runs in
    this process needs one here."""
    issues = []
    for plan in plans:
        step = plan.step
        if plan.cached or step.params.get("device") != "cuda":
            continue
        on_workers = step.spec.shardable and step.spec.gpu
        if (executor.gpu_slots() if on_workers else len(visible_gpus())) == 0:
            where = "no worker declares a GPU" if on_workers else "this machine has no visible GPU"
            issues.append(
                ConfigIssue(
                    "pipeline",
                    f"steps.{step.id}.device",
                    f"'cuda', but {where}",
                    "set device: auto or cpu, run on a GPU node, or start GPU workers with "
                    "`dask worker SCHEDULER --resources GPU=1`",
                )
            )
    if issues:
        raise ConfigError(issues, "the devices of the pipeline")


def _run_step(
    plan: StepPlan,
    by_id: dict[str, StepPlan],
    cache: Cache,
    config: PipelineConfig,
    executor: Executor,
    reporter: Reporter,
    loaded: dict[str, Artifact],
) -> dict[str, Any]:
    step, spec = plan.step, plan.step.spec
    folder = cache.entry_dir(spec.name, plan.key)
    rows_in = sum(_rows(cache, by_id[upstream]) for upstream in step.inputs.values())
    record: dict[str, Any] = {
        "id": step.id,
        "step": spec.name,
        "version": spec.version,
        "key": plan.key,
        "components": plan.components,
        "rows_in": rows_in,
    }
    if plan.kept is not None:
        record["kept"] = plan.kept
    started = time.perf_counter()
    shards = {"total": 0, "reused": 0}
    if plan.cached:
        reporter.step_started(step.id, spec.name, "cached", 1)
    else:
        input_dirs = {
            name: (
                str(cache.entry_dir(by_id[up].step.spec.name, by_id[up].key)),
                spec.input(name).artifact_type,
            )
            for name, up in step.inputs.items()
        }
        try:
            if spec.shardable:
                shards = _run_sharded(plan, input_dirs, cache, config, executor, reporter)
            else:
                reporter.step_started(step.id, spec.name, plan.reason, 1)
                inputs = {}
                for name, (directory, artifact_type) in input_dirs.items():
                    if directory not in loaded:
                        loaded[directory] = artifact_type.read(Path(directory))
                    inputs[name] = loaded[directory]
                result: Artifact = spec.fn(**inputs, **step.params)
                write_entry(folder, result, {"step": spec.name, "key": plan.key})
        except RebalanceError as error:
            raise type(error)(f"step {step.id!r} ({spec.name}): {error}\n{_resume_hint(config)}") from error
        except Exception as error:
            if (cause := storage_failure(error)) is None:
                raise _crashed(step.id, spec.name, error, config) from error
            raise StorageError(
                f"step {step.id!r} ({spec.name}): cannot write under {config.cache_dir}: {cause}. "
                f"Free space (or point cache_dir= elsewhere); nothing half-written was kept.\n{_resume_hint(config)}"
            ) from error
    wall_s = time.perf_counter() - started
    rows_out = _rows(cache, plan)
    reporter.step_finished(step.id, plan.cached, wall_s, rows_out)
    record.update(
        cache="hit" if plan.cached else "miss", wall_s=round(wall_s, 3), rows_out=rows_out, shards=shards
    )
    return record


_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS)


def storage_failure(error: BaseException) -> str | None:
    """Why ``error`` is a failed write to storage (full disk, quota, read-only or forbidden), or None.

    An ``OSError`` says so by its errno; a library that does its own I/O (FAISS raises
    ``RuntimeError``) only names the system's message for it, so that is matched too.
    """
    if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
        return error.strerror or os.strerror(error.errno)
    text = str(error)
    return next((os.strerror(code) for code in _STORAGE_ERRNOS if os.strerror(code) in text), None)


def _crashed(step_id: str, step_name: str, error: Exception, config: PipelineConfig) -> StepError:
    log = config.output_dir / "error.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(traceback.format_exc())
    return StepError(
        f"step {step_id!r} ({step_name}) failed: {type(error).__name__}: {error}\nTraceback in {log}. {_resume_hint(config)}"
    )


def _run_sharded(
    plan: StepPlan,
    input_dirs: dict[str, tuple[str, type]],
    cache: Cache,
    config: PipelineConfig,
    executor: Executor,
    reporter: Reporter,
) -> dict[str, Any]:
    step, spec = plan.step, plan.step.spec
    primary = spec.inputs[0].name
    primary_rows = read_marker(Path(input_dirs[primary][0]))["rows"]
    num_shards = max(1, math.ceil(primary_rows / (step.shard_rows or config.executor.shard_rows)))
    shard_dirs = [cache.shard_dir(spec.name, plan.key, num_shards, i) for i in range(num_shards)]
    pending = [i for i, d in enumerate(shard_dirs) if read_marker(d) is None]
    reporter.step_started(step.id, spec.name, plan.reason, num_shards)
    for _ in range(num_shards - len(pending)):
        reporter.shard_finished()
    tasks = [
        ShardTask(spec.name, step.params, input_dirs, primary, i, num_shards, str(shard_dirs[i]), plan.key)
        for i in pending
    ]
    # A GPU step's shards hold a GPU each, so they run only on workers that declare one.
    resources = {GPU: 1} if spec.needs_gpu(step.params, executor.gpu_slots() > 0) else None
    workers: dict[str, dict[str, int]] = {}
    for done in executor.map_unordered(run_shard, tasks, resources=resources):
        ran = workers.setdefault(done["worker"], {"shards": 0, "model_loads": 0})
        ran["shards"] += 1
        ran["model_loads"] += done["loads"]
        reporter.shard_finished()
    write_concatenated(
        cache.entry_dir(spec.name, plan.key),
        spec.output_type,
        shard_dirs,
        {"step": spec.name, "key": plan.key, "shards": num_shards},
    )
    cache.drop_shards(spec.name, plan.key)
    record: dict[str, Any] = {"total": num_shards, "reused": num_shards - len(pending), "workers": workers}
    if resources:
        record["resources"] = resources
    return record


def _rows(cache: Cache, plan: StepPlan) -> int:
    marker = read_marker(cache.entry_dir(plan.step.spec.name, plan.key))
    return marker["rows"] if marker else 0


def _publish(
    config: PipelineConfig, by_id: dict[str, StepPlan], cache: Cache, previous: dict[str, Any]
) -> dict[str, str]:
    """Copy each sink step's artifact into ``output_dir/<step id>`` (skipped when unchanged)."""
    published_before = (
        {s["id"]: s["key"] for s in previous.get("steps", [])} if previous.get("status") == "complete" else {}
    )
    outputs = {}
    for step_id in config.sinks():
        plan = by_id[step_id]
        destination = config.output_dir / step_id
        if published_before.get(step_id) != plan.key or not destination.is_dir():
            remove_stale_temps(config.output_dir, step_id)
            source = cache.entry_dir(plan.step.spec.name, plan.key)
            with atomic_dir(destination) as temp:
                shutil.copytree(source, temp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))
        outputs[step_id] = step_id
    return outputs


def _resume_hint(config: PipelineConfig) -> str:
    return f"Finished steps are cached: fix the cause and rerun `{run_command(config)}` to resume."


def run_command(config: PipelineConfig) -> str:
    """The command line that runs ``config`` again: its file, its overrides and its scheduler."""
    overrides = list(config.overrides)
    words = ["rebalance", "run", str(config.source)]
    scheduler = next((o for o in overrides if o.startswith("executor.scheduler=")), None)
    if scheduler is not None and "executor.kind=dask" in overrides:
        overrides.remove(scheduler)
        overrides.remove("executor.kind=dask")
    words += overrides
    if scheduler is not None and scheduler not in overrides:
        words += ["--scheduler", scheduler.partition("=")[2]]
    return shlex.join(words)


def _read_manifest(output_dir: Path) -> dict[str, Any]:
    path = output_dir / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
