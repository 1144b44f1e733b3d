"""Build the shipped compact WordNet 3.0: synsets and senses as two parquet files.

Source: Debian's ``wordnet-base`` (the Princeton WordNet 3.0 database files, WordNet 3.0 licence;
see data/wordnet/LICENSE). Rerun with ``python scripts/build_wordnet.py [--source DIR]`` after
``apt-get install wordnet-base`` (DIR defaults to /usr/share/wordnet); the output is identical.

- ``synsets.parquet``: pos, offset, lemmas (in WordNet order, underscores as spaces), definition,
  examples (the quoted usage sentences of the gloss).
- ``senses.parquet``: lemma, pos, offsets (the lemma's synsets in sense order, so "bank.n.02" is
  the second offset of ("bank", "n")).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rebalance.io.wordnet import POS_FILES, parse_data_file, parse_index_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "data" / "wordnet")
    args = parser.parse_args()
    synsets, senses = [], []
    for pos, name in POS_FILES.items():
        synsets += parse_data_file(args.source / f"data.{name}", pos)
        senses += parse_index_file(args.source / f"index.{name}", pos)
    args.out.mkdir(parents=True, exist_ok=True)
    options = {"compression": "zstd", "compression_level": 19}
    pq.write_table(pa.Table.from_pylist(synsets), args.out / "synsets.parquet", **options)
    pq.write_table(pa.Table.from_pylist(senses), args.out / "senses.parquet", **options)
    print(f"{len(synsets):,} synsets, {len(senses):,} senses -> {args.out}")


if __name__ == "__main__":
    main()
