"""Caption retrieval at scale: rebalance's candidate step beside SQLite FTS5 as REAL's public code
uses it, then parquet to N a class end to end, in one run.

The pool: N captions in LAION's metadata layout (``metadata/metadata_<i>.parquet`` with url,
caption, key; 1 M rows a file, 256 k a row group), the text that ships with the project (the
149,700 CuPL sentences, WordNet's glosses and usage examples) cycled, each row made distinct by a
number token, which no class names. Classes: the 998 ImageNet class names with up to two more
WordNet lemmas each (as ``bench_counting.py``); both matchers get the same written forms
(``rebalance.methods.inflection``: each synonym and the plurals of its head noun).

Each part runs in a fresh process and reports its own peak memory (VmHWM), with the pool's files
read into the page cache before it (this machine's kernel reclaims idle pages, so whichever part
ran first would otherwise read from disk):
  - rebalance: ``caption_pool`` over the folder, then ``caption_candidates`` with every class
    wanted, as REAL configures it (N = 500, a sample of at most 10,000 candidates a class); the
    median of ``--repeats`` fresh processes (3; FTS5's build runs once, for over a minute);
  - SQLite FTS5 as REAL's code does: one table over the captions (``tokenize = "unicode61
    remove_diacritics 2"``), built from the same parquet, then one MATCH query per class, an OR
    of the class's forms as phrases;
  - end to end: a long-tailed dataset over the same classes (Zipf counts), and ``caption_pool``
    -> ``caption_candidates`` -> ``rank_captions`` (T2T with the shipped MiniLM on this machine's
    CPU) for the classes below the median, ``--per-class`` kept a class from a sample of
    ``--max-candidates``.
The synonym forms are expanded once before the parts (``written_forms``' on-disk cache), as a
pipeline's earlier steps would have; the parent then compares the two candidate sets per class and
lists every class where they differ, with the captions that differ. A class with at most 10,000
matches must have the same set of rows in both; one with more must have the same number of
matches, and rebalance's sample must be a subset of FTS5's rows.

The last line reads: ``caption match: N captions, rebalance A s, sqlite FTS5 B s, ratio R,
identical classes K/C, peak RSS G GB; end to end E s``.

Usage: python benchmarks/bench_caption_retrieval.py [--captions 10000000] [--pool DIR] [--skip-fts5]
       [--per-class 10] [--max-candidates 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
FILE_ROWS = 1_000_000
ROW_GROUP = 256 * 1024

PEAK = """
def peak_rss_gb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 2**20
"""

OURS = (
    PEAK
    + r"""
import json, sys, time
from pathlib import Path
import numpy as np
folder, classes_file, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
synonyms = json.loads(Path(classes_file).read_text())
imported = time.perf_counter()
from rebalance.domain.artifacts import LabeledDataset, Synonyms
from rebalance.steps.caption_retrieval import caption_candidates, caption_pool
import pyarrow as pa
started = time.perf_counter()
imported = started - imported
names = list(synonyms)
# One image a class and a target far above it: every class is wanted, each keeps REAL's N = 500
# and samples at most the default 20 x 500 candidates.
dataset = LabeledDataset.classification([f"{i}.png" for i in range(len(names))], list(range(len(names))), names)
table = pa.table({"category_id": range(len(names)), "concept": names, "synonyms": list(synonyms.values()),
                  "definition": [None] * len(names)})
pool = caption_pool(root=folder)
found = caption_candidates(pool, dataset, Synonyms(table), target=10**9, per_class=500)
seconds = time.perf_counter() - started
files = found.table["file"].to_numpy(zero_copy_only=False)
number = np.array([int(Path(f).stem.rsplit("_", 1)[1]) for f in files], dtype=np.int64)
rows = number * FILE_ROWS + found.table["row"].to_numpy()
np.savez(out, classes=found.table["class_index"].to_numpy(), rows=rows, matched=found.summary["matched"])
print(json.dumps({"seconds": seconds, "import_seconds": imported, "peak_gb": peak_rss_gb(),
                  "captions": found.summary["captions"]}))
"""
)

FTS5 = (
    PEAK
    + r"""
import json, sqlite3, sys, time
from pathlib import Path
import numpy as np, pyarrow.parquet as pq
folder, classes_file, out, database = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
forms = json.loads(Path(classes_file).read_text())
started = time.perf_counter()
connection = sqlite3.connect(database)
connection.execute('CREATE VIRTUAL TABLE captions USING fts5(caption, tokenize = "unicode61 remove_diacritics 2")')
for path in sorted((folder / "metadata").glob("*.parquet"), key=lambda p: int(p.stem.rsplit("_", 1)[1])):
    first = int(path.stem.rsplit("_", 1)[1]) * FILE_ROWS
    for batch in pq.ParquetFile(path).iter_batches(batch_size=100_000, columns=["caption"]):
        texts = batch.column(0).to_pylist()
        connection.executemany("INSERT INTO captions(rowid, caption) VALUES (?, ?)",
                               zip(range(first, first + len(texts)), texts))
        first += len(texts)
connection.commit()
built = time.perf_counter() - started
classes, rows = [], []
for number, listed in enumerate(forms.values()):
    query = " OR ".join('"' + form.replace('"', '""') + '"' for form in listed)
    found = [rowid for (rowid,) in connection.execute("SELECT rowid FROM captions WHERE captions MATCH ?", (query,))]
    rows += found
    classes += [number] * len(found)
seconds = time.perf_counter() - started
np.savez(out, classes=np.array(classes, dtype=np.int64), rows=np.array(rows, dtype=np.int64))
print(json.dumps({"seconds": seconds, "build_seconds": built, "query_seconds": seconds - built, "peak_gb": peak_rss_gb()}))
"""
)

END_TO_END = (
    PEAK
    + r"""
import json, sys, time
from pathlib import Path
import numpy as np
folder, classes_file, per_class, max_candidates = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
synonyms = json.loads(Path(classes_file).read_text())
started = time.perf_counter()
from rebalance.domain.artifacts import LabeledDataset, Synonyms
from rebalance.steps.caption_retrieval import caption_candidates, caption_pool, rank_captions
import pyarrow as pa
names = list(synonyms)
# The head half has over 2N images a class, the tail half 1 to N: the median is 2N, so each class
# below it wants N.
order = np.arange(len(names))
counts = np.where(order < len(names) // 2, 2 * per_class + len(names) // 2 - order, 1 + order % per_class)
labels = np.repeat(np.arange(len(names)), counts)
dataset = LabeledDataset.classification([f"{i}.png" for i in range(len(labels))], labels.tolist(), names)
table = pa.table({"category_id": range(len(names)), "concept": names, "synonyms": list(synonyms.values()),
                  "definition": [None] * len(names)})
pool = caption_pool(root=folder)
found = caption_candidates(pool, dataset, Synonyms(table), target="median", per_class=per_class,
                           max_candidates=max_candidates)
matched = time.perf_counter() - started
chosen = rank_captions(found, pool, dataset, Synonyms(table), device="cpu", min_t2i=None)
seconds = time.perf_counter() - started
funnel = chosen.per_class.to_pandas()
wanted = funnel[funnel["quota"] > 0]
print(json.dumps({"seconds": seconds, "candidate_seconds": matched, "peak_gb": peak_rss_gb(),
                  "classes_wanted": int(len(wanted)), "ranked": int(wanted["ranked"].sum()),
                  "kept": int(wanted["kept"].sum()), "quota": int(wanted["quota"].sum())}))
"""
)


def class_synonyms() -> dict[str, list[str]]:
    sys.path.insert(0, str(REPO))
    from benchmarks.bench_counting import real_corpus

    return real_corpus(0)[1]


def sentences() -> pa.Array:
    cupl = pq.read_table(REPO / "data" / "captions" / "cupl_imagenet.parquet")
    glosses = pq.read_table(REPO / "data" / "wordnet" / "synsets.parquet", columns=["definition", "examples"])
    return pa.concat_arrays(
        [
            cupl["caption"].combine_chunks().cast(pa.large_string()),
            glosses["definition"].combine_chunks().cast(pa.large_string()),
            pc.list_flatten(glosses["examples"]).combine_chunks().cast(pa.large_string()),
        ]
    )


def write_pool(folder: Path, captions: int) -> None:
    """``captions`` rows in LAION's metadata layout, the shipped sentences cycled, each distinct."""
    (folder / "metadata").mkdir(parents=True)
    text = sentences()
    for number, start in enumerate(range(0, captions, FILE_ROWS)):
        rows = np.arange(start, min(start + FILE_ROWS, captions))
        cycled = text.take(pa.array(rows % len(text)))
        suffix = pc.cast(pa.array(rows), pa.large_string())
        caption = pc.binary_join_element_wise(cycled, suffix, pa.scalar(" no. ", pa.large_string()))
        key = pc.utf8_lpad(pc.cast(pa.array(rows), pa.string()), 9, "0")
        url = pc.binary_join_element_wise("https://example.com/", key, ".jpg", "")
        table = pa.table({"url": url, "caption": caption, "key": key})
        pq.write_table(table, folder / "metadata" / f"metadata_{number}.parquet", row_group_size=ROW_GROUP)


def warm_page_cache(folder: Path) -> None:
    """Read every metadata file once, so that both matchers start with the pool in the page cache
    (as a second run over it would) rather than the first paying for the disk."""
    for path in sorted((folder / "metadata").glob("*.parquet")):
        with path.open("rb") as handle:
            while handle.read(1 << 24):
                pass


def run_part(script: str, *args: str) -> dict:
    code = f"FILE_ROWS = {FILE_ROWS}\n{script}"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"a benchmark part failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def per_class(found: dict, num_classes: int) -> list[np.ndarray]:
    order = np.lexsort((found["rows"], found["classes"]))
    classes, rows = found["classes"][order], found["rows"][order]
    bounds = np.searchsorted(classes, np.arange(num_classes + 1))
    return [np.unique(rows[bounds[c] : bounds[c + 1]]) for c in range(num_classes)]


def caption_at(folder: Path, row: int) -> str:
    path = folder / "metadata" / f"metadata_{row // FILE_ROWS}.parquet"
    return pq.read_table(path, columns=["caption"])["caption"][row % FILE_ROWS].as_py()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=10_000_000)
    parser.add_argument("--pool", type=Path, help="a folder to write the pool in (default: a temp folder)")
    parser.add_argument("--skip-fts5", action="store_true", help="time rebalance alone (e.g. at 100 M rows)")
    parser.add_argument("--per-class", type=int, default=10, help="N kept a class end to end")
    parser.add_argument("--max-candidates", type=int, default=20, help="candidates ranked a class end to end")
    parser.add_argument("--repeats", type=int, default=3, help="runs of rebalance's candidate step (median)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-captions-", dir=args.pool.parent if args.pool else None))
    pool = args.pool or work / "pool"
    started = time.perf_counter()
    if not (pool / "metadata").exists():
        write_pool(pool, args.captions)
    print(f"pool: {args.captions:,} captions in {pool} ({time.perf_counter() - started:.0f} s to write)")

    from rebalance.methods.inflection import written_forms

    synonyms = class_synonyms()
    forms_of = written_forms(s for listed in synonyms.values() for s in listed)
    forms = {c: list(dict.fromkeys(f for s in listed for f in forms_of[s])) for c, listed in synonyms.items()}
    (work / "synonyms.json").write_text(json.dumps(synonyms))
    (work / "forms.json").write_text(json.dumps(forms))
    names = list(synonyms)

    warm_page_cache(pool)
    runs = [
        run_part(OURS, str(pool), str(work / "synonyms.json"), str(work / "ours.npz"))
        for _ in range(args.repeats)
    ]
    ours = {
        **sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2],
        "peak_gb": max(r["peak_gb"] for r in runs),
    }
    print(
        f"rebalance candidates: {ours['seconds']:.1f} s, the median of {[round(r['seconds'], 2) for r in runs]} "
        f"(after {ours['import_seconds']:.1f} s of imports), peak RSS {ours['peak_gb']:.2f} GB"
    )
    fts5_seconds, ratio, agreed = float("nan"), float("nan"), "not compared"
    if not args.skip_fts5:
        warm_page_cache(pool)
        fts5 = run_part(
            FTS5, str(pool), str(work / "forms.json"), str(work / "fts5.npz"), str(work / "fts5.db")
        )
        fts5_seconds, ratio = fts5["seconds"], fts5["seconds"] / ours["seconds"]
        print(
            f"sqlite FTS5: build {fts5['build_seconds']:.1f} s + {len(names)} queries {fts5['query_seconds']:.1f} s, "
            f"peak RSS {fts5['peak_gb']:.2f} GB"
        )
        ours_found = dict(np.load(work / "ours.npz"))
        mine = per_class(ours_found, len(names))
        theirs = per_class(dict(np.load(work / "fts5.npz")), len(names))
        identical, sampled = 0, 0
        for number, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            matched = int(ours_found["matched"][number])
            if len(a) < matched:  # a sample: same count, and every sampled row found by FTS5
                sampled += 1
                if matched == len(b) and np.isin(a, b).all():
                    identical += 1
                    continue
            elif np.array_equal(a, b):
                identical += 1
                continue
            only_ours, only_fts5 = np.setdiff1d(a, b), np.setdiff1d(b, a)
            print(
                f"  {names[number]!r}: rebalance {matched:,} matched, FTS5 {len(b):,}; forms {forms[names[number]]}"
            )
            for label, rows in (("only rebalance", only_ours), ("only FTS5", only_fts5)):
                for row in rows[:3]:
                    print(f"    {label}: {caption_at(pool, int(row))!r}")
        agreed = f"{identical}/{len(names)}"
        print(f"compared: {agreed} classes agree ({sampled} of them sampled by rebalance)")
    end = run_part(
        END_TO_END, str(pool), str(work / "synonyms.json"), str(args.per_class), str(args.max_candidates)
    )
    print(
        f"end to end: {end['classes_wanted']} classes below the median, candidates in {end['candidate_seconds']:.1f} s, "
        f"{end['ranked']:,} captions ranked (MiniLM, CPU), {end['kept']:,} kept of {end['quota']:,} wanted, "
        f"{end['seconds']:.1f} s, peak RSS {end['peak_gb']:.2f} GB"
    )
    print(
        f"caption match: {ours['captions']:,} captions, rebalance {ours['seconds']:.1f} s, sqlite FTS5 "
        f"{fts5_seconds:.1f} s, ratio {ratio:.1f}, identical classes {agreed}, peak RSS "
        f"{ours['peak_gb']:.2f} GB; end to end {end['seconds']:.1f} s"
    )
    if not args.pool:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
