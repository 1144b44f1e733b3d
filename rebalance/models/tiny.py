"""Tiny models built from config with random weights, saved like real checkpoints.

They exist so that tests and offline demos exercise the exact loading code a real model goes
through (``from_pretrained`` on a local path); their outputs mean nothing.
"""

from __future__ import annotations

from pathlib import Path


def save_tiny_causal_lm(directory: Path, *, seed: int = 0) -> Path:
    """A 1-layer GPT-2 with a word-level tokenizer over a small English vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = [
        "<unk>",
        "<eos>",
        "Yes",
        "No",
        "Answer",
        "Text",
        "Does",
        "the",
        "following",
        "text",
        "mention",
        "a",
        "or",
    ]
    vocabulary = {word: index for index, word in enumerate(words)}
    for extra in "abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"()-":
        vocabulary.setdefault(extra, len(vocabulary))
    backend = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(vocabulary),
        n_positions=256,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
    )
    model = GPT2LMHeadModel(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_open_clip(directory: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """A 1-layer open_clip ViT (32 px, 32-d embeddings) as a model-config JSON and a checkpoint.

    Returns ``(config_json, checkpoint)``: the pair a pipeline names as ``model`` and ``pretrained``.
    """
    import json

    import open_clip
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "tiny-open-clip.json"
    config.write_text(
        json.dumps(
            {
                "embed_dim": 32,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(config.stem, pretrained=None)
    checkpoint = directory / "tiny-open-clip.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return config, checkpoint


def save_tiny_transformers_clip(directory: Path, *, seed: int = 0) -> Path:
    """A 1-layer transformers ``CLIPModel`` (32 px, 16-d projections) with processor, saved to ``directory``.

    The tokenizer is CLIP's real BPE vocabulary, taken from the copy open_clip ships, so the model
    folder loads offline with ``AutoModel``/``AutoProcessor.from_pretrained``.
    """
    import json

    import torch
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    bpe = SimpleTokenizer()
    vocabulary = {
        token.replace("<start_of_text>", "<|startoftext|>").replace("<end_of_text>", "<|endoftext|>"): index
        for token, index in bpe.encoder.items()
    }
    vocab_dir = directory / "vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    (vocab_dir / "vocab.json").write_text(json.dumps(vocabulary))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=77
    )
    layer = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**layer, "vocab_size": len(tokenizer), "max_position_embeddings": 77},
        vision_config={**layer, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model_dir = directory / "tiny-clip"
    CLIPModel(config).save_pretrained(model_dir)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(model_dir)
    return model_dir


def save_tiny_stable_diffusion(directory: Path, *, seed: int = 0) -> Path:
    """A tiny Stable Diffusion pipeline (32 px, 1-layer CLIP text encoder, 2-block UNet and VAE).

    Saved with ``save_pretrained``, so it loads through the same ``from_pretrained`` path as a real
    checkpoint; the tokenizer is CLIP's real BPE vocabulary (see ``save_tiny_transformers_clip``).
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(save_tiny_transformers_clip(directory / "clip", seed=seed))
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory / "stable-diffusion")
    return directory / "stable-diffusion"
