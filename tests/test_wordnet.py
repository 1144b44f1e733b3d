from __future__ import annotations

from pathlib import Path

import pytest

from rebalance.errors import DataError
from rebalance.io.wordnet import WordNet
from tests.helpers import REPO

# Two real lines of WordNet 3.0's data.noun and the index.noun line that orders them.
DATA_NOUN = """  1 This software and database is being provided to you, the LICENSEE, by Princeton University
02682922 06 n 05 aerosol 0 aerosol_container 0 aerosol_can 0 aerosol_bomb 0 spray_can 0 002 @ 03210683 n 0000 ~ 03914583 n 0000 | a dispenser that holds a substance under pressure and that can release it as a fine spray (usually by means of a propellant gas)  
11422597 19 n 01 aerosol 0 008 @ 11439690 n 0000 + 01377958 v 0101 + 01377776 v 0101 + 01377958 v 0102 + 01377776 v 0102 ~ 11458314 n 0000 ~ 11465888 n 0000 ~ 11508092 n 0000 | a cloud of solid or liquid particles in a gas; "the aerosol hung in the air"  
"""
INDEX_NOUN = """  1 This software and database is being provided to you, the LICENSEE, by Princeton University
aerosol n 2 3 @ ~ + 2 1 11422597 02682922  
"""


def test_raw_debian_files_and_the_shipped_copy_agree(tmp_path: Path) -> None:
    (tmp_path / "data.noun").write_text(DATA_NOUN)
    (tmp_path / "index.noun").write_text(INDEX_NOUN)
    for pos in ("verb", "adj", "adv"):
        (tmp_path / f"data.{pos}").write_text("")
        (tmp_path / f"index.{pos}").write_text("")
    raw = WordNet.load(tmp_path)
    first, second = raw.synsets("aerosol")
    assert first.definition == "a cloud of solid or liquid particles in a gas"
    assert first.examples == ["the aerosol hung in the air"]
    assert second.lemmas == ["aerosol", "aerosol container", "aerosol can", "aerosol bomb", "spray can"]
    shipped = WordNet.load(REPO / "data" / "wordnet")
    assert shipped.synset("aerosol.n.02") == raw.synset("aerosol.n.02") == second
    assert shipped.synset("aerosol.n.09") is None
    with pytest.raises(DataError, match="not a synset name"):
        shipped.synset("aerosol")
