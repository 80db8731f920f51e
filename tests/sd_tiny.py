"""A tiny, randomly initialised Stable Diffusion checkpoint in the diffusers folder layout.

Same component classes as a real checkpoint (UNet2DConditionModel, AutoencoderKL, CLIPTextModel,
CLIPTokenizer, DDPMScheduler), small enough to run on a CPU in milliseconds, saved with
save_pretrained so that tests exercise the real from_pretrained loading path.
"""
from __future__ import annotations

from pathlib import Path

import torch

TEXT_DIM = 32
MAX_TOKENS = 16


def byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE (GPT-2/CLIP) uses for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style BPE vocabulary: every byte character, alone and word-final, plus a few merges."""
    merges = [("r", "e"), ("o", "n"), ("v", "i"), ("e", "w</w>"), ("f", "r")]
    tokens = byte_alphabet() + [c + "</w>" for c in byte_alphabet()] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_tiny_sd(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Write a tiny random SD checkpoint to ``folder`` (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=8, use_linear_projection=True,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
        sample_size=32,
    )
    vocab_size = len(tiny_vocab()[0])
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, hidden_size=TEXT_DIM, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=TEXT_DIM,
    ))
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type, clip_sample=False,
    )
    vocab, merges = tiny_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder), ("tokenizer", tokenizer), ("scheduler", scheduler)):
        part.save_pretrained(str(folder / name))
    return folder
