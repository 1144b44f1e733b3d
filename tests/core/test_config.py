from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rebalance.core.config import load_pipeline
from rebalance.errors import ConfigError
from tests.helpers import REPO, TINY, TINY_STEPS


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def issues_of(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, overrides or [])
    return [str(issue) for issue in caught.value.issues]


def one_issue(path: Path, overrides: list[str] | None = None) -> str:
    found = issues_of(path, overrides)
    assert len(found) == 1, found
    return found[0]


def test_tiny_pipeline_is_valid_and_ordered() -> None:
    config = load_pipeline(TINY)
    assert list(config.steps) == TINY_STEPS
    assert config.steps["train"].params["max_images_per_class"] == 20  # tiny.yaml over demo.yaml
    assert config.steps["train"].params["root"].is_absolute()
    assert config.sinks() == ["stats", "epochs", "export", "report"]


def test_unknown_step_suggests_the_closest_name(tmp_path: Path) -> None:
    path = write(tmp_path, "steps:\n  a: {step: class_stat}\n")
    message = one_issue(path)
    assert str(path) in message and "steps.a.step" in message
    assert "did you mean 'class_stats'" in message


def test_unknown_parameter_names_key_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, f"steps:\n  a: {{step: ingest_image_folder, root: {tmp_path}, splt: x}}\n")
    message = one_issue(path)
    assert "steps.a.splt: unknown parameter" in message and "did you mean 'split'" in message


def test_mistyped_parameter_says_what_was_expected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"steps:\n  a: {{step: ingest_image_folder, root: {tmp_path}, max_images_per_class: many}}\n",
    )
    message = one_issue(path)
    assert "steps.a.max_images_per_class" in message and "valid integer" in message and "'many'" in message


def test_literal_parameter_lists_allowed_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"steps:\n  a: {{step: ingest_image_folder, root: {tmp_path}}}\n  b: {{step: verify_images, inputs: {{dataset: a}}, on_error: ignore}}\n",
    )
    message = one_issue(path)
    assert "steps.b.on_error" in message and "'drop' or 'fail'" in message


def test_missing_input_and_unknown_upstream(tmp_path: Path) -> None:
    path = write(
        tmp_path, "steps:\n  a: {step: verify_images}\n  b: {step: class_stats, inputs: {dataset: verifed}}\n"
    )
    found = issues_of(path)
    assert any("steps.a.inputs.dataset: missing required input (LabeledDataset)" in m for m in found)
    assert any("steps.b.inputs.dataset: no step with id 'verifed'" in m for m in found)


def test_unknown_input_name_suggests(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"steps:\n  a: {{step: ingest_image_folder, root: {tmp_path}}}\n  b: {{step: class_stats, inputs: {{datset: a}}}}\n",
    )
    found = issues_of(path)
    assert any("steps.b.inputs.datset" in m and "did you mean 'dataset'" in m for m in found)


def test_input_of_the_wrong_artifact_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"steps:\n  a: {{step: ingest_image_folder, root: {tmp_path}}}\n  s: {{step: class_stats, inputs: {{dataset: a}}}}\n  e: {{step: export_hf, inputs: {{dataset: s}}}}\n",
    )
    message = one_issue(path)
    assert (
        "steps.e.inputs.dataset" in message
        and "produces ClassStats" in message
        and "expects LabeledDataset" in message
    )


def test_cycle_is_reported_with_its_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "steps:\n  a: {step: verify_images, inputs: {dataset: b}}\n  b: {step: verify_images, inputs: {dataset: a}}\n",
    )
    message = one_issue(path)
    assert "cycle" in message and ("a -> b -> a" in message or "b -> a -> b" in message)


def test_missing_path_is_reported_before_running(tmp_path: Path) -> None:
    path = write(tmp_path, "steps:\n  a: {step: ingest_image_folder, root: no/such/folder}\n")
    message = one_issue(path)
    assert "steps.a.root: path does not exist" in message and str(tmp_path / "no/such/folder") in message


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "steps:\n  a: [1\n")
    assert "invalid YAML: line 3" in one_issue(path)


def test_unknown_top_level_key_and_executor_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"sed: 1\nexecutor: {{kind: dusk}}\nsteps:\n  a: {{step: ingest_image_folder, root: {tmp_path}}}\n",
    )
    found = issues_of(path)
    assert any("sed: unknown key" in m and "did you mean 'seed'" in m for m in found)
    assert any("executor.kind" in m and "'local' or 'dask'" in m for m in found)


def test_all_errors_are_reported_at_once_with_their_source(tmp_path: Path) -> None:
    preset = write(tmp_path, "steps:\n  a: {step: ingest_image_folder, root: missing}\n", "preset.yaml")
    path = write(
        tmp_path,
        "extends: preset.yaml\nsteps:\n  b: {step: class_stats, inputs: {dataset: a}, rare_max_images: 0}\n",
    )
    found = issues_of(path, ["steps.b.common_max_images=lots", "seed=x"])
    assert len(found) == 4, found
    assert any(m.startswith(f"{preset}: steps.a.root") for m in found)
    assert any(m.startswith(f"{path}: steps.b.rare_max_images") for m in found)
    assert any(m.startswith("command line: steps.b.common_max_images") for m in found)
    assert any(m.startswith("command line: seed") for m in found)


def test_overrides_are_typed_and_cli_paths_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_pipeline(TINY, ["steps.export.num_shards=3", "seed=7", "cache_dir=here"])
    assert config.steps["export"].params["num_shards"] == 3
    assert config.seed == 7
    assert config.cache_dir == tmp_path / "here"


def test_config_hash_changes_with_a_parameter() -> None:
    assert load_pipeline(TINY).config_hash != load_pipeline(TINY, ["steps.export.num_shards=3"]).config_hash
    assert load_pipeline(TINY).config_hash == load_pipeline(TINY).config_hash


def test_extends_loop_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    assert any("extends itself" in m for m in issues_of(tmp_path / "a.yaml"))


def test_shipped_pipelines_are_valid() -> None:
    # These need the user's data paths: tests/test_lvis_pipeline.py and
    # tests/steps/test_caption_retrieval.py run them with overrides.
    user_data = {"lvis.yaml", "laion_captions.yaml", "laion_captions_join.yaml"}
    shipped = sorted(p for p in TINY.parent.glob("*.yaml") if p.name not in user_data)
    assert [p.name for p in shipped] == ["demo.yaml", "demo_confusable.yaml", "demo_full.yaml", "tiny.yaml"]
    for pipeline in shipped:
        config = load_pipeline(pipeline)
        # Every step its files declare (through extends), each after the steps it reads.
        declared = set(yaml.safe_load(pipeline.read_text())["steps"])
        assert declared <= set(config.steps), pipeline
        order = list(config.steps)
        for position, step in enumerate(config.steps.values()):
            assert all(order.index(upstream) < position for upstream in step.inputs.values()), step.id
        # Every file a step reads ships with the repository, resolved from the YAML's folder.
        for step in config.steps.values():
            for param in step.spec.params:
                value = step.params[param.name]
                if param.content_hashed and value is not None:
                    assert value.is_absolute() and value.is_relative_to(REPO) and value.exists()


def test_lineage_holds_the_exact_config_of_a_step_and_its_ancestors(tmp_path: Path) -> None:
    config = load_pipeline(TINY)
    lineage = config.steps["export"].params["lineage"]
    # The export's ancestors: every step but those it does not depend on.
    assert set(lineage["steps"]) == set(TINY_STEPS) - {
        "stats",
        "epochs",
        "baseline",
        "rebalanced",
        "cnn_baseline",
        "cnn_rebalanced",
        "report",
    }
    assert lineage["steps"]["train"]["params"]["max_images_per_class"] == 20 and lineage["seed"] == 0
    assert "lineage" not in config.to_json()["steps"]["export"]["params"]
    path = write(
        tmp_path,
        f"steps:\n  a: {{step: ingest_image_folder, root: {tmp_path}}}\n  e: {{step: export_hf, inputs: {{dataset: a}}, lineage: {{}}}}\n",
    )
    assert "steps.e.lineage: is filled in by the runner" in one_issue(path)


def test_a_pipeline_wide_device_reaches_every_step_that_takes_one(tmp_path: Path) -> None:
    config = load_pipeline(TINY, ["device=cpu", "steps.baseline.device=auto"])
    devices = {s.id: s.params["device"] for s in config.steps.values() if "device" in s.params}
    assert devices["rebalanced"] == "cpu" and devices["baseline"] == "auto"
    assert all(d == "cpu" for step_id, d in devices.items() if step_id != "baseline")
    assert "device: unknown device 'gpu' (allowed: auto, cpu, cuda)" in one_issue_of_overrides(["device=gpu"])


def one_issue_of_overrides(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_pipeline(TINY, overrides)
    return str(caught.value)


def test_bucket_thresholds_reach_every_step_that_declares_them(tmp_path: Path) -> None:
    config = load_pipeline(TINY, ["buckets.common_max_images=15"])
    declaring = {
        s.id: (s.params["rare_max_images"], s.params["common_max_images"])
        for s in config.steps.values()
        if "common_max_images" in s.params
    }
    assert set(declaring) == {
        "stats",
        "retrieved",
        "synthesized",
        "deduped",
        "thinned",
        "baseline",
        "rebalanced",
        "cnn_baseline",
        "cnn_rebalanced",
        "export",
        "report",
    }
    assert set(declaring.values()) == {(10, 15)}
    typo = one_issue(TINY, ["buckets.rare_max=5"])
    assert "buckets.rare_max: unknown parameter" in typo and "rare_max_images" in typo
    assert "must be larger than rare_max_images" in one_issue(
        TINY, ["buckets.rare_max_images=50", "buckets.common_max_images=20"]
    )


def test_shard_rows_is_for_sharded_steps_and_positive(tmp_path: Path) -> None:
    path = write(tmp_path, f"steps:\n  a: {{step: ingest_image_folder, root: {tmp_path}, shard_rows: 10}}\n")
    message = one_issue(path)
    assert "steps.a.shard_rows: step 'ingest_image_folder' is not sharded" in message
    config = load_pipeline(TINY, ["steps.verified.shard_rows=7"])
    assert config.steps["verified"].shard_rows == 7 and config.steps["train"].shard_rows is None
    assert "expected a positive integer, got 0" in one_issue(TINY, ["steps.verified.shard_rows=0"])
