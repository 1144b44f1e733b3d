"""The step registry: names → typed plain functions.

A step is a plain function. Its positional parameters are *inputs* (artifacts produced by upstream
steps, annotated with an artifact type); its keyword-only parameters are *params* with defaults,
validated from the pipeline YAML. It returns one artifact and never writes files, hashes, caches or
creates a dask client: the runner does that. A step declared ``shardable`` must be row-wise over its
first input, so that running it on shards and concatenating equals running it on the whole.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import pydantic

from rebalance.errors import RebalanceError

F = TypeVar("F", bound=Callable[..., Any])


class ContentHashed:
    """Marks a path parameter whose file contents (not only its name) key the cache."""

    def __repr__(self) -> str:
        return "ContentHashed()"


InputPath = Annotated[Path, ContentHashed()]
"""A file or folder a step reads. Resolved relative to the YAML file naming it; must exist."""


class LocalModel:
    """Marks a model given by hub name or local path; a local path's contents key the cache."""

    def __repr__(self) -> str:
        return "LocalModel()"


ModelRef = Annotated[str, LocalModel()]
"""A model by name (``openai/clip-vit-base-patch32``) or local path. A path relative to the YAML file
is resolved when it exists there; the contents of a local model key the cache, so replacing its
weights re-runs what used it."""

_REQUIRED = inspect.Parameter.empty

Role = Literal[
    "reads",
    "checks",
    "describes",
    "embeds",
    "adds_rows",
    "removes_rows",
    "sets_sampling",
    "trains",
    "exports",
    "reports",
    "transforms",
]
"""What a step does to the data. ``adds_rows`` / ``removes_rows`` steps that declare a ``bypass``
input, and ``sets_sampling`` steps, are the stages ``rebalance compare --ablation`` switches off."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    artifact_type: type
    optional: bool


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    name: str
    annotation: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    @property
    def is_path(self) -> bool:
        return Path in _leaf_types(self.annotation)

    @property
    def content_hashed(self) -> bool:
        return _has_marker(self.annotation, ContentHashed)

    @property
    def model_ref(self) -> bool:
        return _has_marker(self.annotation, LocalModel)

    def type_name(self) -> str:
        return _type_name(self.annotation)


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything the runner and the validator need to know about a registered step."""

    name: str
    fn: Callable[..., Any]
    version: int
    shardable: bool
    inputs: tuple[InputSpec, ...]
    params: tuple[ParamSpec, ...]
    output_type: type
    params_model: type[pydantic.BaseModel]
    role: Role = "transforms"
    bypass: str | None = None
    gpu: bool = False

    def needs_gpu(self, params: dict[str, Any], gpus_available: bool) -> bool:
        """Whether a run of this step with ``params`` holds a GPU: a GPU step whose ``device`` is
        ``cuda``, or ``auto`` where the run has GPUs."""
        device = params.get("device", "auto")
        return self.gpu and (device == "cuda" or (device == "auto" and gpus_available))

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""

    def input(self, name: str) -> InputSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def param(self, name: str) -> ParamSpec | None:
        return next((spec for spec in self.params if spec.name == name), None)


ENTRY_POINT_GROUP = "rebalance.steps"
_REGISTRY: dict[str, StepSpec] = {}
_LOADED_ENTRY_POINTS: set[tuple[str, str]] = set()


def step(
    name: str,
    *,
    version: int = 1,
    shardable: bool = False,
    role: Role = "transforms",
    bypass: str | None = None,
    gpu: bool = False,
) -> Callable[[F], F]:
    """Register a plain function as a pipeline step.

    Args:
        name: the name pipeline YAML files use (``step: <name>``).
        version: an explicit override, rarely needed: the cache key already holds a fingerprint of
            the step's code and of the modules it imports (``rebalance.core.fingerprint``); bump it
            when the output changes for a reason that code cannot show (a data file the step reads
            from its own package, say).
        shardable: the step is row-wise over its first input and may run per shard in parallel.
        role: what the step does to the data (``Role``).
        bypass: the input that stands in for the step's output when an ablation switches the step
            off; it must have the output's artifact type.
        gpu: the step runs a model on a GPU when it has one, chosen by its ``device`` parameter
            (``cuda``, or ``auto`` where the run has GPUs): its shards then go to dask workers that
            declare a ``GPU`` resource, one shard per GPU at a time.
    """

    def register(fn: F) -> F:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise RuntimeError(f"step {name!r} is registered twice")
        _REGISTRY[name] = _build_spec(name, fn, version, shardable, role, bypass, gpu)
        return fn

    return register


def _build_spec(
    name: str,
    fn: Callable[..., Any],
    version: int,
    shardable: bool,
    role: Role,
    bypass: str | None,
    gpu: bool = False,
) -> StepSpec:
    hints = typing.get_type_hints(fn, include_extras=True)
    inputs: list[InputSpec] = []
    params: list[ParamSpec] = []
    for parameter in inspect.signature(fn).parameters.values():
        annotation = hints.get(parameter.name, Any)
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            params.append(ParamSpec(parameter.name, annotation, parameter.default))
        elif parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            artifact_types = [t for t in _leaf_types(annotation) if t is not type(None)]
            if len(artifact_types) != 1:
                raise TypeError(f"step {name!r}: input {parameter.name!r} needs one artifact type")
            inputs.append(InputSpec(parameter.name, artifact_types[0], parameter.default is None))
        else:
            raise TypeError(f"step {name!r}: *args/**kwargs are not allowed in steps")
    output_type = hints["return"]
    if shardable and not (
        inputs and hasattr(inputs[0].artifact_type, "shard") and hasattr(output_type, "concat")
    ):
        raise TypeError(
            f"step {name!r}: a shardable step needs a shardable first input and a concatenable output"
        )
    if bypass is not None and not any(
        spec.name == bypass and spec.artifact_type is output_type and not spec.optional for spec in inputs
    ):
        raise TypeError(
            f"step {name!r}: bypass {bypass!r} must name a required input of the output's type "
            f"({getattr(output_type, '__name__', output_type)})"
        )
    fields = {spec.name: (spec.annotation, ... if spec.required else spec.default) for spec in params}
    model = pydantic.create_model(f"{name}_params", __config__=pydantic.ConfigDict(extra="forbid"), **fields)
    if gpu and not any(spec.name == "device" for spec in params):
        raise TypeError(f"step {name!r}: a gpu step needs a `device` parameter (auto, cpu or cuda)")
    return StepSpec(
        name, fn, version, shardable, tuple(inputs), tuple(params), output_type, model, role, bypass, gpu
    )


def load_step_plugins() -> None:
    """Import every module listed under the ``rebalance.steps`` entry points and not imported yet.

    Importing a module runs its ``@step`` decorators. The built-in steps are found this way too, so
    any fresh process (a dask worker included) knows every installed step without a ``--preload``.
    """
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (entry.name, entry.value)
        if key in _LOADED_ENTRY_POINTS:
            continue
        try:
            entry.load()
        except Exception as error:
            raise RebalanceError(
                f"the step plugin {entry.name!r} ({entry.value}, entry point group {ENTRY_POINT_GROUP!r}) "
                f"failed to import: {type(error).__name__}: {error}"
            ) from error
        _LOADED_ENTRY_POINTS.add(key)


def get_step(name: str) -> StepSpec:
    if name not in _REGISTRY:
        load_step_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = (
            "`rebalance steps` lists them"
            if _REGISTRY
            else "no step is registered: steps are found through installed package metadata, so install "
            "rebalance (`pip install -e .`) instead of running it from a source folder"
        )
        raise RebalanceError(f"unknown step {name!r}; {hint}") from None


def all_steps() -> dict[str, StepSpec]:
    load_step_plugins()
    return dict(sorted(_REGISTRY.items()))


def _leaf_types(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [leaf for arg in typing.get_args(annotation) for leaf in _leaf_types(arg)]
    return [annotation]


def _has_marker(annotation: Any, marker: type) -> bool:
    if typing.get_origin(annotation) is Annotated:
        return any(isinstance(meta, marker) for meta in annotation.__metadata__)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_has_marker(arg, marker) for arg in typing.get_args(annotation))
    return False


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        if _has_marker(annotation, ContentHashed):
            return "InputPath"
        return "ModelRef" if _has_marker(annotation, LocalModel) else _type_name(args[0])
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is Literal:
        return " | ".join(repr(arg) for arg in args)
    if annotation is type(None):
        return "None"
    if annotation is Ellipsis:
        return "..."
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in args)}]"
    return getattr(annotation, "__name__", str(annotation))
