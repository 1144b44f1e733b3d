"""Build the shipped demo data: a long-tailed Fashion-MNIST split as PNG image folders.

Source: Debian's ``dataset-fashion-mnist`` package (Zalando Research, MIT licence), IDX files under
``/usr/share/datasets/fashion-mnist``. Rerun with ``python scripts/build_demo_data.py`` after
``apt-get install dataset-fashion-mnist``; the output is byte-identical for the same arguments.

Layout written under ``data/fashion_mnist_lt``:
  train/<class>/<index>.png  long-tailed: n_c = round(n_max * (1/imbalance) ** (c / (C - 1))),
                             the exponential profile of CIFAR-10-LT (Cao et al., LDAM, 2019)
  test/<class>/<index>.png   balanced, from the official test set
  pool/<index>.png           unlabelled further train images for retrieval; pool_labels.csv holds
                             their true labels for measuring retrieval precision only

``<index>`` is the image's position in the original IDX file, so every PNG traces back to it.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = [
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]


def read_idx(images_gz: Path, labels_gz: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(labels_gz) as handle:
        labels = np.frombuffer(handle.read(), dtype=np.uint8, offset=8)
    with gzip.open(images_gz) as handle:
        images = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    return images, labels


def long_tailed_counts(n_max: int, imbalance: float, n_classes: int) -> list[int]:
    return [round(n_max * (1.0 / imbalance) ** (c / (n_classes - 1))) for c in range(n_classes)]


def write_png(pixels: np.ndarray, path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", optimize=True)
    path.write_bytes(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "data" / "fashion_mnist_lt")
    parser.add_argument("--n-max", type=int, default=1000)
    parser.add_argument("--imbalance", type=float, default=100.0)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--pool-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--order",
        nargs="+",
        choices=CLASS_NAMES,
        default=CLASS_NAMES,
        metavar="CLASS",
        help="the classes from head to tail (all ten, once each); default: Fashion-MNIST's label order",
    )
    args = parser.parse_args()
    if sorted(args.order) != sorted(CLASS_NAMES):
        parser.error(f"--order must name each of the ten classes once: {' '.join(CLASS_NAMES)}")

    train_x, train_y = read_idx(
        args.source / "train-images-idx3-ubyte.gz", args.source / "train-labels-idx1-ubyte.gz"
    )
    test_x, test_y = read_idx(
        args.source / "t10k-images-idx3-ubyte.gz", args.source / "t10k-labels-idx1-ubyte.gz"
    )
    rng = np.random.default_rng(args.seed)
    # The same images are drawn whatever the order (one permutation per label, in label order);
    # only how many of them each class keeps follows its place in the order.
    counts = dict(
        zip(args.order, long_tailed_counts(args.n_max, args.imbalance, len(CLASS_NAMES)), strict=True)
    )

    if args.out.exists():
        shutil.rmtree(args.out)
    pool_rows = []
    for label, name in enumerate(CLASS_NAMES):
        train_idx = rng.permutation(np.flatnonzero(train_y == label))
        chosen_train = np.sort(train_idx[: counts[name]])
        chosen_pool = np.sort(train_idx[counts[name] : counts[name] + args.pool_per_class])
        chosen_test = np.sort(rng.permutation(np.flatnonzero(test_y == label))[: args.test_per_class])
        for split, indices, pixels in (("train", chosen_train, train_x), ("test", chosen_test, test_x)):
            folder = args.out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in indices:
                write_png(pixels[index], folder / f"{index:05d}.png")
        (args.out / "pool").mkdir(parents=True, exist_ok=True)
        for index in chosen_pool:
            write_png(train_x[index], args.out / "pool" / f"{index:05d}.png")
            pool_rows.append((f"{index:05d}.png", name))

    with open(args.out / "pool_labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label"])
        writer.writerows(sorted(pool_rows))
    print(f"train per class: {counts}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
