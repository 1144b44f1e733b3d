"""Retrieval by caption (REAL): candidates by synonym, T2T ranking, T2I filter, N a class, the
download list and the join back by key; on a pool of real sentences with reference labels."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rebalance import api
from rebalance.domain.artifacts import LabeledDataset
from rebalance.domain.artifacts.captions import (
    CaptionCandidates,
    CaptionRetrieval,
    bottom_k,
    kth_smallest_keys,
)
from rebalance.methods.caption_retrieval import choose, matched_form, sample_keys
from tests.steps.caption_pool_fixture import (
    CLASSES,
    pool_sentences,
    write_laion_layout,
    write_reference_labels,
    write_train_folder,
    write_webdataset,
)


def webdataset_pipeline(tmp_path: Path) -> Path:
    sentences = pool_sentences()
    write_webdataset(tmp_path / "pool", sentences)
    labels = write_reference_labels(tmp_path / "labels.csv", sentences)
    train = write_train_folder(tmp_path / "train")
    pipeline = tmp_path / "captions.yaml"
    pipeline.write_text(
        "executor: {kind: local}\n"
        "steps:\n"
        f"  train: {{step: ingest_image_folder, root: {train}}}\n"
        f"  pool: {{step: ingest_webdataset, root: {tmp_path / 'pool'}, reference_labels: {labels}}}\n"
        "  synonyms: {step: mine_synonyms, inputs: {dataset: train}}\n"
        "  pool_captions: {step: caption_pool, inputs: {pool: pool}}\n"
        "  candidates: {step: caption_candidates, inputs: {captions: pool_captions, dataset: train, synonyms: synonyms},"
        " per_class: 15, max_candidates: 300}\n"
        "  chosen: {step: rank_captions, inputs: {candidates: candidates, captions: pool_captions, dataset: train,"
        " synonyms: synonyms}, device: cpu}\n"
        "  retrieved: {step: add_caption_retrievals, inputs: {dataset: train, retrieval: chosen, pool: pool}}\n"
        "  export: {step: export_hf, inputs: {dataset: retrieved, original: train}, embed_images: false}\n"
        "  report: {step: report, inputs: {original: train, final: retrieved}, gallery_cap: 4}\n"
    )
    return pipeline


def precision(run_dir: Path) -> tuple[float, dict[str, int]]:
    exported = datasets.load_from_disk(str(run_dir / "export"))["train"]
    names = exported.features["label"].names
    rows = [row for row in exported if row["source"] == "retrieved"]
    hits = [row["reference_label"] == names[row["label"]] for row in rows]
    per_class: dict[str, int] = {}
    for row in rows:
        per_class[names[row["label"]]] = per_class.get(names[row["label"]], 0) + 1
    return sum(hits) / len(hits), per_class


@pytest.mark.slow
def test_real_captions_are_retrieved_ranked_and_exported_with_their_scores(tmp_path: Path) -> None:
    pipeline = webdataset_pipeline(tmp_path)
    ranked = api.run(pipeline, [f"output_dir={tmp_path / 'ranked'}", f"cache_dir={tmp_path / 'cache'}"])
    unranked = api.run(
        pipeline,
        [f"output_dir={tmp_path / 'unranked'}", f"cache_dir={tmp_path / 'cache'}", "steps.chosen.rank=false"],
    )
    with_t2t, filled = precision(ranked.output_dir)
    without, _ = precision(unranked.output_dir)
    print(f"caption retrieval precision: T2T-ranked {with_t2t:.3f}, a random sample {without:.3f}")
    # Quotas: the median of the class counts (17) minus each class's count, for the three tail classes.
    assert filled == {"tiger": 15, "bee": 14, "mushroom": 13}
    # Sentences naming "tiger" describe tiger sharks, tiger cats and tiger beetles as often as tigers:
    # a random sample of the matches is mostly wrong, and ranking by T2T must fix most of it.
    assert without < 0.5 and with_t2t >= without + 0.25, (with_t2t, without)
    exported = datasets.load_from_disk(str(ranked.output_dir / "export"))["train"]
    retrieved = [row for row in exported if row["source"] == "retrieved"]
    assert all(
        row["matched_form"] in ("tiger", "tigers", "bee", "bees", "mushroom", "mushrooms")
        for row in retrieved
    )
    assert all(
        row["t2t"] is not None and row["t2i"] is None and row["caption_rank"] >= 1 for row in retrieved
    )
    assert all(row["retrieval_query"] == f"caption: {row['matched_form']}" for row in retrieved)
    card = (ranked.output_dir / "export" / "README.md").read_text()
    funnel = card.split("### Caption retrieval per class")[1]
    chosen = (
        CaptionRetrieval.read(ranked.output_dir / "chosen")
        if (ranked.output_dir / "chosen").exists()
        else None
    )
    assert chosen is None  # not a sink: the card carries the funnel
    tiger = next(line for line in funnel.splitlines() if line.startswith("| tiger "))
    cells = [cell.strip() for cell in tiger.strip("|").split("|")]
    # matched (every caption naming a tiger), ranked (all of them: fewer than max_candidates),
    # passed T2I (no image vectors), kept, missing downloads, reference precision.
    assert (
        cells[1] == cells[2]
        and int(cells[1]) >= 150
        and cells[3] == "n/a"
        and cells[4] == "15"
        and cells[5] == "0"
    )
    # The HTML report has the same funnel, and its gallery the retrieved captions' images.
    page = (ranked.output_dir / "report" / "report.html").read_text()
    assert "<h3>Caption retrieval per class</h3>" in page
    figures = json.loads((ranked.output_dir / "report" / "report.json").read_text())
    by_class = {row["class"]: row for row in figures["caption_funnel"]}
    assert [by_class["tiger"][name] for name in ("captions matched", "ranked", "kept")] == cells[1:3] + ["15"]
    assert (
        "caption: tiger" in page
        and len(list((ranked.output_dir / "report" / "gallery" / "img").glob("*"))) >= 12
    )
    # Without ranking a caption row has no score: the report says so instead of failing.
    unranked_page = (unranked.output_dir / "report" / "report.html").read_text()
    assert "no score (not ranked)" in unranked_page and "mean score" not in unranked_page


def candidates_of(classes, keys, files, rows, named) -> pa.Table:
    return pa.table(
        {
            "class_index": pa.array(classes, pa.int32()),
            "sample_key": pa.array(keys, pa.uint64()),
            "file": files,
            "row": pa.array(rows, pa.int64()),
            "classes_named": pa.array(named, pa.int32()),
        }
    )


@pytest.mark.parametrize("num_classes", [5, 70_000])
def test_kth_smallest_keys_by_hand_and_against_sorting_each_class(num_classes: int) -> None:
    classes = np.array([0, 1, 0, 0, 2, 0, 1]) * (num_classes // 5)
    keys = np.array([9, 4, 3, 7, 1, 5, 8], np.uint64)
    limit = kth_smallest_keys(classes, keys, 2, num_classes)
    # class 0 holds 9, 3, 7, 5: its 2nd smallest is 5; class 1 holds 4, 8: 8; class 2 one key.
    top = np.iinfo(np.uint64).max
    assert limit[[0, num_classes // 5, 2 * (num_classes // 5)]].tolist() == [5, 8, top]
    rng = np.random.default_rng(num_classes)
    classes = rng.integers(0, num_classes, 20_000)
    keys = rng.integers(0, 2**63, 20_000).astype(np.uint64)
    expected = np.full(num_classes, top, np.uint64)
    for label in np.unique(classes):
        held = np.sort(keys[classes == label])
        if len(held) >= 3:
            expected[label] = held[2]
    assert np.array_equal(kth_smallest_keys(classes, keys, 3, num_classes), expected)


def test_bottom_k_of_shards_merges_to_the_bottom_k_of_the_whole() -> None:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, 1000)
    rows = np.arange(1000)
    keys = sample_keys(7, "metadata_0.parquet", rows)
    whole = candidates_of(classes, keys, ["metadata_0.parquet"] * 1000, rows, np.ones(1000))
    merged = CaptionCandidates.concat(
        [
            CaptionCandidates(
                bottom_k(whole.slice(start, 250), 10),
                {"matched": [1] * 4, "max_candidates": 10, "captions": 250},
            )
            for start in range(0, 1000, 250)
        ]
    )
    assert merged.table.equals(bottom_k(whole, 10))
    assert merged.summary["matched"] == [4] * 4 and merged.summary["captions"] == 1000
    assert np.bincount(merged.table["class_index"].to_numpy()).tolist() == [10] * 4
    # The key of a row depends on the seed, the file's name and the row: never on the batching.
    assert (sample_keys(7, "/elsewhere/metadata_0.parquet", rows[:5]) == keys[:5]).all()
    assert not (sample_keys(8, "metadata_0.parquet", rows[:5]) == keys[:5]).any()


def test_choose_ranks_filters_and_gives_a_caption_naming_two_classes_to_one() -> None:
    # Six candidacies over five pool rows; row 2 is a candidate of both classes.
    classes = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.9, 0.5, 0.7, 0.8, 0.6, 0.2])
    item = np.array([0, 1, 2, 2, 3, 4])
    t2i = np.array([0.30, 0.30, 0.30, 0.30, 0.10, 0.30])
    named = np.array([1, 1, 2, 2, 1, 1])
    quotas = np.array([2, 2])
    best = choose(classes, scores, t2i, 0.25, named, item, quotas, "best")
    # Class 0 by score: row 0 (0.9), row 2 (0.7), row 1 (0.5); row 2 scores 0.8 for class 1, so it
    # goes there. Class 1: row 2 (0.8), row 3 fails T2I (0.10), row 4 (0.2).
    assert best.rows.tolist() == [0, 1, 3, 5]
    assert best.ranks.tolist() == [1, 3, 1, 3]
    assert (
        best.ranked.tolist() == [3, 3] and best.passed_t2i.tolist() == [3, 2] and best.kept.tolist() == [2, 2]
    )
    drop = choose(classes, scores, t2i, 0.25, named, item, quotas, "drop")
    # Row 2 names two classes: used by neither.
    assert drop.rows.tolist() == [0, 1, 5] and drop.kept.tolist() == [2, 1]
    unfiltered = choose(classes, scores, None, None, named, item, np.array([1, 5]), "best")
    assert unfiltered.rows.tolist() == [0, 3, 4, 5] and unfiltered.passed_t2i.tolist() == [3, 3]


def test_the_matched_form_is_the_first_listed_form_the_caption_names() -> None:
    assert matched_form("Two Tiger-Sharks near a reef", ["tiger", "tigers"]) == "tiger"
    assert matched_form("Three tigers.", ["tiger", "tigers"]) == "tigers"
    assert matched_form("A tigerish mood", ["tiger", "tigers"]) is None


def laion_pipeline(tmp_path: Path, sentences: pa.Table, vectors: np.ndarray, extra: str = "") -> Path:
    root = write_laion_layout(tmp_path / "laion", sentences, vectors)
    train = write_train_folder(tmp_path / "train")
    pipeline = tmp_path / "laion.yaml"
    pipeline.write_text(
        "executor: {kind: local}\n"
        f"cache_dir: {tmp_path / 'cache'}\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "steps:\n"
        f"  train: {{step: ingest_image_folder, root: {train}}}\n"
        "  synonyms: {step: mine_synonyms, inputs: {dataset: train}}\n"
        f"  pool_captions: {{step: caption_pool, root: {root}, vectors: true, encoder: 'sentence:all-MiniLM-L6-v2'}}\n"
        "  candidates: {step: caption_candidates, inputs: {captions: pool_captions, dataset: train, synonyms: synonyms},"
        " per_class: 15, max_candidates: 300}\n"
        "  chosen: {step: rank_captions, inputs: {candidates: candidates, captions: pool_captions, dataset: train,"
        " synonyms: synonyms}, rank: false, device: cpu}\n" + extra
    )
    return pipeline


def stand_in_image_vectors(sentences: pa.Table) -> np.ndarray:
    """What a CLIP image tower would give, for a test: each row's vector is the text embedding of a
    prompt naming its reference class, so T2I separates right from wrong mentions (no pretrained
    image-text model is installable offline). Rows no dataset class could retrieve share one."""
    from rebalance.models.encoders import text_queries

    labels = sentences["label"].to_pylist()
    words = set(CLASSES) | {f"{name}s" for name in CLASSES}
    named = {
        label
        for label, caption in zip(labels, sentences["caption"].to_pylist(), strict=True)
        if words & set(caption.lower().replace(",", " ").replace(".", " ").split())
    }
    names = sorted(named) + ["thing"]
    by_name = text_queries(names, ("a photo of a {}.",), "sentence:all-MiniLM-L6-v2", "cpu")
    return by_name[[names.index(label) if label in named else len(names) - 1 for label in labels]]


@pytest.mark.slow
def test_a_metadata_pool_is_filtered_by_t2i_downloaded_and_joined_back_by_key(tmp_path: Path) -> None:
    sentences = pool_sentences()
    vectors = stand_in_image_vectors(sentences)
    pipeline = laion_pipeline(tmp_path, sentences, vectors)
    # The stand-in's scale is MiniLM's text-to-text cosine, not CLIP's image-to-text: a right
    # mention scores 0.99 there and the closest wrong one ("bee eater" for bee) 0.90.
    pipeline.write_text(pipeline.read_text().replace("rank: false,", "rank: false, min_t2i: 0.95,"))
    api.run(pipeline)
    chosen = CaptionRetrieval.read(tmp_path / "out" / "chosen")
    reference = dict(zip(sentences["key"].to_pylist(), sentences["label"].to_pylist(), strict=True))
    labels = [reference[key] for key in chosen.chosen["key"].to_pylist()]
    # T2I against the stand-in vectors keeps only right mentions.
    assert labels == chosen.chosen["concept"].to_pylist()
    assert min(chosen.chosen["t2i"].to_pylist()) >= 0.95
    funnel = {row["concept"]: row for row in chosen.per_class.to_pylist()}
    assert funnel["tiger"]["passed_t2i"] < funnel["tiger"]["ranked"] and funnel["tiger"]["kept"] == 15
    assert funnel["snail"]["quota"] == 0 and funnel["snail"]["ranked"] == 0 and funnel["snail"]["matched"] > 0
    # img2dataset's input: url and caption, the columns to keep, the chosen rows only.
    download = pq.read_table(tmp_path / "out" / "chosen" / "img2dataset.parquet")
    assert download.column_names == ["url", "caption", "label", "retrieval_key", "t2t", "t2i"]
    assert download["url"].to_pylist() == [
        f"https://example.com/{k}.jpg" for k in chosen.chosen["key"].to_pylist()
    ]
    # What img2dataset would write: its own keys, our columns kept in each sample's JSON; two failed.
    fetched = download.slice(2).rename_columns(["url", "caption", "label", "retrieval_key", "t2t", "t2i"])
    fetched = fetched.append_column("key", pa.array([f"{i:09d}" for i in range(fetched.num_rows)]))
    write_webdataset(tmp_path / "downloads", fetched.select(["key", "caption", "label", "retrieval_key"]))
    pipeline.write_text(
        pipeline.read_text()
        + f"  downloads: {{step: ingest_webdataset, root: {tmp_path / 'downloads'}, metadata_columns: [retrieval_key]}}\n"
        "  retrieved: {step: add_caption_retrievals, inputs: {dataset: train, retrieval: chosen, pool: downloads},"
        " pool_key: retrieval_key}\n"
    )
    second = api.run(pipeline)
    ran = {s["id"]: s["cache"] == "hit" for s in second.manifest["steps"]}
    assert ran["chosen"] and ran["candidates"] and not ran["retrieved"]
    dataset = LabeledDataset.read(tmp_path / "out" / "retrieved")
    added = dataset.images.filter(pa.compute.equal(dataset.images["source"], "retrieved"))
    assert added.num_rows == download.num_rows - 2
    assert added["pool_key"].to_pylist() == download["retrieval_key"].to_pylist()[2:]
    missing = dict(zip(dataset.class_names(), dataset.categories["caption_missing"].to_pylist(), strict=True))
    assert sum(missing.values()) == 2


def test_the_cache_references_the_vectors_and_a_changed_vector_file_reruns_its_readers(
    tmp_path: Path,
) -> None:
    base = pool_sentences()
    # A pool of 20,000 rows (the sentences repeated): 15 MB of vectors the cache must not copy.
    repeats = 20_000 // base.num_rows + 1
    sentences = pa.concat_tables([base] * repeats).slice(0, 20_000)
    sentences = sentences.set_column(0, "key", pa.array([f"{i:06d}" for i in range(sentences.num_rows)]))
    vectors = np.random.default_rng(0).normal(size=(sentences.num_rows, 384)).astype(np.float32)
    pipeline = laion_pipeline(tmp_path, sentences, vectors)
    pipeline.write_text(pipeline.read_text().replace("rank: false,", "rank: false, min_t2i: -1,"))
    api.run(pipeline)
    vector_bytes = sum(path.stat().st_size for path in (tmp_path / "laion" / "img_emb").iterdir())
    cache_bytes = sum(path.stat().st_size for path in (tmp_path / "cache").rglob("*") if path.is_file())
    assert cache_bytes < 0.01 * vector_bytes, (cache_bytes, vector_bytes)
    again = api.run(pipeline)
    assert all(step["cache"] == "hit" for step in again.manifest["steps"])
    # New vectors in one file: every step that read the pool runs again, the others stay cached.
    changed = tmp_path / "laion" / "img_emb" / "img_emb_1.npy"
    np.save(changed, -np.load(changed))
    rerun = {s["id"]: s["cache"] == "hit" for s in api.run(pipeline).manifest["steps"]}
    assert rerun == {
        "train": True,
        "synonyms": True,
        "pool_captions": False,
        "candidates": False,
        "chosen": False,
    }
    t2i = CaptionRetrieval.read(tmp_path / "out" / "chosen").chosen["t2i"].to_pylist()
    assert t2i and all(value is not None for value in t2i)
    json.loads((tmp_path / "out" / "chosen" / "summary.json").read_text())


def test_consecutive_row_groups_of_a_file_are_read_as_one_batch_up_to_its_rows() -> None:
    from rebalance.io.caption_pool import read_units

    def piece(file: str, group: int, first: int, rows: int) -> dict:
        return {"file": file, "row_group": group, "first_row": first, "rows": rows, "vectors": None}

    pieces = [piece("a", 0, 0, 40), piece("a", 1, 40, 40), piece("a", 2, 80, 40), piece("b", 0, 0, 10)]
    pieces += [piece("b", 1, 10, 500), piece("b", 3, 600, 5)]  # b's row group 2 is in another shard
    units = read_units(pieces, 100)
    assert [[(p["file"], p["row_group"]) for p in unit] for unit in units] == [
        [("a", 0), ("a", 1)],
        [("a", 2)],
        [("b", 0)],
        [("b", 1)],  # over 100 rows alone
        [("b", 3)],
    ]


def test_streamed_sampling_equals_the_bottom_k_of_every_match_whatever_the_batches(tmp_path: Path) -> None:
    from rebalance.domain.artifacts import Synonyms
    from rebalance.steps.caption_retrieval import caption_candidates, caption_pool

    sentences = pool_sentences()
    root = write_laion_layout(tmp_path / "laion", sentences, np.zeros((sentences.num_rows, 4)))
    names = ["tiger", "bee", "mushroom", "snail", "balloon", "pelican"]
    dataset = LabeledDataset.classification(["a.png", "b.png"], [0, 5], names)
    synonyms = Synonyms(
        pa.table(
            {
                "category_id": range(6),
                "concept": names,
                "synonyms": [[n] for n in names],
                "definition": [None] * 6,
            }
        )
    )
    pool = caption_pool(root=root)
    everything = caption_candidates(pool, dataset, synonyms, target=10, per_class=10, max_candidates=10**9)
    # Every class but the two with an image wants some (target 10): class 0 and 5 want 9, the rest 10.
    assert everything.summary["quota"] == [9, 10, 10, 10, 10, 9]
    assert np.bincount(everything.table["class_index"].to_numpy()).tolist() == everything.summary["matched"]
    for batch_rows in (37, 1000, 10**6):
        sampled = caption_candidates(
            pool, dataset, synonyms, target=10, per_class=10, max_candidates=5, batch_rows=batch_rows
        )
        expected = bottom_k(everything.table, 5)
        assert sampled.table.select(["class_index", "sample_key", "row"]).equals(
            expected.select(["class_index", "sample_key", "row"])
        ), batch_rows
        assert sampled.summary["matched"] == everything.summary["matched"]


@pytest.mark.slow
def test_the_laion_pipelines_fill_the_tail_download_and_join_back(tmp_path: Path) -> None:
    from tests.helpers import REPO

    sentences = pool_sentences()
    root = write_laion_layout(tmp_path / "laion", sentences, stand_in_image_vectors(sentences))
    train = write_train_folder(tmp_path / "train")
    # The shipped files as a user runs them, with this machine's data and offline models.
    overrides = [
        "executor.kind=local",
        f"cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / 'out'}",
        f"steps.train.root={train}",
        f"steps.laion.root={root}",
        "steps.laion.encoder=sentence:all-MiniLM-L6-v2",
        f"steps.corpus.captions={root / 'metadata'}",
        "steps.candidates.per_class=15",
        "steps.candidates.max_candidates=300",
        "steps.chosen.encoder=sentence",
        "steps.chosen.model=all-MiniLM-L6-v2",
        "steps.chosen.pretrained=null",
        "steps.chosen.min_t2i=0.85",  # the stand-in scale; prompts name "bees" here (top synonym)
        "steps.chosen.device=cpu",
    ]
    api.run(REPO / "pipelines" / "laion_captions.yaml", overrides)
    download = pq.read_table(tmp_path / "out" / "chosen" / "img2dataset.parquet")
    assert download.num_rows == 15 + 14 + 13
    fetched = download.append_column("key", pa.array([f"{i:09d}" for i in range(download.num_rows)]))
    write_webdataset(tmp_path / "downloads", fetched.select(["key", "caption", "label", "retrieval_key"]))
    joined = api.run(
        REPO / "pipelines" / "laion_captions_join.yaml",
        [*overrides, f"steps.downloads.root={tmp_path / 'downloads'}"],
    )
    assert {s["id"]: s["cache"] for s in joined.manifest["steps"]}["chosen"] == "hit"
    exported = datasets.load_from_disk(str(tmp_path / "out" / "export"))["train"]
    assert sum(row["source"] == "retrieved" for row in exported) == download.num_rows
    card = (tmp_path / "out" / "export" / "README.md").read_text()
    assert "### Caption retrieval per class" in card and "| tiger | " in card


@pytest.mark.slow
def test_caption_retrieval_fills_only_what_embedding_retrieval_left_and_never_adds_an_image_twice(
    tmp_path: Path,
) -> None:
    pipeline = webdataset_pipeline(tmp_path)
    text = pipeline.read_text()
    text = text[: text.index("  export:")]  # `retrieved` is the sink, written to output_dir
    # Embedding retrieval first (pixels here: the pool's images are noise, so what it finds is
    # arbitrary but real), then retrieval by caption fills what is left of each quota.
    text = text.replace(
        "  synonyms:",
        "  embedded: {step: embed_pixels_pca, inputs: {dataset: train}, dim: 8}\n"
        "  pool_embedded: {step: embed_pixels_pca, inputs: {dataset: pool, fit: train}, dim: 8}\n"
        "  index: {step: build_index, inputs: {embeddings: pool_embedded}}\n"
        "  by_image: {step: retrieve, inputs: {dataset: train, pool: pool, index: index, embeddings: embedded},"
        " target: median, max_per_class: 5, min_precision: null}\n"
        "  synonyms:",
    )
    text = text.replace(
        "dataset: train, synonyms: synonyms}, per_class", "dataset: by_image, synonyms: synonyms}, per_class"
    )
    text = text.replace(
        "candidates: candidates, captions: pool_captions, dataset: train,",
        "candidates: candidates, captions: pool_captions, dataset: by_image,",
    )
    text = text.replace(
        "{dataset: train, retrieval: chosen, pool: pool}",
        "{dataset: by_image, retrieval: chosen, pool: pool}",
    )
    pipeline.write_text(text)
    api.run(pipeline, [f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"])
    dataset = LabeledDataset.read(tmp_path / "out" / "retrieved")
    images = dataset.images
    by_caption = pa.compute.is_valid(images["matched_form"])
    added = images.filter(pa.compute.equal(images["source"], "retrieved"))
    assert added.num_rows > by_caption.to_numpy(zero_copy_only=False).sum() > 0  # both kinds added
    # No pool image twice, and every class at most at the median (17) the quotas aim for.
    assert len(set(added["pool_file_name"].to_pylist())) == added.num_rows
    names = dataset.class_names()
    counts = np.bincount(dataset.annotations["category_id"].to_numpy(), minlength=len(names))
    assert dict(zip(names, counts.tolist(), strict=True)) == {
        name: max(count, 17) if name in ("tiger", "bee", "mushroom") else count
        for name, count in CLASSES.items()
    }


def test_candidates_sharded_by_the_runner_equal_one_pass(tmp_path: Path) -> None:
    sentences = pool_sentences()
    root = write_laion_layout(tmp_path / "laion", sentences, np.zeros((sentences.num_rows, 4)))
    train = write_train_folder(tmp_path / "train")
    pipeline = tmp_path / "sharded.yaml"
    pipeline.write_text(
        "executor: {kind: local}\n"
        "steps:\n"
        f"  train: {{step: ingest_image_folder, root: {train}}}\n"
        "  synonyms: {step: mine_synonyms, inputs: {dataset: train}}\n"
        f"  pool_captions: {{step: caption_pool, root: {root}}}\n"
        "  candidates: {step: caption_candidates, inputs: {captions: pool_captions, dataset: train, synonyms: synonyms},"
        " per_class: 15, max_candidates: 20}\n"
    )
    tables = {}
    for shard_rows in (10**6, 500):
        folder = tmp_path / str(shard_rows)
        overrides = [
            f"output_dir={folder}",
            f"cache_dir={folder / 'cache'}",
            f"executor.shard_rows={shard_rows}",
        ]
        run = api.run(pipeline, overrides)
        shards = {s["id"]: s["shards"]["total"] for s in run.manifest["steps"]}["candidates"]
        tables[shard_rows] = (shards, CaptionCandidates.read(run.output_dir / "candidates"))
    (one, whole), (many, sharded) = tables[10**6], tables[500]
    assert one == 1 and many == 6  # 2,726 captions in row groups of 200: six shards of pieces
    assert sharded.table.equals(whole.table) and sharded.summary == whole.summary


def test_bad_pools_are_named_with_what_to_set(tmp_path: Path) -> None:
    from rebalance.errors import DataError
    from rebalance.steps.caption_retrieval import caption_pool

    sentences = pool_sentences()
    root = write_laion_layout(tmp_path / "laion", sentences, np.zeros((sentences.num_rows, 4)))
    with pytest.raises(DataError, match=r"metadata_0.parquet: no column\(s\) \['text'\].*set caption_column"):
        caption_pool(root=root, caption_column="text")
    with pytest.raises(DataError, match=r"no column\(s\) \['uid'\]"):
        caption_pool(root=root, key_column="uid")
    assert caption_pool(root=root, url_column=None).num_rows == sentences.num_rows
    with pytest.raises(DataError, match="vectors: true needs `encoder`"):
        caption_pool(root=root, vectors=True)
    with pytest.raises(DataError, match="no img_emb_<i>.npy files"):
        caption_pool(root=root / "metadata", vectors=True, encoder="sentence:all-MiniLM-L6-v2")
    np.save(root / "img_emb" / "img_emb_1.npy", np.zeros((3, 4), np.float16))
    with pytest.raises(DataError, match="img_emb_1.npy has 3 rows but .*metadata_1.parquet has 1,363"):
        caption_pool(root=root, vectors=True, encoder="sentence:all-MiniLM-L6-v2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet metadata files"):
        caption_pool(root=tmp_path / "empty")


def test_a_pool_that_names_no_class_keeps_nothing_and_says_so(tmp_path: Path) -> None:
    from rebalance.domain.artifacts import Synonyms
    from rebalance.steps.caption_retrieval import caption_candidates, caption_pool, rank_captions

    sentences = pa.table({"key": ["a", "b"], "caption": ["a red car", "two boats"], "label": ["car", "boat"]})
    root = write_laion_layout(tmp_path / "laion", sentences, np.zeros((2, 4)), files=1)
    names = ["tiger", "bee"]
    dataset = LabeledDataset.classification(["a.png", "b.png", "c.png"], [0, 0, 1], names)
    synonyms = Synonyms(
        pa.table(
            {
                "category_id": [0, 1],
                "concept": names,
                "synonyms": [["tiger"], ["bee"]],
                "definition": [None] * 2,
            }
        )
    )
    pool = caption_pool(root=root)
    found = caption_candidates(pool, dataset, synonyms, target="max")
    chosen = rank_captions(found, pool, dataset, synonyms, device="cpu")
    assert found.num_rows == 0 and found.summary["matched"] == [0, 0] and found.summary["quota"] == [0, 1]
    assert chosen.chosen.num_rows == 0
    assert chosen.per_class.to_pylist()[1] | {"category_id": 1} == {
        "category_id": 1,
        "concept": "bee",
        "quota": 1,
        "matched": 0,
        "ranked": 0,
        "passed_t2i": None,
        "kept": 0,
    }
