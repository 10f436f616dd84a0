"""Time the transformers captioning backend at several batch sizes, side by side in one run.

For each batch size the script generates replies to the RSRT prompt for the
same images through :class:`TransformersCaptioner`, with its chat template,
left padding and new-token decoding. It reports images per second, generated
tokens per second, and the speed-up over batch size 1. Every reply is forced
to the same length (``min_new_tokens = max_new_tokens``, greedy decoding),
because a random model would otherwise stop at a random step. Timing needs
no trained weights. Each batch size gets one untimed warm-up batch. Then each
of ``--repeats`` rounds times one pass over all images per batch size, and the
best pass counts.

Two model sizes, both randomly initialised from a config written in code:

- default: a tiny LLaVA (2-layer CLIP and Llama, width 32) on the CPU. It
  measures the backend's own overhead, not a real model's speed.
- ``--llava-7b-dims``: the dimensions of LLaVA-1.5-7B (CLIP ViT-L/14 at
  336 px, 576 image tokens, 32-layer Llama of width 4096), bfloat16, on CUDA.

Usage::

    python benchmarks/bench_captioning.py [--batch-sizes 1 2 4 8] [--images 16] [--new-tokens 32]
    python benchmarks/bench_captioning.py --llava-7b-dims --batch-sizes 1 4 8 16 --images 32 --new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from trsllava_utils.captioning import load_image_rgb, rsrt_prompt  # noqa: E402
from trsllava_utils.captioning.backend_transformers import TransformersCaptioner  # noqa: E402
from trsllava_utils.captioning.random_models import build_random_llava  # noqa: E402
from trsllava_utils.data import load_dataset  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_pass(captioner: TransformersCaptioner, images: list, prompt: str) -> tuple[float, int]:
    """Return seconds and generated tokens of one pass over ``images``."""
    _sync(captioner.device)
    tokens_before = captioner.generated_tokens
    started = time.perf_counter()
    replies = captioner.generate(images, prompt)
    _sync(captioner.device)
    seconds = time.perf_counter() - started
    errors = [reply for reply in replies if isinstance(reply, Exception)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(images)} generations failed, first: {errors[0]}")
    return seconds, captioner.generated_tokens - tokens_before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8], help="batch sizes to time")
    parser.add_argument("--images", type=int, default=16, help="images per timed pass (demo images, repeated)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per reply (forced)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per batch size (best reported)")
    parser.add_argument("--n-variants", type=int, default=5, help="variants the RSRT prompt asks for")
    parser.add_argument("--llava-7b-dims", action="store_true",
                        help="use a random model with LLaVA-1.5-7B dimensions in bfloat16 on CUDA")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    if args.llava_7b_dims:
        # NOTE: this branch has never been run on a GPU. Its memory need is an estimate: about 15 GB of GPU
        # memory for the bfloat16 weights, plus the KV cache of the largest batch.
        if not torch.cuda.is_available():
            print("error: --llava-7b-dims needs a CUDA GPU; run without it for the tiny CPU model", file=sys.stderr)
            return 2
        dims, device, dtype = "llava-1.5-7b", torch.device("cuda"), torch.bfloat16
    else:
        dims, device, dtype = "tiny", torch.device("cpu"), torch.float32

    started = time.perf_counter()
    net, processor = build_random_llava(dims, seed=0, dtype=dtype, device=device)
    build_seconds = time.perf_counter() - started
    n_parameters = sum(p.numel() for p in net.parameters())
    captioner = TransformersCaptioner.from_model(
        net, processor, name=f"random-{dims}", n_variants=args.n_variants, batch_size=1,
        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, temperature=0.0)
    prompt = rsrt_prompt(args.n_variants)
    prompt_tokens = len(processor(images=[load_image_rgb(load_dataset("demo").items[0].path)],
                                  text=[captioner.chat_text(prompt)], return_tensors="pt")["input_ids"][0])

    demo = load_dataset("demo")
    pool = [load_image_rgb(item.path) for item in demo.items]
    images = [pool[k % len(pool)] for k in range(args.images)]

    machine = (f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
               f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if device.type == "cuda":
        machine += f", GPU {torch.cuda.get_device_name(device)}"
    print(f"model: random {dims}, {n_parameters / 1e6:.1f} M parameters, {dtype}, {device}; "
          f"built in {build_seconds:.1f} s")
    print(f"machine: {machine}")
    print(f"workload: {args.images} demo images, prompt {prompt_tokens} tokens with the image, "
          f"{args.new_tokens} new tokens per reply (forced), best of {args.repeats}")
    print()
    print(f"{'batch':>5}  {'seconds':>8}  {'images/s':>9}  {'tokens/s':>9}  {'speed-up':>8}")

    for batch_size in args.batch_sizes:
        captioner.batch_size = batch_size
        _timed_pass(captioner, images[:batch_size], prompt)  # warm-up
    # Passes alternate over the batch sizes, so that load from other processes hits each of them.
    timings: dict[int, list[tuple[float, int]]] = {batch_size: [] for batch_size in args.batch_sizes}
    for _ in range(args.repeats):
        for batch_size in args.batch_sizes:
            captioner.batch_size = batch_size
            timings[batch_size].append(_timed_pass(captioner, images, prompt))

    results = []
    for batch_size in args.batch_sizes:
        best_seconds, tokens = min(timings[batch_size])
        row = {"batch_size": batch_size, "seconds": best_seconds, "images_per_second": args.images / best_seconds,
               "tokens_per_second": tokens / best_seconds, "generated_tokens": tokens,
               "all_seconds": [seconds for seconds, _ in timings[batch_size]]}
        results.append(row)
        speedup = row["images_per_second"] / results[0]["images_per_second"]
        print(f"{batch_size:>5}  {best_seconds:>8.2f}  {row['images_per_second']:>9.2f}  "
              f"{row['tokens_per_second']:>9.1f}  {speedup:>7.2f}x")
        if tokens != args.images * args.new_tokens:
            print(f"       note: {tokens} tokens counted, expected {args.images * args.new_tokens} "
                  f"(a generated pad token is not counted)")

    if args.json_out:
        args.json_out.write_text(json.dumps({"model": dims, "device": str(device), "dtype": str(dtype),
                                             "machine": machine, "images": args.images,
                                             "new_tokens": args.new_tokens, "prompt_tokens": prompt_tokens,
                                             "results": results}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
