"""GPU nodes as the runner sees them: GPU steps' shards go to GPU workers, a worker keeps its model,
and `device: cuda` without a GPU is a config error before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rebalance import api
from rebalance.core import worker_cache
from rebalance.core.config import load_pipeline
from rebalance.core.executors import DaskExecutor
from rebalance.domain.artifacts import LabeledDataset
from rebalance.errors import ConfigError
from tests.helpers import REPO

DEMO = REPO / "data" / "fashion_mnist_lt"


def test_a_worker_keeps_what_it_built_the_least_recently_used_leaving_first() -> None:
    worker_cache.forget()
    before = worker_cache.builds()
    first = worker_cache.kept(("test", 1), lambda: object())
    assert worker_cache.kept(("test", 1), lambda: object()) is first
    assert worker_cache.builds() - before == 1
    for number in range(2, 2 + worker_cache.MAX_KEPT):
        worker_cache.kept(("test", number), lambda: object())
    assert worker_cache.kept(("test", 1), lambda: object()) is not first  # evicted, built again
    assert worker_cache.builds() - before == 2 + worker_cache.MAX_KEPT
    worker_cache.forget()


def test_an_encoder_loads_once_per_process_and_fine_tuning_gets_its_own(tmp_path: Path) -> None:
    from rebalance.models.encoders import EncoderSpec, load_encoder
    from rebalance.models.tiny import save_tiny_open_clip

    config, checkpoint = save_tiny_open_clip(tmp_path / "clip")
    spec = EncoderSpec("open_clip", str(config), str(checkpoint))
    assert load_encoder(spec, device="cpu") is load_encoder(spec, device="cpu")
    assert load_encoder(spec, device="cpu", keep=False) is not load_encoder(spec, device="cpu")


def test_device_cuda_without_a_gpu_stops_before_any_step_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this machine has no GPU, whatever it has
    tiny = REPO / "pipelines" / "tiny.yaml"
    with pytest.raises(ConfigError) as raised:
        api.run(tiny, [f"cache_dir={tmp_path / 'c'}", f"output_dir={tmp_path / 'o'}", "device=cuda"])
    assert raised.value.exit_code == 2
    message = str(raised.value)
    assert "steps.baseline.device: 'cuda', but this machine has no visible GPU" in message
    # Nothing ran: the cache holds at most the memo of input file hashes that planning wrote.
    assert {path.name for path in (tmp_path / "c").glob("*")} <= {".hashes.sqlite"}


def _embedding_pipeline(tmp_path: Path, executor: dict) -> Path:
    from rebalance.models.tiny import save_tiny_open_clip

    config, checkpoint = save_tiny_open_clip(tmp_path / "clip")
    pipeline = {
        "name": "embed",
        "executor": executor,
        "steps": {
            "train": {"step": "ingest_image_folder", "root": str(DEMO / "train"), "max_images_per_class": 4},
            "embedded": {
                "step": "embed_images",
                "inputs": {"dataset": "train"},
                "encoder": "open_clip",
                "model": str(config),
                "pretrained": str(checkpoint),
                "batch_size": 4,
            },
        },
    }
    path = tmp_path / "embed.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    return path


@pytest.mark.slow
@pytest.mark.cluster
def test_gpu_step_shards_run_only_on_the_gpu_worker_which_loads_its_model_once(tmp_path: Path) -> None:
    # One CPU worker and one that declares GPU=1 (on this CPU machine it runs the model on the CPU).
    cluster = {"kind": "dask", "n_workers": 1, "gpu_workers": 1, "shard_rows": 8, "retries": 0}
    pipeline = _embedding_pipeline(tmp_path, cluster)
    result = api.run(pipeline, [f"cache_dir={tmp_path / 'c'}", f"output_dir={tmp_path / 'o'}"])
    embedded = next(step for step in result.manifest["steps"] if step["id"] == "embedded")
    assert embedded["shards"]["total"] == 5 and embedded["shards"]["resources"] == {"GPU": 1}
    assert embedded["shards"]["workers"] == {"gpu-0": {"shards": 5, "model_loads": 1}}
    # The CPU-only step beside it may run anywhere; the GPU step's output is the local executor's.
    local = api.run(
        pipeline,
        [f"cache_dir={tmp_path / 'lc'}", f"output_dir={tmp_path / 'lo'}", "executor.kind=local"],
    )
    local_embedded = next(step for step in local.manifest["steps"] if step["id"] == "embedded")
    assert local_embedded["shards"]["workers"] == {"local": {"shards": 5, "model_loads": 1}}
    cached = {}
    for name in ("c", "lc"):
        (entry,) = (tmp_path / name / "embed_images").iterdir()
        cached[name] = {
            p.name: p.read_bytes() for p in sorted(entry.iterdir()) if p.suffix in (".npy", ".parquet")
        }
    assert cached["c"] and cached["c"] == cached["lc"]
    vectors = np.load(next((tmp_path / "c" / "embed_images").iterdir()) / "vectors.npy")
    assert vectors.shape[0] == 40 and np.isfinite(vectors).all()
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["status"] == "complete"


@pytest.mark.slow
@pytest.mark.cluster
def test_with_a_scheduler_the_gpu_check_asks_the_workers() -> None:
    executor = DaskExecutor(scheduler=None, n_workers=1, retries=0, gpu_workers=1)
    cluster = executor._local_cluster()
    try:
        remote = DaskExecutor(scheduler=cluster.scheduler_address, n_workers=None, retries=0)
        assert remote.gpu_slots() == 1 and executor.gpu_slots() == 1
        remote.close()
        assert DaskExecutor(scheduler=None, n_workers=1, retries=0, gpu_workers=0).gpu_slots() == 0
    finally:
        cluster.close()


def test_a_gpu_step_must_say_which_device_it_uses() -> None:
    from rebalance.core.registry import _build_spec

    def no_device(dataset: LabeledDataset) -> LabeledDataset:
        return dataset

    with pytest.raises(TypeError, match="a gpu step needs a `device` parameter"):
        _build_spec("no_device", no_device, 1, False, "transforms", None, gpu=True)
    spec = load_pipeline(REPO / "pipelines" / "tiny.yaml").steps["baseline"].spec
    assert not spec.gpu


def test_images_decode_in_dataloader_workers_with_the_same_vectors(tmp_path: Path) -> None:
    from rebalance.models.tiny import save_tiny_open_clip
    from rebalance.steps.embed import embed_images
    from rebalance.steps.ingest import ingest_image_folder

    config, checkpoint = save_tiny_open_clip(tmp_path / "clip")
    dataset = ingest_image_folder(root=DEMO / "train", max_images_per_class=3)
    options = {"encoder": "open_clip", "model": str(config), "pretrained": str(checkpoint), "device": "cpu"}
    inline = embed_images(dataset, **options, batch_size=8, loader_workers=0)
    forked = embed_images(dataset, **options, batch_size=8, loader_workers=2)
    assert np.array_equal(inline.vectors, forked.vectors) and inline.vectors.shape[0] == 30


def test_a_cuda_out_of_memory_error_halves_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    import torch

    from rebalance.models.encoders import EncoderSpec, OpenClipEncoder

    encoder = OpenClipEncoder(EncoderSpec("open_clip", "none"), device="cpu", batch_size=8)
    sizes = []

    def encode(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(len(batch))
        if len(batch) > 2:  # this "GPU" holds two images at a time
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return batch * 2

    batch = torch.arange(8.0).reshape(8, 1)
    with caplog.at_level("WARNING"):
        assert torch.equal(encoder._halving_on_oom(encode, batch), batch * 2)
    assert (
        sizes == [8, 4, 2, 2, 4, 2, 2] and "halving" not in caplog.text.lower() or "as 4 + 4" in caplog.text
    )


def test_a_kept_encoder_refuses_to_hand_out_its_tower_for_training(tmp_path: Path) -> None:
    from rebalance.errors import RebalanceError
    from rebalance.models.encoders import EncoderSpec, load_encoder
    from rebalance.models.tiny import save_tiny_open_clip

    config, checkpoint = save_tiny_open_clip(tmp_path / "clip")
    spec = EncoderSpec("open_clip", str(config), str(checkpoint))
    with pytest.raises(RebalanceError, match="keep=False"):
        load_encoder(spec, device="cpu").image_tower()
    assert load_encoder(spec, device="cpu", keep=False).image_tower().module is not None


def test_the_index_goes_to_the_gpus_once_and_on_disk_lists_never(monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    from rebalance.methods import index as vector_index

    copies = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: copies.append(index) or index)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 8)).astype(np.float32)
    flat = vector_index.build_index(vectors, "Flat")
    for _ in range(3):  # three widening rounds of one step
        vector_index.search(flat, vectors[:4], 5, backend="faiss")
    assert copies == [flat]
    copies.clear()
    ivf = vector_index.build_index(vectors, "IVF4,Flat")
    monkeypatch.setattr(vector_index, "_lists_on_disk", lambda ivf: True)
    monkeypatch.setattr(vector_index, "_searchable_list_by_list", lambda ivf: False)
    scores, rows = vector_index.search(ivf, vectors[:4], 5, backend="faiss", nprobe=4)
    assert copies == [] and rows.shape == (4, 5)  # searched on the CPU, its lists never copied


@pytest.mark.cluster
def test_starting_a_cluster_leaves_this_processs_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    executor = DaskExecutor(scheduler=None, n_workers=1, retries=0, gpu_workers=0)
    try:
        executor._ensure_client()
        # Torch in this process must not start single-threaded because a cluster started first.
        assert "OMP_NUM_THREADS" not in os.environ
        assert executor._client.run(lambda: os.environ.get("OMP_NUM_THREADS")) == {
            address: "1" for address in executor._client.scheduler_info()["workers"]
        }
    finally:
        executor.close()
