"""Model throughput: CLIP image embedding and diffusion generation, images/s, on this machine's device.

Tiny models built from config (rebalance.models.tiny) run anywhere; ``--realistic`` builds a
Stable-Diffusion-1.5-sized UNet (860M parameters, random weights) and generates 512 px images with
it, which is meant for a GPU node. The baseline beside each figure is the same work with batch size
1, so the batching gain is visible in one run.

Usage: python benchmarks/bench_models.py [--images 64] [--realistic]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rebalance.core.device import resolve_device
from rebalance.models.diffusion import DiffusionGenerator
from rebalance.models.encoders import EncoderSpec, load_encoder
from rebalance.models.tiny import save_tiny_open_clip, save_tiny_stable_diffusion

DEMO = Path(__file__).resolve().parents[1] / "data" / "fashion_mnist_lt" / "pool"


def per_second(count: int, function) -> float:
    function()  # warm-up: weights, kernels
    started = time.perf_counter()
    function()
    return count / (time.perf_counter() - started)


def realistic_unet(directory: Path) -> Path:
    """The tiny pipeline's components with a UNet of SD-1.5's shape (random weights)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tiny = StableDiffusionPipeline.from_pretrained(save_tiny_stable_diffusion(directory / "tiny"))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=tiny.text_encoder.config.hidden_size)
    pipeline = StableDiffusionPipeline(**{**tiny.components, "unet": unet})
    pipeline.save_pretrained(directory / "sd15-shape")
    return directory / "sd15-shape"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--realistic", action="store_true")
    args = parser.parse_args()
    device = resolve_device("auto")
    paths = sorted(DEMO.glob("*.png"))[: args.images]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        config, checkpoint = save_tiny_open_clip(root / "clip")
        spec = EncoderSpec("open_clip", str(config), str(checkpoint))
        batched = load_encoder(spec, batch_size=64)
        single = load_encoder(spec, batch_size=1)
        print(f"device: {device}")
        print(
            f"tiny open_clip embedding: {per_second(len(paths), lambda: batched.encode_images(paths)):8.1f} images/s "
            f"(batch 64) | {per_second(len(paths), lambda: single.encode_images(paths)):8.1f} images/s (batch 1)"
        )
        count = 8
        seeds = list(range(count))
        prompts = ["a photo of a coat."] * count
        tiny = save_tiny_stable_diffusion(root / "sd")
        for name, model, size, steps in (("tiny", tiny, 32, 10),) + (
            (("SD-1.5-sized UNet", realistic_unet(root / "real"), 512, 20),) if args.realistic else ()
        ):
            fast = DiffusionGenerator(str(model), steps=steps, guidance=7.5, batch_size=count)
            slow = DiffusionGenerator(str(model), steps=steps, guidance=7.5, batch_size=1)
            print(
                f"{name} diffusion, {size} px, {steps} steps: "
                f"{per_second(count, lambda g=fast, s=size: g.text_to_image(prompts, seeds, s)):7.2f} images/s (batch {count}) | "
                f"{per_second(count, lambda g=slow, s=size: g.text_to_image(prompts, seeds, s)):7.2f} images/s (batch 1)"
            )


if __name__ == "__main__":
    main()
