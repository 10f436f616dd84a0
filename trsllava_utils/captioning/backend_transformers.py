"""The transformers backend: a local vision-language model folder (LLaVA 1.5, LLaVA-NeXT, Qwen2-VL and kin).

The folder is loaded with ``AutoProcessor`` and ``AutoModelForImageTextToText``,
each prompt goes through the processor's chat template with one image, and a
batch is generated with left padding so that every prompt ends where
generation starts. Only the tokens after the prompt are decoded, so a reply
never contains the prompt.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .base import Captioner

logger = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> torch.device:
    """Return ``device``, or for ``"auto"`` the first GPU when there is one, else the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype = "auto") -> torch.dtype:
    """Return ``dtype``, or for ``"auto"`` bfloat16 on a GPU that supports it (else float16) and float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class TransformersCaptioner(Captioner):
    """A local image-text-to-text model, loaded from a folder with the transformers auto classes.

    Args:
        model_path: Folder written by ``save_pretrained`` (weights, config, processor,
            chat template). Nothing is downloaded.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"auto"`` (bfloat16 on a GPU, float32 on CPU) or a torch dtype name.
        batch_size: Images per ``generate`` call; a batch that runs out of GPU
            memory is split in halves and retried.
        max_new_tokens: Upper bound of generated tokens per reply.
        min_new_tokens: Lower bound, for benchmarks that time a fixed length.
        temperature: 0 decodes greedily; above 0 samples.
        seed: Seed of torch's generator, set once at load time.
    """

    name = "transformers"

    def __init__(self, model_path: str | os.PathLike, *, n_variants: int = 5, generation_mode: str = "single",
                 batch_size: int = 4, max_new_tokens: int = 768, min_new_tokens: int | None = None,
                 temperature: float = 0.7, seed: int = 0, device: str = "auto",
                 dtype: str | torch.dtype = "auto") -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(model_path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no model folder at {path} (config.json not found); set 'captioner_model' "
                                    f"to a folder written by save_pretrained, e.g. a downloaded llava-1.5-7b-hf")
        target_device = pick_device(device)
        target_dtype = pick_dtype(target_device, dtype)
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        net = AutoModelForImageTextToText.from_pretrained(path, dtype=target_dtype, local_files_only=True)
        self._setup(net.to(target_device), processor, name=path.resolve().name, n_variants=n_variants,
                    generation_mode=generation_mode, batch_size=batch_size, max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens, temperature=temperature, seed=seed)
        self.model_path = path.resolve()
        logger.info("loaded %s (%s) on %s as %s", path, type(net).__name__, self.device, self.dtype)

    @classmethod
    def from_model(cls, net: Any, processor: Any, *, name: str, n_variants: int = 5,
                   generation_mode: str = "single", batch_size: int = 4, max_new_tokens: int = 768,
                   min_new_tokens: int | None = None, temperature: float = 0.7,
                   seed: int = 0) -> "TransformersCaptioner":
        """Wrap a model and processor already in memory (for example a random model built for a benchmark).

        The model stays on its device and in its dtype. ``name`` is the model identity that records carry.
        """
        captioner = cls.__new__(cls)
        captioner._setup(net, processor, name=name, n_variants=n_variants, generation_mode=generation_mode,
                         batch_size=batch_size, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                         temperature=temperature, seed=seed)
        captioner.model_path = None
        return captioner

    def _setup(self, net: Any, processor: Any, *, name: str, n_variants: int, generation_mode: str,
               batch_size: int, max_new_tokens: int, min_new_tokens: int | None, temperature: float,
               seed: int) -> None:
        super().__init__(name, n_variants=n_variants, generation_mode=generation_mode, batch_size=batch_size,
                         temperature=temperature)
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(f"model {name!r}: the processor has no chat template; add chat_template.jinja "
                             f"(or 'chat_template' in processor_config.json) from the model's release")
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.check_token_budget(max_new_tokens)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.net = net.eval()
        self.device = next(net.parameters()).device
        self.dtype = next(net.parameters()).dtype
        torch.manual_seed(seed)
        self.generated_tokens = 0
        """Tokens generated so far, padding excluded; benchmarks read it."""

    def chat_text(self, prompt: str) -> str:
        """Return the prompt with one image, formatted by the processor's chat template."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def _generation_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if self.min_new_tokens:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    @torch.inference_mode()
    def _generate_batch(self, images: list[Image.Image], prompt: str) -> list[str]:
        text = self.chat_text(prompt)
        inputs = self.processor(images=images, text=[text] * len(images), padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        output = self.net.generate(**inputs, **self._generation_kwargs())
        # With left padding every prompt ends at the same column, so the tokens after it are new.
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        self.generated_tokens += int((new_tokens != self.tokenizer.pad_token_id).sum())
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)

    def _generate_split(self, images: list[Image.Image], prompt: str) -> list[str | Exception]:
        """Generate a batch, and on an out-of-memory error retry each half, down to single images."""
        try:
            return list(self._generate_batch(images, prompt))
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(images) == 1:
                logger.error("out of memory on a single image with %s; lower max_new_tokens or use a "
                             "smaller model: %s", self.model, exc)
                return [exc]
            half = len(images) // 2
            logger.warning("out of memory on a batch of %d images; retrying as %d + %d",
                           len(images), half, len(images) - half)
            return self._generate_split(images[:half], prompt) + self._generate_split(images[half:], prompt)

    def generate(self, images: list[Image.Image], prompt: str) -> list[str | Exception]:
        """Return one decoded reply per image, generated ``batch_size`` images at a time."""
        replies: list[str | Exception] = []
        for start in range(0, len(images), self.batch_size):
            replies.extend(self._generate_split(images[start:start + self.batch_size], prompt))
        return replies

    def close(self) -> None:
        """Free the model's memory."""
        del self.net
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
