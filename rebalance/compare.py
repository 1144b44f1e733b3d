"""Baseline vs rebalanced, and an ablation that turns each rebalancing stage off in turn.

A pipeline is comparable when its ``report`` step is wired to a ``baseline`` and a ``rebalanced``
``train_probe`` step (as ``pipelines/demo.yaml`` is). An ablation variant reruns the pipeline with
one stage bypassed (its consumers read the stage's own input instead), or with the rebalanced run's
sampler set to uniform, or its loss set to plain cross-entropy. Every variant shares the cache, so
only what the change touches is recomputed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from rebalance.core.config import PipelineConfig, load_pipeline
from rebalance.core.runner import run_pipeline
from rebalance.errors import RebalanceError

# Data stages that an ablation bypasses (their consumers read the stage's own input).
BYPASSABLE_STEPS = ("retrieve", "synthesize_features", "semdedup", "entity_thinning")
METRICS = ("rare", "common", "frequent", "top1", "mean_class_accuracy")
HEADERS = ("rare", "common", "frequent", "top-1", "mean/class")


def _report_step(config: PipelineConfig) -> tuple[str, str]:
    for step in config.steps.values():
        if step.spec.name == "report" and {"baseline", "rebalanced"} <= set(step.inputs):
            return step.id, step.inputs["rebalanced"]
    raise RebalanceError(
        f"{config.source}: compare needs a `report` step whose inputs include `baseline` and `rebalanced` "
        "train_probe steps (see pipelines/demo.yaml)"
    )


def _accuracy(
    config: PipelineConfig, overrides: Sequence[str], report_id: str
) -> dict[str, dict[str, float | None]]:
    result = run_pipeline(load_pipeline(config.source, overrides))
    return json.loads((result.output_dir / report_id / "report.json").read_text())["accuracy"]


def _ancestors(config: PipelineConfig, step_id: str) -> list[str]:
    seen: list[str] = []
    pending = [step_id]
    while pending:
        for upstream in config.steps[pending.pop()].inputs.values():
            if upstream not in seen:
                seen.append(upstream)
                pending.append(upstream)
    return [s for s in config.steps if s in seen]  # pipeline order


def ablation_variants(config: PipelineConfig, rebalanced_id: str) -> dict[str, list[str]]:
    """Variant name ("-<step id>", "-sampler", "-<loss>") -> the overrides that turn that stage off."""
    variants: dict[str, list[str]] = {}
    for step_id in _ancestors(config, rebalanced_id):
        step = config.steps[step_id]
        if step.spec.name in BYPASSABLE_STEPS:
            source = step.inputs["dataset"]
            variants[f"-{step_id}"] = [
                f"steps.{consumer}.inputs.{name}={source}"
                for consumer in config.steps
                for name, upstream in config.steps[consumer].inputs.items()
                if upstream == step_id
            ]
    rebalanced = config.steps[rebalanced_id]
    if rebalanced.params.get("sampler") == "repeat_factor":
        variants["-sampler"] = [f"steps.{rebalanced_id}.sampler=uniform"]
    if rebalanced.params.get("loss", "ce") != "ce":
        variants[f"-{rebalanced.params['loss']}"] = [f"steps.{rebalanced_id}.loss=ce"]
    return variants


def compare(
    pipeline: str | os.PathLike[str], overrides: Sequence[str] = (), *, ablation: bool = False
) -> list[dict[str, Any]]:
    """Rows of per-bucket accuracy: baseline, rebalanced, and (with ``ablation``) one row per stage off."""
    config = load_pipeline(pipeline, overrides)
    report_id, rebalanced_id = _report_step(config)
    accuracy = _accuracy(config, overrides, report_id)
    rows = [
        {"variant": "baseline", **accuracy["baseline"]},
        {"variant": "rebalanced", **accuracy["rebalanced"]},
    ]
    if ablation:
        for variant, changes in ablation_variants(config, rebalanced_id).items():
            output = f"output_dir={config.output_dir / 'ablation' / variant.lstrip('-')}"
            rows.append(
                {
                    "variant": variant,
                    **_accuracy(config, [*overrides, *changes, output], report_id)["rebalanced"],
                }
            )
    return rows
