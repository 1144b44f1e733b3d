"""Text-to-image and image-to-image generation with diffusers, seeded per image.

Any diffusers pipeline by hub name or local path (Stable Diffusion 1.x/2.x, SDXL, ...), loaded
lazily through ``AutoPipelineForText2Image`` (and the image-to-image pipeline built from the same
components), float16 on CUDA. Every image has its own ``torch.Generator`` seeded with its own seed,
so one image can be regenerated alone, whatever batch it was made in.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from rebalance.core.device import resolve_device
from rebalance.errors import RebalanceError


class DiffusionGenerator:
    def __init__(
        self, model: str, *, device: str = "auto", steps: int = 30, guidance: float = 7.5, batch_size: int = 4
    ):
        self.model = model
        self.device = resolve_device(device)
        self.steps = steps
        self.guidance = guidance
        self.batch_size = batch_size

    @functools.cached_property
    def _text_to_image(self):
        import torch
        from diffusers import AutoPipelineForText2Image
        from diffusers.utils import logging
        from transformers.utils import logging as transformers_logging

        # The runner reports progress per step; per-file loading bars would interleave with it.
        logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        try:
            pipeline = AutoPipelineForText2Image.from_pretrained(self.model, dtype=dtype)
        except (OSError, ValueError) as error:
            raise RebalanceError(
                f"cannot load the diffusion pipeline {self.model!r}: {error}. Pass a local path, or a name already "
                "in the local Hugging Face cache (no downloads happen offline)"
            ) from None
        pipeline.set_progress_bar_config(disable=True)
        return pipeline.to(self.device)

    @functools.cached_property
    def _image_to_image(self):
        from diffusers import AutoPipelineForImage2Image

        pipeline = AutoPipelineForImage2Image.from_pipe(self._text_to_image)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def text_to_image(self, prompts: Sequence[str], seeds: Sequence[int], size: int) -> list:
        """One PIL image per prompt, each from its own seed."""
        return self._run(self._text_to_image, prompts, seeds, height=size, width=size)

    def image_to_image(
        self, prompts: Sequence[str], parents: Sequence, seeds: Sequence[int], strength: float, size: int
    ) -> list:
        """One PIL image per (prompt, parent image): the parent, noised by ``strength`` and re-denoised."""
        resized = [parent.convert("RGB").resize((size, size)) for parent in parents]
        return self._run(self._image_to_image, prompts, seeds, images=resized, strength=strength)

    def _run(
        self,
        pipeline,
        prompts: Sequence[str],
        seeds: Sequence[int],
        images: Sequence | None = None,
        **options,
    ) -> list:
        import torch

        made = []
        for start in range(0, len(prompts), self.batch_size):
            batch = slice(start, start + self.batch_size)
            generators = [torch.Generator(self.device).manual_seed(int(seed)) for seed in seeds[batch]]
            extra = {"image": list(images[batch])} if images is not None else {}
            output = pipeline(
                list(prompts[batch]),
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=generators,
                output_type="pil",
                **extra,
                **options,
            )
            made += output.images
        return made
