"""Build the shipped outside canaries: handwritten digits made to look like Fashion-MNIST.

Retrieval's precision estimate (``rebalance.methods.precision``) needs images known to lie outside the label
set, so that it sees what a pool item of no class does. Source: scikit-learn's bundled copy of the
UCI optical-recognition digits (``sklearn.datasets.load_digits``: 1,797 8×8 images, 17 grey
levels; UCI, CC BY 4.0), installed with scikit-learn, so nothing is downloaded. Each digit is scaled
to Fashion-MNIST's 28×28 (bicubic), its grey levels stretched to 0..255, bright on black as
Fashion-MNIST's products are. Rerunning gives byte-identical files.

  python scripts/build_outside_canaries.py   # writes data/outside_canaries/<index>.png
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "data" / "outside_canaries")
    parser.add_argument("--count", type=int, default=300, help="digits to write (30 of each)")
    parser.add_argument("--size", type=int, default=28)
    args = parser.parse_args()

    digits = load_digits()
    per_digit = args.count // 10
    chosen = np.sort(
        np.concatenate([np.flatnonzero(digits.target == digit)[:per_digit] for digit in range(10)])
    )
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    for index in chosen:
        grey = Image.fromarray((digits.images[index] * (255 / 16)).round().astype(np.uint8), mode="L")
        buffer = io.BytesIO()
        grey.resize((args.size, args.size), Image.Resampling.BICUBIC).save(
            buffer, format="PNG", optimize=True
        )
        (args.out / f"{index:04d}.png").write_bytes(buffer.getvalue())
    print(f"wrote {len(chosen)} digits to {args.out}")


if __name__ == "__main__":
    main()
