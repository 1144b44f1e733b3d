"""WordNet 3.0 offline: synsets by NLTK-style name ("aerosol.n.02") and by lemma.

Reads either the compact parquet copy shipped in ``data/wordnet`` or the raw database folder of
Debian's ``wordnet-base`` (``/usr/share/wordnet``: ``data.noun``, ``index.noun``, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rebalance.errors import DataError

POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_EXAMPLE = re.compile(r'"([^"]*)"')
_ADJECTIVE_MARKER = re.compile(r"\((a|p|ip)\)$")
_NAME = re.compile(r"^(?P<lemma>.+)\.(?P<pos>[nvars])\.(?P<sense>\d+)$")
MISSING = (
    "no WordNet at {path}: use the copy shipped in the repository (data/wordnet), or "
    "`apt-get install wordnet-base` and point `wordnet:` at /usr/share/wordnet"
)


@dataclasses.dataclass(frozen=True)
class Synset:
    name: str  # e.g. "aerosol.n.02"
    lemmas: list[str]  # spaces, not underscores
    definition: str
    examples: list[str]


def parse_data_file(path: Path, pos: str) -> list[dict]:
    """Rows of a WordNet ``data.<pos>`` file: offset, lemmas, definition, examples."""
    rows = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue  # licence header
        fields, _, gloss = line.partition(" | ")
        parts = fields.split()
        count = int(parts[3], 16)
        lemmas = [_ADJECTIVE_MARKER.sub("", parts[4 + 2 * i].replace("_", " ")) for i in range(count)]
        definition = gloss.split('; "')[0].strip().rstrip(";").strip()
        rows.append(
            {
                "pos": pos,
                "offset": int(parts[0]),
                "lemmas": lemmas,
                "definition": definition,
                "examples": _EXAMPLE.findall(gloss),
            }
        )
    return rows


def parse_index_file(path: Path, pos: str) -> list[dict]:
    """Rows of a WordNet ``index.<pos>`` file: lemma and its synset offsets in sense order."""
    rows = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue
        parts = line.split()
        pointer_count = int(parts[3])
        rows.append(
            {
                "lemma": parts[0].replace("_", " "),
                "pos": pos,
                "offsets": [int(o) for o in parts[4 + pointer_count + 2 :]],
            }
        )
    return rows


class WordNet:
    def __init__(self, synsets: pa.Table, senses: pa.Table):
        self._synsets = {(row["pos"], row["offset"]): row for row in synsets.to_pylist()}
        self._senses = {(row["lemma"].lower(), row["pos"]): row["offsets"] for row in senses.to_pylist()}

    @classmethod
    def load(cls, path: Path) -> WordNet:
        return _load(path.resolve())

    def synsets(self, lemma: str, pos: str = "n") -> list[Synset]:
        """Every synset of ``lemma`` (spaces or underscores) in sense order."""
        key = lemma.replace("_", " ").lower()
        offsets = self._senses.get((key, pos), [])
        return [
            self._synset(pos, offset, f"{key.replace(' ', '_')}.{pos}.{i:02d}")
            for i, offset in enumerate(offsets, start=1)
        ]

    def synset(self, name: str) -> Synset | None:
        """The synset named like NLTK does ("aerosol.n.02"), or None."""
        match = _NAME.match(name.strip())
        if match is None:
            raise DataError(f"{name!r} is not a synset name like 'aerosol.n.02'")
        senses = self.synsets(match["lemma"], "a" if match["pos"] == "s" else match["pos"])
        sense = int(match["sense"])
        return senses[sense - 1] if 0 < sense <= len(senses) else None

    def _synset(self, pos: str, offset: int, name: str) -> Synset:
        row = self._synsets[(pos, offset)]
        return Synset(name, row["lemmas"], row["definition"], row["examples"])


@functools.lru_cache(maxsize=2)
def _load(path: Path) -> WordNet:
    if (path / "synsets.parquet").is_file() and (path / "senses.parquet").is_file():
        return WordNet(pq.read_table(path / "synsets.parquet"), pq.read_table(path / "senses.parquet"))
    if (path / "data.noun").is_file() and (path / "index.noun").is_file():
        synsets, senses = [], []
        for pos, name in POS_FILES.items():
            synsets += parse_data_file(path / f"data.{name}", pos)
            senses += parse_index_file(path / f"index.{name}", pos)
        return WordNet(pa.Table.from_pylist(synsets), pa.Table.from_pylist(senses))
    raise DataError(MISSING.format(path=path))
