"""Benchmark the embedding stage on the RSITMD test captions, side by side in one run.

Measures, on the distinct RSITMD test captions (2119 of 2260) with the same
model and batch size:

1. the product's ``embed_texts`` (writing to a fresh vector store) against
   sentence-transformers' own ``encode``: texts per second and the product's
   overhead (goal: under 10%);
2. a second ``embed_texts`` call served entirely from the store, against the
   first (goal: at least 50 times faster);
3. the ONNX int8 export of all-MiniLM-L6-v2 against the PyTorch model: speed
   ratio and the cosine between their vectors of the same text.

Each repeat times both sides of a comparison back to back and alternates
which goes first. The ratios are the median of the per-repeat ratios, so that
load from other processes on a shared machine hits both sides alike. The overhead
is also given in process CPU time (all threads), which such load disturbs less
than wall time.

Usage::

    python benchmarks/bench_embedding.py [--repeats 5] [--batch-size 64] [--limit N] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trsllava_utils.data import load_dataset  # noqa: E402
from trsllava_utils.embedders import OnnxEmbedder  # noqa: E402
from trsllava_utils.embedding import VectorStore, embed_texts, load_embedder  # noqa: E402


def _timed(function: Callable[[], object]) -> tuple[float, float, object]:
    """Run ``function`` and return its wall time, its process CPU time (all threads) and its result."""
    cpu_started = time.process_time()
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, time.process_time() - cpu_started, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side (median reported)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per model call")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N distinct captions")
    parser.add_argument("--device", default=None, help="torch device for the PyTorch model, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and onnxruntime (default: their own choice); "
                             "1 makes CPU times steadier on a loaded machine")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    dataset = load_dataset("rsitmd", "test")
    all_captions = dataset.captions_flat()[0]
    texts = list(dict.fromkeys(all_captions))[: args.limit]
    print(f"RSITMD test: {len(all_captions)} captions, {len(set(all_captions))} distinct; using {len(texts)}")
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} CPUs, device {args.device or 'default'}")

    embedder = load_embedder("all-MiniLM-L6-v2", device=args.device)
    packaged_int8 = load_embedder("all-MiniLM-L6-v2-int8", device=args.device)
    int8 = OnnxEmbedder(packaged_int8.name, packaged_int8.onnx_path, packaged_int8.tokenizer_path,
                        packaged_int8.max_length, packaged_int8.source, args.device, num_threads=args.threads)
    model = embedder.model
    print(f"model {embedder.identity} on {model.device}\nint8  {int8.identity}")

    def reference() -> np.ndarray:
        return model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)

    # Warm-up: first calls allocate and pick kernels.
    model.encode(texts[:args.batch_size], batch_size=args.batch_size)
    int8.encode(texts[:args.batch_size], batch_size=args.batch_size)

    reference_times, product_times, cached_times, int8_times = [], [], [], []
    reference_cpu, product_cpu, int8_cpu = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            store = VectorStore(Path(folder) / f"vectors-{repeat}.sqlite")

            def product() -> tuple[np.ndarray, object]:
                return embed_texts(embedder, texts, store=store, batch_size=args.batch_size, show_progress=False)

            # Alternate which side runs first, so a slow spell does not always hit one side.
            if repeat % 2 == 0:
                reference_s, reference_cpu_s, reference_vectors = _timed(reference)
                product_s, product_cpu_s, (product_vectors, first) = _timed(product)
            else:
                product_s, product_cpu_s, (product_vectors, first) = _timed(product)
                reference_s, reference_cpu_s, reference_vectors = _timed(reference)
            reference_times.append(reference_s)
            product_times.append(product_s)
            reference_cpu.append(reference_cpu_s)
            product_cpu.append(product_cpu_s)
            assert first.n_computed == len(texts)
            seconds, _, (cached_vectors, second) = _timed(product)
            cached_times.append(seconds)
            assert second.n_cached == len(texts)
            store.close()

            seconds, cpu_seconds, int8_vectors = _timed(lambda: int8.encode(texts, batch_size=args.batch_size))
            int8_times.append(seconds)
            int8_cpu.append(cpu_seconds)
            print(f"  repeat {repeat + 1}: encode {reference_times[-1]:.2f} s, embed_texts {product_times[-1]:.2f} s,"
                  f" from store {cached_times[-1] * 1000:.1f} ms, int8 {int8_times[-1]:.2f} s", flush=True)

    reference_s = statistics.median(reference_times)
    product_s = statistics.median(product_times)
    cached_s = statistics.median(cached_times)
    int8_s = statistics.median(int8_times)
    n = len(texts)
    max_difference = float(np.abs(product_vectors - reference_vectors).max())
    cosines = np.sum(int8_vectors * reference_vectors, axis=1)
    stored_equal = bool(np.array_equal(cached_vectors, product_vectors))

    print("\nmedian of", args.repeats, "runs, batch size", args.batch_size)
    print(f"{'step':38s} {'seconds':>9s} {'texts/s':>10s}")
    for label, seconds in [("sentence-transformers encode", reference_s), ("embed_texts, fresh store", product_s),
                           ("embed_texts, all from the store", cached_s), ("ONNX int8 encode", int8_s)]:
        print(f"{label:38s} {seconds:9.3f} {n / seconds:10.0f}")
    overhead = statistics.median(p / r for p, r in zip(product_times, reference_times)) - 1
    speed_up = statistics.median(p / c for p, c in zip(product_times, cached_times))
    int8_ratio = statistics.median(r / i for r, i in zip(reference_times, int8_times))
    print("\nratios: median over repeats of each repeat's ratio")
    cpu_overhead = statistics.median(p / r for p, r in zip(product_cpu, reference_cpu)) - 1
    print(f"overhead of embed_texts over encode:   {100 * overhead:+.1f}% wall time, "
          f"{100 * cpu_overhead:+.1f}% CPU time (goal < 10%)")
    print(f"store-served call speed-up:            {speed_up:.0f}x (goal >= 50x)")
    int8_cpu_ratio = statistics.median(r / i for r, i in zip(reference_cpu, int8_cpu))
    print(f"ONNX int8 speed vs PyTorch:            {int8_ratio:.2f}x wall time, {int8_cpu_ratio:.2f}x CPU time")
    print(f"cosine int8 vs PyTorch, same text:     mean {cosines.mean():.4f}, min {cosines.min():.4f}")
    print(f"max |embed_texts - encode|:            {max_difference:.2e}")
    print(f"store returns the stored vectors:      {stored_equal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
