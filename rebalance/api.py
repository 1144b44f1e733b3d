"""The Python API. Every CLI command is a thin wrapper over a function here."""

from __future__ import annotations

import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic

from rebalance.core.cache import Cache, CacheEntry, EntryCheck
from rebalance.core.config import PipelineConfig, load_pipeline
from rebalance.core.progress import Reporter
from rebalance.core.registry import StepSpec, all_steps
from rebalance.core.runner import RunResult, StepPlan, keep_outputs, plan_pipeline, run_pipeline
from rebalance.errors import ConfigError, ConfigIssue, did_you_mean
from rebalance.train.choices import HeadConfig

__all__ = [
    "cache_clear",
    "cache_entries",
    "cache_keep",
    "cache_verify",
    "compare",
    "plan",
    "report_figures",
    "run",
    "steps",
    "train",
    "validate",
]


def validate(pipeline: str | os.PathLike[str], overrides: Sequence[str] = ()) -> PipelineConfig:
    """Load and validate a pipeline; raises ``ConfigError`` listing every problem."""
    return load_pipeline(pipeline, overrides)


def plan(pipeline: str | os.PathLike[str], overrides: Sequence[str] = ()) -> list[StepPlan]:
    """Which steps would run, and why (new, changed parameter, changed input, upstream, cached)."""
    return plan_pipeline(load_pipeline(pipeline, overrides))


def run(
    pipeline: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    scheduler: str | None = None,
    reporter: Reporter | None = None,
) -> RunResult:
    """Run a pipeline; ``scheduler`` (``tcp://host:port``) runs sharded steps on that dask cluster."""
    if scheduler:
        overrides = [*overrides, "executor.kind=dask", f"executor.scheduler={scheduler}"]
    return run_pipeline(load_pipeline(pipeline, overrides), reporter=reporter)


def steps() -> dict[str, StepSpec]:
    """Every registered step by name."""
    return all_steps()


def cache_entries(cache_dir: str | os.PathLike[str]) -> list[CacheEntry]:
    return Cache(Path(cache_dir)).entries()


def cache_clear(
    cache_dir: str | os.PathLike[str], step: str | None = None, entries: Sequence[str] = ()
) -> int:
    """Remove cached entries (all, one step's, or the ``step/key`` entries named); returns how many
    were removed."""
    return Cache(Path(cache_dir)).clear(step, tuple(entries))


def cache_verify(cache_dir: str | os.PathLike[str]) -> list[EntryCheck]:
    """Re-hash every cache entry against the digests recorded when it was written."""
    return Cache(Path(cache_dir)).verify()


def cache_keep(
    pipeline: str | os.PathLike[str], steps: Sequence[str], overrides: Sequence[str] = ()
) -> list[StepPlan]:
    """Keep the previous run's outputs of ``steps`` although their code changed (see
    ``rebalance.core.runner.keep_outputs``); returns the plans of the steps kept."""
    return keep_outputs(load_pipeline(pipeline, overrides), list(steps))


def train(
    dataset: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    zero_shot: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train a head on an exported dataset (or a run folder with ``export/``); returns the metrics.

    ``options`` are ``HeadConfig`` fields (loss, sampler, hidden, epochs, crt_epochs, lr, seed,
    device, ...). With ``checkpoint``, training saves after every epoch and resumes from the file.
    ``zero_shot`` names the CLIP encoder that made the export's ``embedding`` column (e.g.
    ``open_clip:ViT-B-32@laion2b_s34b_b79k``): the linear probe starts from its zero-shot classifier.
    """
    config = training_options(options)
    from rebalance.train.hf import train_on_export

    return train_on_export(
        Path(dataset),
        config,
        checkpoint=Path(checkpoint) if checkpoint else None,
        zero_shot_encoder=zero_shot,
    )


def training_options(options: dict[str, Any]) -> HeadConfig:
    """``rebalance train``'s options as a validated ``HeadConfig``; every bad one is a
    ``ConfigError`` naming its flag, with the allowed values and a did-you-mean."""
    try:
        return HeadConfig(**options)
    except pydantic.ValidationError as error:
        fields = HeadConfig.__pydantic_fields__
        issues = []
        for detail in error.errors():
            name = str(detail["loc"][0]) if detail["loc"] else ""
            flag = f"--{name.replace('_', '-')}"
            if name not in fields:
                allowed = [f"--{field.replace('_', '-')}" for field in fields]
                issues.append(
                    ConfigIssue("rebalance train", flag, "unknown option", did_you_mean(flag, allowed))
                )
                continue
            choices = typing.get_args(fields[name].annotation)
            if typing.get_origin(fields[name].annotation) is typing.Literal:
                hint = did_you_mean(str(detail["input"]), [str(choice) for choice in choices])
                issues.append(
                    ConfigIssue("rebalance train", flag, f"unknown value {detail['input']!r}", hint)
                )
            else:
                issues.append(
                    ConfigIssue("rebalance train", flag, f"{detail['msg']}, got {detail['input']!r}")
                )
        raise ConfigError(issues, "the options of rebalance train") from None


def compare(
    pipeline: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    seeds: int = 3,
    ablation: bool = False,
) -> dict[str, Any]:
    """The baselines panel: loss-only baselines on the original data and the pipeline's variants, per
    bucket, mean ± std over ``seeds`` seeds, with paired 95% intervals to the best loss-only
    baseline; with ``ablation``, one row per stage turned off. Also written to
    ``<output_dir>/compare/`` as ``panel.json``, ``panel.md`` and ``index.html``; the page shows
    the image gallery of the seed-0 pipeline run, whose report is copied to ``compare/report/``.
    """
    import json
    import shutil

    from rebalance.compare import compare as compare_runs
    from rebalance.compare import gallery_report
    from rebalance.core.fs import write_bytes_atomic, write_json_atomic
    from rebalance.report.panel import panel_html, panel_markdown

    result = compare_runs(pipeline, overrides, seeds=seeds, ablation=ablation)
    folder = load_pipeline(pipeline, overrides).output_dir / "compare"
    write_json_atomic(folder / "panel.json", result)
    write_bytes_atomic(folder / "panel.md", panel_markdown(result).encode())
    variant, report_dir = gallery_report(pipeline, overrides)
    gallery = json.loads((report_dir / "report.json").read_text()).get("gallery")
    if gallery is not None:
        # Copied whole: the gallery's pages link back to their report, and its thumbnails are there.
        staged = folder / "report.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(report_dir, staged)
        shutil.rmtree(folder / "report", ignore_errors=True)
        staged.rename(folder / "report")
    page = panel_html(
        result,
        f"{Path(pipeline).name}: baselines panel",
        gallery=gallery,
        gallery_prefix="report/",
        gallery_run=variant,
    )
    write_bytes_atomic(folder / "index.html", page.encode())
    return result


def report_figures(run_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The report page of a finished run and the figures behind it (``report.json``)."""
    import json

    from rebalance.errors import DataError

    pages = sorted(Path(run_dir).glob("*/report.html"))
    if not pages:
        raise DataError(
            f"{run_dir}: no report here; run a pipeline with a `report` step, then pass its output_dir"
        )
    return pages[0], json.loads((pages[0].parent / "report.json").read_text())
