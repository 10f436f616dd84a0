"""Randomly initialised LLaVA models, for tests and benchmarks that need the mechanics but no trained weights.

Two sizes: ``"tiny"`` (a few hundred thousand parameters, runs on a CPU in
milliseconds) and ``"llava-1.5-7b"``, the dimensions of LLaVA-1.5-7B (CLIP
ViT-L/14 at 336 px, a 32-layer Llama of width 4096, 576 image tokens), for
timing on a GPU. The tokenizer is a byte-level BPE trained here on a few
sentences, so any text encodes and decodes exactly. Its vocabulary is padded
with placeholder tokens up to the model's size. The replies of a random
model are noise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] != 'user' %}</s>{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
"""The conversation format of LLaVA 1.5 (``USER: <image>\\n... ASSISTANT:``)."""

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")

_CORPUS = [
    "You are looking at a remote-sensing image, taken from above. Describe it for image-text retrieval.",
    '{"variants": [{"one_sentence": "Many buildings surround a green playground.", '
    '"feature": "A river runs from the north-west to the south-east.", "caption": "The image shows..."}]}',
    "Reply with JSON only, no other text, in exactly this form.",
]

DIMENSIONS: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "image_size": 32, "patch_size": 8, "projection_dim": 32},
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "num_key_value_heads": 2, "max_position_embeddings": 2048},
        "vocab_size": None,
    },
    # Published config of llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 and a Vicuna-7B (Llama-2) text model.
    "llava-1.5-7b": {
        "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                   "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768},
        "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
                 "rms_norm_eps": 1e-5},
        "vocab_size": 32064,
    },
}


def build_tokenizer(vocab_size: int | None = None) -> Any:
    """Train a byte-level BPE tokenizer on a few sentences, padded to ``vocab_size`` with placeholders."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>",
                                        extra_special_tokens={"image_token": "<image>"})
    if vocab_size is not None and len(tokenizer) < vocab_size:
        tokenizer.add_tokens([f"<extra_{k}>" for k in range(vocab_size - len(tokenizer))])
    return tokenizer


def build_random_llava(dims: str = "tiny", *, architecture: str = "llava", seed: int = 0, dtype: Any = None,
                       device: Any = None) -> tuple[Any, Any]:
    """Build a randomly initialised LLaVA model and its processor.

    Args:
        dims: ``"tiny"`` or ``"llava-1.5-7b"`` (see :data:`DIMENSIONS`).
        architecture: ``"llava"`` (LLaVA 1.5: one fixed-size image, a fixed number of
            image tokens) or ``"llava-next"`` (LLaVA-NeXT: the image is tiled by its
            aspect ratio, so images of different shapes get different token counts).
        seed: Seed of the random weights.
        dtype: Parameter dtype (default float32).
        device: Device to build the weights on, e.g. ``"cuda"`` for the 7B size.

    Returns:
        ``(model, processor)``; the processor has the LLaVA 1.5 chat template.
    """
    import torch
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, LlavaNextProcessor, LlavaProcessor)

    if dims not in DIMENSIONS:
        raise ValueError(f"unknown dims {dims!r}; allowed: {', '.join(DIMENSIONS)}")
    if architecture not in ("llava", "llava-next"):
        raise ValueError(f"unknown architecture {architecture!r}; allowed: 'llava', 'llava-next'")
    spec = DIMENSIONS[dims]
    tokenizer = build_tokenizer(spec["vocab_size"])
    vision = CLIPVisionConfig(**spec["vision"])
    text = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **spec["text"])
    image_size, patch_size = spec["vision"]["image_size"], spec["vision"]["patch_size"]
    common = {"vision_config": vision, "text_config": text,
              "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
              "image_seq_length": (image_size // patch_size) ** 2}
    # The CLS token is added by the vision tower and dropped by the "default" feature strategy.
    processor_options = {"tokenizer": tokenizer, "patch_size": patch_size, "vision_feature_select_strategy": "default",
                         "num_additional_image_tokens": 1, "chat_template": LLAVA_CHAT_TEMPLATE}
    size = {"shortest_edge": image_size}
    crop = {"height": image_size, "width": image_size}
    if architecture == "llava":
        config = LlavaConfig(**common)
        processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(size=size, crop_size=crop),
                                   **processor_options)
        model_class = LlavaForConditionalGeneration
    else:
        # Grids of one or two tiles per side, like the grids LLaVA-NeXT uses with 336 px tiles.
        pinpoints = [[image_size * rows, image_size * cols] for rows in (1, 2) for cols in (1, 2)]
        config = LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
        image_processor = LlavaNextImageProcessorPil(size=size, crop_size=crop, image_grid_pinpoints=pinpoints)
        processor = LlavaNextProcessor(image_processor=image_processor, **processor_options)
        model_class = LlavaNextForConditionalGeneration
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = model_class._from_config(config, dtype=dtype or torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def save_random_llava(folder: str | os.PathLike, dims: str = "tiny", *, architecture: str = "llava",
                      seed: int = 0) -> Path:
    """Build a random LLaVA with :func:`build_random_llava` and save model and processor to ``folder``."""
    model, processor = build_random_llava(dims, architecture=architecture, seed=seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
