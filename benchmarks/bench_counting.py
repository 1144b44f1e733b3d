"""Concept counting throughput: rebalance's counter beside pyahocorasick, polars' Aho-Corasick
(``str.extract_many``) and a naive regex loop.

Two corpora of 500,000 captions each, 1,000 classes:

- synthetic: 8-16 words per caption drawn from a Zipf vocabulary of 20,000 words that contains the
  synonyms (1,000 classes × 3, a third of them two-word phrases). Over half of all words are
  synonym words, so this is a hard case for any filter: almost every token must be looked up.
- real: human-written and generated English sentences that ship with the project (the 149,700 CuPL
  sentences of the demo, WordNet's 117k glosses and 48k usage examples), cycled to 500,000;
  the 1,000 ImageNet class names with up to two more WordNet lemmas each.

All methods count, per class, the captions that mention any written form of its synonyms (each
synonym and the plurals of its head noun, ``rebalance.methods.inflection``; whole words, after the
same normalisation); counts are checked to be identical. The naive loop (one regex per form) is
timed on the first 2,000 captions only and reported per caption. pyahocorasick and polars get the
synthetic text as it is (already normal) and the real text pre-normalised, outside their timing;
polars' timing includes turning its matches into per-class counts (in polars).

Usage: python benchmarks/bench_counting.py [--captions 500000] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import re
import time
from pathlib import Path

import numba
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rebalance.domain.text import normalize
from rebalance.io.wordnet import WordNet
from rebalance.methods.frequency import CompiledSynonyms, count_concepts
from rebalance.methods.inflection import surface_forms

DATA = Path(__file__).resolve().parent.parent / "data"


def synthetic_corpus(captions: int, classes: int, seed: int) -> tuple[list[str], dict[str, list[str]]]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    # No word ends in "s": a synonym's plural forms add vocabulary that the text never contains.
    vocabulary = sorted(
        {
            w
            for w in ("".join(rng.choice(letters, size=rng.integers(3, 9))) for _ in range(26_000))
            if not w.endswith("s")
        }
    )[:20_000]
    synonyms = {}
    for index in range(classes):
        words = rng.choice(vocabulary[:5000], size=4, replace=False)
        synonyms[f"class{index}"] = [str(words[0]), str(words[1]), f"{words[2]} {words[3]}"]
    popularity = 1.0 / np.arange(1, len(vocabulary) + 1) ** 1.05
    lengths = rng.integers(8, 17, size=captions)
    flat = rng.choice(len(vocabulary), size=int(lengths.sum()), p=popularity / popularity.sum())
    words = np.array(vocabulary)[flat]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    texts = [" ".join(words[bounds[i] : bounds[i + 1]]) for i in range(captions)]
    return texts, synonyms


def real_corpus(captions: int) -> tuple[list[str], dict[str, list[str]]]:
    cupl = pq.read_table(DATA / "captions" / "cupl_imagenet.parquet")
    glosses = pq.read_table(DATA / "wordnet" / "synsets.parquet", columns=["definition", "examples"])
    sentences = [
        *cupl["caption"].to_pylist(),
        *glosses["definition"].to_pylist(),
        *(example for examples in glosses["examples"].to_pylist() for example in examples),
    ]
    texts = list(itertools.islice(itertools.cycle(sentences), captions))
    wordnet = WordNet.load(DATA / "wordnet")
    synonyms = {}
    for name in dict.fromkeys(cupl["imagenet_class"].to_pylist()):
        lemmas = [lemma for synset in wordnet.synsets(name)[:1] for lemma in synset.lemmas]
        synonyms[name] = list(dict.fromkeys([name, *lemmas]))[:3]
    return texts, synonyms


def forms_of(synonyms: dict[str, list[str]]) -> dict[str, list[str]]:
    """Class -> the distinct written forms of its synonyms."""
    return {
        concept: list(dict.fromkeys(form for synonym in listed for form in surface_forms(synonym)))
        for concept, listed in synonyms.items()
    }


def naive(texts: list[str], synonyms: dict[str, list[str]]) -> dict[str, int]:
    patterns = {
        c: [re.compile(rf"(?<!\S){re.escape(form)}(?!\S)") for form in forms]
        for c, forms in forms_of(synonyms).items()
    }
    normalised = [normalize(t) for t in texts]
    return {c: sum(any(p.search(t) for p in ps) for t in normalised) for c, ps in patterns.items()}


def aho_corasick(texts: list[str], synonyms: dict[str, list[str]]) -> dict[str, int]:
    import ahocorasick

    automaton = ahocorasick.Automaton()
    for concept, forms in forms_of(synonyms).items():
        for form in forms:
            key = f" {form} "
            automaton.add_word(key, (*automaton.get(key, ()), concept))
    automaton.make_automaton()
    counts = dict.fromkeys(synonyms, 0)
    for text in texts:
        found = set()
        # Padded with spaces so that a match is a whole-word match.
        for _, concepts in automaton.iter(f" {text} "):
            found.update(concepts)
        for concept in found:
            counts[concept] += 1
    return counts


def polars_extract_many(texts: list[str], synonyms: dict[str, list[str]]) -> dict[str, int]:
    import polars as pl

    form_class = pl.DataFrame(
        [(f" {form} ", concept) for concept, forms in forms_of(synonyms).items() for form in forms],
        schema=["match", "concept"],
        orient="row",
    )
    matches = (
        pl.DataFrame({"text": texts})
        .with_row_index("caption")
        .select(
            "caption",
            # Padded with spaces, overlapping: every whole-word mention (the spaces are shared).
            pl.concat_str(pl.lit(" "), "text", pl.lit(" "))
            .str.extract_many(form_class["match"].unique().to_list(), overlapping=True)
            .alias("match"),
        )
        .explode("match")
        .join(form_class, on="match")
        .unique(["caption", "concept"])
        .group_by("concept")
        .len()
    )
    counts = dict.fromkeys(synonyms, 0)
    counts.update(dict(matches.iter_rows()))
    return counts


def measure(label: str, texts: list[str], synonyms: dict[str, list[str]], normal_text: bool) -> None:
    arrow = pa.array(texts, pa.large_string())
    count_concepts(arrow[:1000], synonyms)  # numba compiles once, outside the timing
    started = time.perf_counter()
    CompiledSynonyms.build(synonyms)
    compile_ms = 1000 * (time.perf_counter() - started)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        table = count_concepts(arrow, synonyms)
        timings.append(time.perf_counter() - started)
    ours = min(timings)
    ours_counts = dict(zip(table["concept"], table["count"], strict=True))

    library_texts = texts if normal_text else [normalize(t) for t in texts]
    started = time.perf_counter()
    aho_counts = aho_corasick(library_texts, synonyms)
    aho = time.perf_counter() - started
    started = time.perf_counter()
    polars_counts = polars_extract_many(library_texts, synonyms)
    polars = time.perf_counter() - started

    subset = texts[:2000]
    started = time.perf_counter()
    naive_counts = naive(subset, synonyms)
    slow = time.perf_counter() - started
    subset_table = count_concepts(subset, synonyms)
    identical_naive = naive_counts == dict(zip(subset_table["concept"], subset_table["count"], strict=True))

    synonym_count = sum(len(s) for s in synonyms.values())
    print(
        f"{label}: {len(texts):,} captions ({arrow.nbytes / 2**20:.0f} MiB), "
        f"{len(synonyms):,} classes, {synonym_count:,} synonyms, {numba.get_num_threads()} threads"
    )
    print(
        f"  rebalance counter:    {len(texts) / ours:>12,.0f} captions/s  (the synonyms' index is compiled "
        f"once per synonym set, {compile_ms:.0f} ms, and cached, as when a corpus is counted shard by shard)"
    )
    print(
        f"  pyahocorasick:        {len(texts) / aho:>12,.0f} captions/s  -> rebalance "
        f"{aho / ours:.1f}x faster; identical counts: {aho_counts == ours_counts}"
    )
    print(
        f"  polars extract_many:  {len(texts) / polars:>12,.0f} captions/s  -> rebalance "
        f"{polars / ours:.1f}x faster; identical counts: {polars_counts == ours_counts}"
    )
    print(
        f"  naive regex per form: {len(subset) / slow:>12,.0f} captions/s  -> rebalance "
        f"{(len(texts) / ours) / (len(subset) / slow):,.0f}x faster; identical counts on "
        f"{len(subset):,}: {identical_naive}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=500_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    measure("synthetic", *synthetic_corpus(args.captions, args.classes, seed=0), normal_text=True)
    measure("real", *real_corpus(args.captions), normal_text=False)


if __name__ == "__main__":
    main()
