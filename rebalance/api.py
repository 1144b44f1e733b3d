"""The Python API. Every CLI command is a thin wrapper over a function here."""

from __future__ import annotations

import inspect
import os
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic

from rebalance.core.cache import Cache, CacheEntry, EntryCheck
from rebalance.core.config import LINEAGE_PARAM, BucketConfig, PipelineConfig, load_pipeline
from rebalance.core.progress import Reporter
from rebalance.core.registry import Role, StepSpec, all_steps
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
    "report_weight",
    "run",
    "steps",
    "steps_reference",
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


# Headings of the steps reference, in the order data flows through a pipeline (``Role``'s order).
ROLE_HEADINGS: dict[str, str] = {
    "reads": "Read data",
    "checks": "Check data",
    "describes": "Describe the data: class statistics, synonyms, concept frequency",
    "embeds": "Embed and index",
    "adds_rows": "Add rows: retrieval and synthesis",
    "removes_rows": "Remove rows: deduplication and thinning",
    "sets_sampling": "Set sampling",
    "trains": "Train and score",
    "exports": "Export",
    "reports": "Report",
    "transforms": "Other transforms",
}

# Parameters a pipeline fills in for every step that declares them (``rebalance.core.config``), so
# the default a step's signature shows is only what a call from Python gets.
FILLED_IN: dict[str, str] = {
    "seed": "from the pipeline's `seed`",
    "device": "from the pipeline's `device`",
    **{name: f"from the pipeline's `buckets.{name}`" for name in BucketConfig.model_fields},
    LINEAGE_PARAM: "filled in by the runner: the resolved config of the step and of every step it needs",
}


def steps_reference(specs: dict[str, StepSpec] | None = None) -> str:
    """Every registered step as markdown (``docs/steps.md``; ``rebalance steps --markdown``).

    Steps are grouped by role in the order data flows through a pipeline, then by name; each has
    its inputs with their artifact types, its keyword parameters with type and default, and its
    docstring. ``specs`` defaults to every registered step (``steps()``).
    """
    specs = steps() if specs is None else specs
    by_role = {
        role: sorted(name for name, spec in specs.items() if spec.role == role)
        for role in typing.get_args(Role)
    }
    lines = [
        "# Steps reference",
        "",
        "Every step a pipeline YAML can name (`step: <name>`), generated from the step registry by",
        "`rebalance steps --markdown > docs/steps.md`: do not edit by hand. Inputs are artifacts that",
        "upstream steps produce (wired with `inputs: {name: step id}`); parameters are set as keys",
        "of the step in the YAML. A *sharded* step runs shard by shard on the executor.",
        "",
        "| step | role | summary |",
        "|---|---|---|",
    ]
    for role, names in by_role.items():
        lines += [f"| [`{name}`](#{name}) | {role} | {_summary(specs[name])} |" for name in names]
    for role, names in by_role.items():
        if names:
            lines += ["", f"## {ROLE_HEADINGS[role]}"]
        for name in names:
            lines += ["", *_step_section(specs[name])]
    return "\n".join(lines) + "\n"


def _step_section(spec: StepSpec) -> list[str]:
    facts = [f"role `{spec.role}`", f"returns `{spec.output_type.__name__}`"]
    if spec.shardable:
        facts.append("sharded")
    if spec.bypass:
        facts.append(f"an ablation switches it off by passing `{spec.bypass}` through")
    if spec.version != 1:
        facts.append(f"version {spec.version}")
    lines = [f"### {spec.name}", "", "; ".join(facts) + "."]
    if spec.inputs:
        lines += ["", "| input | artifact type | optional |", "|---|---|---|"]
        lines += [
            f"| `{i.name}` | `{i.artifact_type.__name__}` | {'yes' if i.optional else 'no'} |"
            for i in spec.inputs
        ]
    if spec.params:
        lines += ["", "| parameter | type | default |", "|---|---|---|"]
        for param in spec.params:
            default = "required" if param.required else _code(repr(param.default))
            if param.name == LINEAGE_PARAM:
                default = FILLED_IN[param.name]
            elif param.name in FILLED_IN:
                default = f"{default}, {FILLED_IN[param.name]}"
            lines.append(f"| `{param.name}` | {_code(param.type_name())} | {default} |")
    doc = inspect.getdoc(spec.fn)
    if doc:
        lines += ["", _escape_html(doc)]
    return lines


def _code(text: str) -> str:
    """``text`` as a code span inside a markdown table cell, where a bare pipe would end the cell."""
    fence = "``" if "`" in text else "`"
    return fence + text.replace("|", "\\|") + fence


def _summary(spec: StepSpec) -> str:
    """The docstring's first sentence on one line (it may wrap, unlike ``StepSpec.summary``'s first
    line), for a table cell."""
    paragraph = " ".join((inspect.getdoc(spec.fn) or "").split("\n\n")[0].split())
    sentence = re.split(r"(?<=\.) (?=[A-Z])", paragraph)[0]
    return _escape_html(sentence).replace("|", "\\|")


def _escape_html(text: str) -> str:
    """Escape ``<`` outside code spans: markdown would read ``root/<class>/`` as an HTML tag."""
    parts = re.split(r"(``.*?``|`[^`]*`)", text)
    return "".join(part if part.startswith("`") else part.replace("<", "&lt;") for part in parts)


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


def report_weight(page: str | os.PathLike[str]) -> tuple[int, int]:
    """What a browser loads to show a report page: (bytes, files), the page and its images."""
    from rebalance.report.html import page_weight

    return page_weight(Path(page))
