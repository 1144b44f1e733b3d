from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rebalance.domain.text import readable, tokens
from rebalance.errors import DataError
from rebalance.io.captions import iter_captions
from rebalance.steps.frequency import concept_frequency, mine_synonyms
from rebalance.steps.ingest import ingest_coco, ingest_image_folder
from tests.helpers import REPO
from tests.steps.lvis_fixture import build_lvis


def lvis(tmp_path: Path):
    annotations, root = build_lvis(tmp_path)
    return ingest_coco(annotations=annotations, image_root=root)


def test_readable_names() -> None:
    assert readable("bow_(weapon)") == "bow" and readable("ankle_boot") == "ankle boot"


def test_synonyms_from_names_lvis_and_a_user_file(tmp_path: Path) -> None:
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"banana": ["plantain", "Bananas"]}))
    table = mine_synonyms(lvis(tmp_path), user_synonyms=extra).table.to_pylist()
    assert table[0] == {
        "category_id": 1,
        "concept": "aerosol_can",
        "synonyms": ["aerosol can", "spray can"],
        "definition": "a dispenser that holds a substance under pressure",
    }
    assert table[2]["synonyms"] == ["banana", "plantain"]  # "Bananas" normalises to "banana": a duplicate
    extra.write_text(json.dumps({"bananna": ["x"]}))
    with pytest.raises(DataError, match="unknown class 'bananna'.*did you mean 'banana'"):
        mine_synonyms(lvis(tmp_path / "b"), user_synonyms=extra)
    extra.write_text("{bad json")
    with pytest.raises(DataError, match="malformed JSON"):
        mine_synonyms(lvis(tmp_path / "c"), user_synonyms=extra)


def test_frequency_tail_and_buckets_by_hand(tmp_path: Path) -> None:
    synonyms = mine_synonyms(lvis(tmp_path))
    corpus = tmp_path / "captions.txt"
    corpus.write_text(
        "\n".join(["a banana"] * 5 + ["two spray cans and a banana", "an aerosol can", "nothing here"])
    )
    result = concept_frequency(synonyms, captions=corpus, tail_quantile=0.3, head_quantile=0.3)
    rows = {r["concept"]: r for r in result.table.to_pylist()}
    assert (rows["banana"]["count"], rows["aerosol_can"]["count"], rows["alcohol"]["count"]) == (6, 2, 0)
    assert rows["banana"]["frequency"] == 6 / 8
    assert [rows[c]["bucket"] for c in ("alcohol", "aerosol_can", "banana")] == ["rare", "common", "frequent"]
    assert json.loads(rows["aerosol_can"]["synonym_counts"]) == {"aerosol can": 1, "spray can": 1}
    assert result.summary["tail"] == ["alcohol"] and result.summary["classes_never_mentioned"] == ["alcohol"]
    assert result.plot.startswith(b"\x89PNG")


def test_caption_formats_give_the_same_counts(tmp_path: Path) -> None:
    synonyms = mine_synonyms(lvis(tmp_path))
    captions = ["a banana", "spray can", "bananas and an aerosol can", "x"]
    (tmp_path / "c.txt").write_text("\n".join(captions))
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": c}) for c in captions))
    pq.write_table(pa.table({"text": captions}), tmp_path / "c.parquet")
    counts = [
        concept_frequency(synonyms, captions=tmp_path / "c.txt").table["count"].to_pylist(),
        concept_frequency(synonyms, captions=tmp_path / "c.jsonl", column="text").table["count"].to_pylist(),
        concept_frequency(synonyms, captions=tmp_path / "c.parquet", column="text")
        .table["count"]
        .to_pylist(),
    ]
    assert counts[0] == counts[1] == counts[2] == [2, 0, 2]
    assert sum(len(batch) for batch in iter_captions(tmp_path / "c.parquet", "text", batch_rows=3)) == 4


def test_bad_corpora_are_clear_errors(tmp_path: Path) -> None:
    synonyms = mine_synonyms(lvis(tmp_path))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        concept_frequency(synonyms, captions=tmp_path / "empty.txt")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="broken.parquet: cannot read captions"):
        concept_frequency(synonyms, captions=tmp_path / "broken.parquet")
    pq.write_table(pa.table({"caption": [1, 2]}), tmp_path / "numbers.parquet")
    with pytest.raises(DataError, match="holds int64, not text"):
        concept_frequency(synonyms, captions=tmp_path / "numbers.parquet")
    with pytest.raises(DataError, match=r"no column 'caption '; columns are \['caption'\]"):
        concept_frequency(synonyms, captions=tmp_path / "numbers.parquet", column="caption ")


WORDNET = REPO / "data" / "wordnet"


def test_wordnet_synonyms_by_lvis_synset_and_by_name(tmp_path: Path) -> None:
    table = mine_synonyms(lvis(tmp_path), wordnet=WORDNET).table.to_pylist()
    # aerosol.n.02 (LVIS's synset), alcohol.n.01, banana.n.02: WordNet 3.0's lemmas, offline.
    assert table[0]["synonyms"] == [
        "aerosol can",
        "spray can",
        "aerosol",
        "aerosol container",
        "aerosol bomb",
    ]
    assert "alcoholic beverage" in table[1]["synonyms"] and "intoxicant" in table[1]["synonyms"]
    names = {"sneaker": [], "pullover": [], "ankle_boot": []}
    for name in names:
        (tmp_path / "folder" / name).mkdir(parents=True)
        (tmp_path / "folder" / name / "x.png").write_bytes(b"")
    rows = mine_synonyms(ingest_image_folder(root=tmp_path / "folder"), wordnet=WORDNET).table.to_pylist()
    by_name = {row["concept"]: row for row in rows}
    assert by_name["sneaker"]["synonyms"] == ["sneaker", "gym shoe", "tennis shoe"]
    assert by_name["pullover"]["synonyms"] == ["pullover", "slipover"]
    assert by_name["ankle_boot"]["synonyms"] == ["ankle boot"]  # not in WordNet: the name only
    assert by_name["sneaker"]["definition"].startswith("a canvas shoe")


def test_demo_top_synonyms_are_written_in_the_corpus_as_they_are_named() -> None:
    demo = REPO / "data" / "fashion_mnist_lt"
    synonyms = mine_synonyms(
        ingest_image_folder(root=demo / "train"), wordnet=WORDNET, user_synonyms=demo / "synonyms.json"
    )
    assert synonyms.table.to_pylist()[-1]["synonyms"] == [
        "trouser",
        "pant",
        "slacks",
    ]  # "pants" is a form of "pant"
    corpus = REPO / "data" / "captions" / "cupl_imagenet.parquet"
    table = concept_frequency(synonyms, captions=corpus).table.to_pylist()
    top = {row["concept"]: row["top_synonym"] for row in table}
    assert top["trouser"] == "pants"  # not "pant" nor "trouser": the captions say "pants" and "trousers"
    words = {
        word
        for batch in iter_captions(corpus, "caption", 100_000)
        for caption in batch.to_pylist()
        for word in tokens(caption)
    }
    assert all(set(name.split(" ")) <= words for name in top.values())


def test_missing_wordnet_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install wordnet-base"):
        mine_synonyms(lvis(tmp_path), wordnet=tmp_path)


def test_llm_filter_with_a_tiny_causal_lm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rebalance.models import judge as judge_module
    from rebalance.models.tiny import save_tiny_causal_lm
    from rebalance.steps.frequency import llm_filter

    synonyms = mine_synonyms(lvis(tmp_path))
    corpus = tmp_path / "captions.txt"
    corpus.write_text(
        "\n".join([f"banana number {i}" for i in range(30)] + ["a spray can", "an aerosol can here"])
    )
    counted = concept_frequency(synonyms, captions=corpus)
    model = save_tiny_causal_lm(tmp_path / "tiny-lm")
    filtered = llm_filter(counted, synonyms, captions=corpus, model=str(model), max_checked=8, device="cpu")
    rows = {r["concept"]: r for r in filtered.table.to_pylist()}
    assert [rows[c]["checked"] for c in ("aerosol_can", "alcohol", "banana")] == [2, 0, 8]
    for row in rows.values():
        assert 0.0 <= row["yes_ratio"] <= 1.0 and row["estimated_count"] == round(
            row["count"] * row["yes_ratio"]
        )
    assert filtered.summary["llm"]["model"] == str(model)
    again = llm_filter(counted, synonyms, captions=corpus, model=str(model), max_checked=8, device="cpu")
    assert again.table.equals(filtered.table)

    class Sceptic:  # answers No to everything about bananas
        batch_size = 2

        def yes_probability(self, prompts: list[str]):
            import numpy as np

            return np.array([0.0 if "banana" in p else 1.0 for p in prompts])

    monkeypatch.setattr(judge_module, "load_judge", lambda model, device: Sceptic())
    sceptical = {
        r["concept"]: r
        for r in llm_filter(
            counted, synonyms, captions=corpus, model="any", tail_quantile=0.5
        ).table.to_pylist()
    }
    assert sceptical["banana"]["estimated_count"] == 0 and sceptical["aerosol_can"]["estimated_count"] == 2
    assert sceptical["banana"]["tail"]  # the filter moved banana into the tail

    class Believer(Sceptic):
        def yes_probability(self, prompts: list[str]):
            import numpy as np

            return np.ones(len(prompts))

    monkeypatch.setattr(judge_module, "load_judge", lambda model, device: Believer())
    early = llm_filter(counted, synonyms, captions=corpus, model="any", enough_positives=3)
    rows = {r["concept"]: r for r in early.table.to_pylist()}
    assert rows["banana"]["checked"] == 4 and rows["banana"]["estimated_count"] == 30  # 2 batches of 2


def test_a_missing_language_model_is_a_clear_error(tmp_path: Path) -> None:
    from rebalance.errors import RebalanceError
    from rebalance.models.judge import YesNoJudge

    with pytest.raises(RebalanceError, match="cannot load the language model"):
        YesNoJudge(str(tmp_path / "no-such-model"))


@pytest.mark.slow
@pytest.mark.cluster
def test_counting_sharded_over_a_dask_cluster_equals_counting_in_process(tmp_path: Path) -> None:
    """A corpus of parquet row groups, JSON lines and text, counted in shards on a real LocalCluster."""
    from rebalance import api
    from rebalance.domain.artifacts import ConceptFrequency

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    source = pq.read_table(REPO / "data" / "captions" / "cupl_imagenet.parquet").slice(0, 30_000)
    pq.write_table(source.slice(0, 20_000), corpus / "a.parquet", row_group_size=2_500)  # 8 row groups
    (corpus / "b.jsonl").write_text(
        "".join(json.dumps({"caption": c}) + "\n" for c in source["caption"].to_pylist()[20_000:25_000])
    )
    (corpus / "c.txt").write_text("\n".join(source["caption"].to_pylist()[25_000:]))
    synonyms = tmp_path / "synonyms.json"
    synonyms.write_text(
        json.dumps({"tench": ["tench"], "goldfish": ["goldfish", "carassius auratus"], "shark": ["shark"]})
    )
    classes = tmp_path / "classes"
    for name in ("goldfish", "shark", "tench"):
        (classes / name).mkdir(parents=True)
        (classes / name / "x.png").write_bytes(
            next((REPO / "data/fashion_mnist_lt/train/bag").glob("*.png")).read_bytes()
        )
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        f"""executor: {{kind: dask, n_workers: 2, shard_rows: 4000}}
cache_dir: {tmp_path / "cache"}
output_dir: {tmp_path / "out"}
steps:
  classes: {{step: ingest_image_folder, root: {classes}}}
  synonyms: {{step: mine_synonyms, inputs: {{dataset: classes}}, wordnet: null, user_synonyms: {synonyms}}}
  corpus: {{step: caption_corpus, captions: {corpus}}}
  counts: {{step: count_captions, inputs: {{corpus: corpus, synonyms: synonyms}}}}
  sharded: {{step: concept_frequency, inputs: {{synonyms: synonyms, counts: counts}}}}
  whole: {{step: concept_frequency, inputs: {{synonyms: synonyms}}, captions: {corpus}}}
"""
    )
    run = api.run(pipeline)
    counts_step = next(s for s in run.manifest["steps"] if s["id"] == "counts")
    assert counts_step["shards"]["total"] == 8 and run.manifest["executor"] == "dask (LocalCluster)"
    sharded = ConceptFrequency.read(tmp_path / "out" / "sharded")
    whole = ConceptFrequency.read(tmp_path / "out" / "whole")
    assert sharded.table.equals(whole.table) and sharded.summary == whole.summary
    assert sharded.summary["captions"] == 30_000 and sharded.table["count"].to_pylist()[0] > 0
