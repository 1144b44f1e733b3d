"""Does the data work beat a loss change? A panel of baselines and pipeline variants over seeds.

A pipeline is comparable when its ``report`` step is wired to a ``baseline`` and a ``rebalanced``
training step (and optionally a second pair, ``cnn_baseline`` / ``cnn_rebalanced``), as
``pipelines/demo.yaml`` is. For every such model the panel trains, on the same test set:

- the loss-only baselines on the **original** data: cross-entropy, logit adjustment (Menon et al.,
  ICLR 2021; at τ = 1 it is balanced softmax, Ren et al., NeurIPS 2020, so only one is run), cRT
  (Kang et al., ICLR 2020) and LDAM-DRW (Cao et al., NeurIPS 2019);
- the **rebalanced** data with cross-entropy (the pipeline's own sampler), and with logit
  adjustment and LDAM-DRW (uniform sampler: the loss does the correcting, not both).

Each variant runs once per seed: ``seed=<s>`` is the pipeline-wide seed, so it varies the training
seed and every stochastic stage (thinning, SMOTE) together. Seeds pair the runs: the difference of
a variant to the best loss-only baseline (by mean top-1) is taken seed by seed, and its 95%
interval is the paired t-interval d̄ ± t₀.₉₇₅,ₙ₋₁ · s_d / √n. All accuracies are fractions of the
test set in [0, 1]; bucket accuracy is the mean of the bucket's per-class accuracies.

``ablation_variants`` turns one stage off at a time (its consumers read the stage's own input), or
the rebalanced run's sampler, or its loss. Every run shares the cache, so only what a change
touches is recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from rebalance.core.config import PipelineConfig, StepConfig, load_pipeline
from rebalance.core.runner import run_pipeline
from rebalance.errors import RebalanceError
from rebalance.report.panel import METRICS

# Report inputs that name the training runs to compare, one (original, rebalanced) pair a model.
MODEL_INPUTS = (("baseline", "rebalanced"), ("cnn_baseline", "cnn_rebalanced"))
CRT_EPOCHS = 10


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the panel: which data the model trains on and the training parameters it sets."""

    name: str
    data: Literal["original", "rebalanced"]
    params: dict[str, Any]


LOSS_ONLY = (
    Variant("CE", "original", {"loss": "ce", "crt_epochs": 0, "sampler": "uniform"}),
    Variant(
        "logit adjustment", "original", {"loss": "logit_adjustment", "crt_epochs": 0, "sampler": "uniform"}
    ),
    Variant("cRT", "original", {"loss": "ce", "crt_epochs": CRT_EPOCHS, "sampler": "uniform"}),
    Variant("LDAM-DRW", "original", {"loss": "ldam_drw", "crt_epochs": 0, "sampler": "uniform"}),
)
WITH_PIPELINE = (
    # The pipeline's sampling stage is part of its data: CE draws by the repeat factors it set.
    Variant("pipeline + CE", "rebalanced", {"loss": "ce", "crt_epochs": 0, "sampler": "repeat_factor"}),
    Variant(
        "pipeline + logit adjustment",
        "rebalanced",
        {"loss": "logit_adjustment", "crt_epochs": 0, "sampler": "uniform"},
    ),
    Variant("pipeline + LDAM-DRW", "rebalanced", {"loss": "ldam_drw", "crt_epochs": 0, "sampler": "uniform"}),
)
PANEL = (*LOSS_ONLY, *WITH_PIPELINE)


@dataclasses.dataclass(frozen=True)
class _Wiring:
    report: StepConfig
    # model (its training step's name) -> {"original": report input, "rebalanced": report input}
    models: dict[str, dict[str, str]]

    def step_id(self, model: str, data: str) -> str:
        return self.report.inputs[self.models[model][data]]


def _wiring(config: PipelineConfig) -> _Wiring:
    for step in config.steps.values():
        if step.spec.name != "report":
            continue
        models = {
            config.steps[step.inputs[rebalanced]].spec.name: {"original": original, "rebalanced": rebalanced}
            for original, rebalanced in MODEL_INPUTS
            if {original, rebalanced} <= set(step.inputs)
        }
        if models:
            return _Wiring(step, models)
    raise RebalanceError(
        f"{config.source}: compare needs a `report` step whose inputs include `baseline` and `rebalanced` "
        "training steps (see pipelines/demo.yaml)"
    )


def _run_report(
    config: PipelineConfig, overrides: Sequence[str], output_dir: Path, report_id: str
) -> dict[str, Any]:
    result = run_pipeline(load_pipeline(config.source, [*overrides, f"output_dir={output_dir}"]))
    return json.loads((result.output_dir / report_id / "report.json").read_text())


def variant_overrides(config: PipelineConfig, wiring: _Wiring, variant: Variant) -> list[str]:
    """``steps.<id>.<param>=<value>`` for every model's training step on the variant's data."""
    overrides = []
    for model in wiring.models:
        step = config.steps[wiring.step_id(model, variant.data)]
        overrides += [
            f"steps.{step.id}.{name}={value}"
            for name, value in variant.params.items()
            if step.spec.param(name) is not None
        ]
    return overrides


def paired_interval(differences: Sequence[float], confidence: float = 0.95) -> dict[str, float | None]:
    """Mean of paired differences and its two-sided t-interval; no interval from a single pair."""
    from scipy import stats

    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return {"mean": mean, "low": None, "high": None}
    half = (
        float(stats.t.ppf(0.5 + confidence / 2, len(differences) - 1))
        * statistics.stdev(differences)
        / math.sqrt(len(differences))
    )
    return {"mean": mean, "low": mean - half, "high": mean + half}


def summarise(runs: dict[str, list[dict[str, float | None]]]) -> dict[str, Any]:
    """Per variant (name -> per-seed accuracies): mean ± std, and paired intervals to the best
    loss-only baseline by mean top-1. Buckets a model cannot score (no test class) stay ``None``."""
    rows = []
    for variant in PANEL:
        if variant.name not in runs:
            continue
        seeds = runs[variant.name]
        mean, std = {}, {}
        for metric in METRICS:
            values = [run[metric] for run in seeds]
            scored = [v for v in values if v is not None]
            mean[metric] = statistics.fmean(scored) if scored else None
            std[metric] = (statistics.stdev(scored) if len(scored) > 1 else 0.0) if scored else None
        rows.append({"variant": variant.name, "data": variant.data, "runs": seeds, "mean": mean, "std": std})
    loss_only = [row for row in rows if row["data"] == "original"]
    best = max(loss_only, key=lambda row: row["mean"]["top1"]) if loss_only else None
    for row in rows:
        row["vs_best"] = {
            metric: None
            if best is None or row is best or row["mean"][metric] is None or best["mean"][metric] is None
            else paired_interval(
                [
                    mine[metric] - theirs[metric]
                    for mine, theirs in zip(row["runs"], best["runs"], strict=True)
                ]
            )
            for metric in METRICS
        }
    return {"best_loss_only": best["variant"] if best else None, "rows": rows}


def compare(
    pipeline: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    seeds: int = 3,
    ablation: bool = False,
) -> dict[str, Any]:
    """The baselines panel over ``seeds`` seeds (0 … seeds−1) and, with ``ablation``, one row per
    stage turned off (at seed 0, on the rebalanced runs).

    Returns ``{"seeds": [...], "data": what the stages added and removed at seed 0, "models":
    {training step name: summarise(...)}, "ablation": rows}``;
    each run's outputs are under ``<output_dir>/compare/seed<s>/<variant>/``.
    """
    if seeds < 1:
        raise RebalanceError(f"seeds must be at least 1, got {seeds}")
    config = load_pipeline(pipeline, overrides)
    wiring = _wiring(config)
    runs: dict[str, dict[str, list[dict[str, float | None]]]] = {model: {} for model in wiring.models}
    data: dict[str, Any] = {}
    for seed in range(seeds):
        for variant in PANEL:
            report = _run_report(
                config,
                [*overrides, f"seed={seed}", *variant_overrides(config, wiring, variant)],
                config.output_dir / "compare" / f"seed{seed}" / _slug(variant.name),
                wiring.report.id,
            )
            for model, inputs in wiring.models.items():
                run = report["accuracy"][inputs[variant.data]]
                runs[model].setdefault(variant.name, []).append({metric: run[metric] for metric in METRICS})
            data.setdefault(seed, {"retrieval": report["retrieval"], "changes": report["changes"]})
    result: dict[str, Any] = {
        "pipeline": str(config.source),
        "seeds": list(range(seeds)),
        # What the data stages did at seed 0 (they are the same for every variant of a seed).
        "data": data[0],
        "models": {model: summarise(model_runs) for model, model_runs in runs.items()},
        "ablation": [],
    }
    if ablation:
        rebalanced_ids = [wiring.step_id(model, "rebalanced") for model in wiring.models]
        for variant, changes in ablation_variants(config, rebalanced_ids).items():
            accuracy = _run_report(
                config,
                [*overrides, *changes],
                config.output_dir / "ablation" / variant.lstrip("-"),
                wiring.report.id,
            )["accuracy"]
            result["ablation"].append(
                {
                    "variant": variant,
                    "models": {
                        model: {metric: accuracy[inputs["rebalanced"]][metric] for metric in METRICS}
                        for model, inputs in wiring.models.items()
                    },
                }
            )
    return result


def gallery_report(pipeline: str | os.PathLike[str], overrides: Sequence[str] = ()) -> tuple[str, Path]:
    """The panel's gallery source: the seed-0 run of the first pipeline variant (its data is that of
    every pipeline variant of the seed), as (variant name, its report folder)."""
    config = load_pipeline(pipeline, overrides)
    variant = WITH_PIPELINE[0]
    run = config.output_dir / "compare" / "seed0" / _slug(variant.name)
    return variant.name, run / _wiring(config).report.id


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).replace("__", "_").strip("_")


def upstream_steps(config: PipelineConfig, step_ids: Sequence[str]) -> list[str]:
    """Every step ``step_ids`` read from, directly or not, in pipeline order."""
    seen: set[str] = set()
    pending = list(step_ids)
    while pending:
        for upstream in config.steps[pending.pop()].inputs.values():
            if upstream not in seen:
                seen.add(upstream)
                pending.append(upstream)
    return [s for s in config.steps if s in seen]


def ablation_variants(config: PipelineConfig, rebalanced_ids: Sequence[str]) -> dict[str, list[str]]:
    """Variant name ("-<step id>", "-<loss>") -> the overrides that turn that stage off.

    Derived from each step's declared role: a step that adds or removes rows and declares a
    ``bypass`` input is switched off by pointing its consumers at that input; a ``sets_sampling``
    step by training on its data with the uniform sampler instead of its repeat factors; a balanced
    loss by cross-entropy.
    """
    variants: dict[str, list[str]] = {}
    rebalanced = [config.steps[step_id] for step_id in rebalanced_ids]
    for step_id in upstream_steps(config, rebalanced_ids):
        spec = config.steps[step_id].spec
        if spec.role in ("adds_rows", "removes_rows") and spec.bypass is not None:
            source = config.steps[step_id].inputs[spec.bypass]
            variants[f"-{step_id}"] = [
                f"steps.{consumer}.inputs.{name}={source}"
                for consumer in config.steps
                for name, upstream in config.steps[consumer].inputs.items()
                if upstream == step_id
            ]
        elif spec.role == "sets_sampling":
            samplers = [
                f"steps.{s.id}.sampler=uniform"
                for s in rebalanced
                if s.params.get("sampler") == "repeat_factor"
            ]
            if samplers:
                variants[f"-{step_id}"] = samplers
    for loss in dict.fromkeys(
        s.params.get("loss", "ce") for s in rebalanced if s.params.get("loss", "ce") != "ce"
    ):
        variants[f"-{loss}"] = [
            f"steps.{s.id}.loss=ce" for s in rebalanced if s.params.get("loss", "ce") == loss
        ]
    return variants
