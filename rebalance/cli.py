"""The ``rebalance`` command line: a thin layer over ``rebalance.api``."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rebalance import api
from rebalance.core.config import LINEAGE_PARAM
from rebalance.core.progress import RichReporter
from rebalance.errors import RebalanceError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Data-centric rebalancing for long-tailed visual recognition.",
)
cache_app = typer.Typer(no_args_is_help=True, help="Inspect or clear the step cache.")
app.add_typer(cache_app, name="cache")
out = Console(soft_wrap=True)
err = Console(stderr=True)

Pipeline = Annotated[str, typer.Argument(help="Pipeline YAML file.")]
Overrides = Annotated[list[str] | None, typer.Argument(help="key.path=value overrides.")]
CacheDir = Annotated[str, typer.Option(help="Cache folder.", envvar="REBALANCE_CACHE")]


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print user errors as a message (no traceback) and exit with the error's code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RebalanceError as error:
            err.print(f"[red]error:[/red] {error}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted: finished work is cached; rerun the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def run(
    pipeline: Pipeline,
    overrides: Overrides = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Run sharded steps on this dask scheduler (tcp://host:port).")
    ] = None,
) -> None:
    """Run a pipeline: every step whose cache key changed, then write the manifest."""
    err.print(f"running {pipeline}")
    result = api.run(pipeline, overrides or [], scheduler=scheduler, reporter=RichReporter(err))
    executed = result.executed
    summary = f"{len(executed)} step(s) executed" if executed else "nothing to do: every step was cached"
    err.print(f"{summary}; outputs and manifest.json in {result.output_dir}")


@app.command()
@user_errors
def plan(pipeline: Pipeline, overrides: Overrides = None) -> None:
    """Show which steps a run would execute, and why."""
    plans = api.plan(pipeline, overrides or [])
    for step_plan in plans:
        action = "skip" if step_plan.cached else "RUN "
        label = f"{step_plan.step.id} ({step_plan.step.spec.name})"
        out.print(
            f"{action} {label:<36} {step_plan.reason:<40} key {step_plan.key}",
            highlight=False,
            soft_wrap=True,
        )
    to_run = sum(not p.cached for p in plans)
    out.print(f"{to_run} of {len(plans)} step(s) would run", highlight=False)


@app.command()
@user_errors
def validate(pipeline: Pipeline, overrides: Overrides = None) -> None:
    """Check a pipeline against the step signatures without running anything."""
    config = api.validate(pipeline, overrides or [])
    out.print(f"{pipeline}: valid ({len(config.steps)} steps, config hash {config.config_hash})")


@app.command()
@user_errors
def steps(
    markdown: Annotated[
        bool, typer.Option(help="Print the full reference as markdown (docs/steps.md is this output).")
    ] = False,
) -> None:
    """List every registered step with its inputs, parameters and summary."""
    if markdown:
        print(api.steps_reference(), end="")
        return
    for name, spec in api.steps().items():
        flags = " [dim](sharded)[/dim]" if spec.shardable else ""
        bypass = f", bypassed by {spec.bypass}" if spec.bypass else ""
        out.print(
            f"[bold]{name}[/bold]{f' v{spec.version}' if spec.version != 1 else ''}{flags} [dim]({spec.role}{bypass})[/dim] "
            f"-> {spec.output_type.__name__}: {spec.summary}"
        )
        for spec_input in spec.inputs:
            optional = " (optional)" if spec_input.optional else ""
            out.print(f"    input  {spec_input.name}: {spec_input.artifact_type.__name__}{optional}")
        for param in spec.params:
            default = "required" if param.required else f"= {param.default!r}"
            if param.name == LINEAGE_PARAM:
                default = "(filled in by the runner)"
            out.print(
                f"    param  {param.name}: {param.type_name()} {default}", markup=False, highlight=False
            )


@app.command()
@user_errors
def train(
    dataset: Annotated[str, typer.Argument(help="An exported dataset folder, or a run folder with export/.")],
    loss: Annotated[
        str, typer.Option(help="ce, balanced_softmax, logit_adjustment, class_balanced, focal, ldam_drw.")
    ] = "ce",
    sampler: Annotated[
        str, typer.Option(help="uniform, or repeat_factor (uses the dataset's column).")
    ] = "uniform",
    hidden: Annotated[int, typer.Option(help="Hidden units of an MLP head; 0 is a linear probe.")] = 0,
    epochs: int = 30,
    crt_epochs: Annotated[int, typer.Option(help="Then re-train the classifier class-balanced (cRT).")] = 0,
    lr: float = 0.01,
    lr_schedule: Annotated[
        str, typer.Option(help="constant, or cosine (decays to 0 over the training).")
    ] = "constant",
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    checkpoint: Annotated[str | None, typer.Option(help="Save after every epoch; resume from it.")] = None,
    zero_shot: Annotated[
        str | None,
        typer.Option(
            help="Start the probe from this CLIP encoder's zero-shot classifier (the encoder of the export's "
            "embeddings), e.g. open_clip:ViT-B-32@laion2b_s34b_b79k."
        ),
    ] = None,
    metrics_json: Annotated[
        str | None, typer.Option(help="Also write the metrics as JSON to this file.")
    ] = None,
) -> None:
    """Train a linear probe / MLP head on an exported dataset; print accuracy per frequency bucket."""
    metrics = api.train(
        dataset,
        checkpoint=checkpoint,
        zero_shot=zero_shot,
        loss=loss,
        sampler=sampler,
        hidden=hidden,
        epochs=epochs,
        crt_epochs=crt_epochs,
        lr=lr,
        lr_schedule=lr_schedule,
        seed=seed,
        device=device,
    )
    table = Table("metric", "accuracy")
    for bucket, value in metrics["bucket_accuracy"].items():
        table.add_row(bucket, "–" if value is None else f"{value:.3f}")
    table.add_row("top-1", f"{metrics['top1']:.3f}")
    table.add_row("mean per class", f"{metrics['mean_class_accuracy']:.3f}")
    if metrics_json:
        Path(metrics_json).write_text(json.dumps(metrics, indent=2))
    out.print(
        f"{metrics['encoder']} features, loss {loss}, sampler {sampler}, {metrics['config']['device']}",
        highlight=False,
    )
    out.print(table)


@app.command()
@user_errors
def report(run_dir: Annotated[str, typer.Argument(help="A run's output folder.")] = "runs/demo") -> None:
    """Show where a run's HTML report is, and its per-bucket accuracy."""
    page, figures = api.report_figures(run_dir)
    weight, files = api.report_weight(page)
    out.print(
        f"report: {page.resolve()} ({weight:,} bytes in {files} files with its images)", highlight=False
    )
    if "gallery" in figures:
        gallery = figures["gallery"]
        out.print(
            f"gallery: {gallery['class_count']} classes on {gallery['pages']} page(s), "
            f"{gallery['thumbnails']} thumbnails ({gallery['thumbnail_bytes']:,} bytes)",
            highlight=False,
        )
    panel = Path(run_dir) / "compare" / "index.html"
    if panel.is_file():
        out.print(f"baselines panel (rebalance compare): {panel.resolve()}", highlight=False)
    if "accuracy" in figures:
        from rebalance.report.panel import HEADERS, METRICS

        table = Table("run", *HEADERS, title="test accuracy per frequency bucket")
        for run, values in figures["accuracy"].items():
            table.add_row(run, *("–" if values[m] is None else f"{values[m]:.3f}" for m in METRICS))
        out.print(table)


@app.command()
@user_errors
def compare(
    pipeline: Pipeline,
    overrides: Overrides = None,
    seeds: Annotated[int, typer.Option(help="Seeds per variant (0 … N-1).")] = 3,
    ablation: Annotated[bool, typer.Option(help="Also turn each rebalancing stage off in turn.")] = False,
    markdown: Annotated[bool, typer.Option(help="Print the tables as markdown.")] = False,
) -> None:
    """Loss-only baselines vs the pipeline, per bucket, over seeds, with paired 95% intervals."""
    from rebalance.report.panel import data_summary, panel_markdown, panel_tables

    result = api.compare(pipeline, overrides or [], seeds=seeds, ablation=ablation)
    if markdown:
        print(panel_markdown(result), end="")
        return
    out.print(data_summary(result["data"]), highlight=False)
    for caption, header, rows in panel_tables(result):
        table = Table(*header, title=caption)
        for row in rows:
            table.add_row(*row)
        out.print(table)


@cache_app.command("ls")
@user_errors
def cache_ls(cache_dir: CacheDir = "cache") -> None:
    """List cache entries with their size and row count."""
    entries = api.cache_entries(cache_dir)
    table = Table("step", "key", "rows", "size", "state")
    for entry in entries:
        state = "complete" if entry.complete else "partial"
        table.add_row(
            entry.step, entry.key, "" if entry.rows is None else f"{entry.rows:,}", _size(entry.bytes), state
        )
    out.print(table if entries else f"{os.path.abspath(cache_dir)}: empty")


@cache_app.command("clear")
@user_errors
def cache_clear(
    cache_dir: CacheDir = "cache",
    step: Annotated[str | None, typer.Option(help="Only this step's entries.")] = None,
    entry: Annotated[
        list[str] | None,
        typer.Option(help="Only this entry, STEP/KEY as `cache verify` lists it; repeatable."),
    ] = None,
) -> None:
    """Remove cache entries (all, one step's, or the entries named)."""
    removed = api.cache_clear(cache_dir, step, entry or [])
    out.print(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'}")


@cache_app.command("verify")
@user_errors
def cache_verify(cache_dir: CacheDir = "cache") -> None:
    """Re-hash every entry against the digests recorded when it was written; list the corrupt and
    partial ones with the command that drops them. Exits 1 when an entry is corrupt."""
    checks = api.cache_verify(cache_dir)
    bad = [check for check in checks if check.state in ("corrupt", "partial")]
    counts = {
        state: sum(c.state == state for c in checks) for state in ("ok", "corrupt", "partial", "unverified")
    }
    out.print(", ".join(f"{n} {state}" for state, n in counts.items()) + f" in {os.path.abspath(cache_dir)}")
    for check in checks:
        if check.state != "ok":
            out.print(
                f"{check.state:<10} {check.entry.step}/{check.entry.key}: {'; '.join(check.problems)}",
                highlight=False,
            )
    if bad:
        drop = " ".join(f"--entry {c.entry.step}/{c.entry.key}" for c in bad)
        out.print(
            f"drop them with: rebalance cache clear --cache-dir {cache_dir} {drop}",
            highlight=False,
            soft_wrap=True,
        )
    if counts["corrupt"]:
        raise typer.Exit(1)


@cache_app.command("keep")
@user_errors
def cache_keep(
    pipeline: Pipeline,
    steps_and_overrides: Annotated[
        list[str], typer.Argument(help="Step ids to keep, then any key.path=value overrides of the run.")
    ],
) -> None:
    """Keep the previous run's outputs of these steps although their code changed (a change you know
    leaves the output as it was); their downstream steps stay cached too."""
    step_ids = [word for word in steps_and_overrides if "=" not in word]
    overrides = [word for word in steps_and_overrides if "=" in word]
    for plan in api.cache_keep(pipeline, step_ids, overrides):
        out.print(f"kept {plan.step.id} ({plan.step.spec.name}): {plan.reason}", highlight=False)


def _size(num_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")
