"""Compute mR per embedding model without the notebooks: oracle splits and the demo set.

A quick cross-check of the ablation grids in ``params/ablations/``. It builds
the same episodes as the notebooks: the human-holdout oracle's five folds on
the RSITMD and RSICD test splits, and the method on the demo images with their
precomputed RSRT records. Texts are embedded through the shared vector store
and ranked by :func:`trsllava_utils.retrieval.evaluate` without bootstrap
intervals.

Usage::

    python benchmarks/embedding_ablation_mr.py [--models all-MiniLM-L6-v2 bm25] [--fields-model all-MiniLM-L6-v2]

Prints one table of mR (in %) per model and data set, then, for one model,
mR on the demo set for each database field choice.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402

from trsllava_utils.data import load_dataset  # noqa: E402
from trsllava_utils.embedding import VectorStore, embed_texts, load_embedder  # noqa: E402
from trsllava_utils.episodes import holdout_episodes, method_episode, rsrt_text_set  # noqa: E402
from trsllava_utils.paths import resolve_data_root  # noqa: E402
from trsllava_utils.retrieval import evaluate  # noqa: E402
from trsllava_utils.rsrt import read_records  # noqa: E402

MODELS = ["all-MiniLM-L6-v2", "all-mpnet-base-v2", "paraphrase-MiniLM-L3-v2", "all-MiniLM-L6-v2-int8",
          "tfidf", "bm25"]
FIELD_CHOICES = [["one_sentence"], ["feature"], ["caption"], ["one_sentence", "feature"],
                 ["one_sentence", "caption"], ["feature", "caption"], ["one_sentence", "feature", "caption"]]


def mean_recall(model: str, dataset, episodes, store: VectorStore) -> tuple[float, float]:
    """Return mR (in %) of ``model`` on the episodes, and the embedding seconds."""
    texts = list(dict.fromkeys(text for episode in episodes for text in episode.all_texts()))
    embedder = load_embedder(model)
    if embedder.needs_fit:
        embedder.fit(texts)
    vectors, stats = embed_texts(embedder, texts, store=store, show_progress=False)
    table = dict(zip(texts, vectors))
    result = evaluate(episodes, table, n_bootstrap=0, image_ids=dataset.image_ids)
    return result.metrics["metrics"]["mR"], stats.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, help="embedding models to compare")
    parser.add_argument("--fields-model", default="all-MiniLM-L6-v2",
                        help="model for the demo field-choice table ('' to skip it)")
    args = parser.parse_args(argv)

    demo = load_dataset("demo")
    demo_records = read_records(resolve_data_root() / "demo" / "rsrt.jsonl")
    data = {
        "RSITMD oracle": (load_dataset("rsitmd", "test"), None),
        "RSICD oracle": (load_dataset("rsicd", "test"), None),
        "demo method": (demo, ["one_sentence", "feature", "caption"]),
    }
    rows = []
    with VectorStore() as store:
        for model in args.models:
            row = {"model": model}
            for label, (dataset, fields) in data.items():
                if fields is None:
                    episodes = holdout_episodes(dataset)
                else:
                    database = rsrt_text_set(dataset, demo_records, fields, "joined", 5)
                    episodes = [method_episode(dataset, database, database)]
                started = time.perf_counter()
                row[label], _ = mean_recall(model, dataset, episodes, store)
                print(f"{model:26s} {label:14s} mR {row[label]:6.2f}  ({time.perf_counter() - started:.1f} s)",
                      flush=True)
            rows.append(row)
        print("\nmR (%) per embedding model; oracle = held-out human captions, an upper bound")
        print(pd.DataFrame(rows).set_index("model").round(2).to_string())

        if args.fields_model:
            field_rows = []
            for fields in FIELD_CHOICES:
                for mode in ("joined", "per_field") if len(fields) > 1 else ("joined",):
                    database = rsrt_text_set(demo, demo_records, fields, mode, 5)
                    episodes = [method_episode(demo, database, database)]
                    value, _ = mean_recall(args.fields_model, demo, episodes, store)
                    field_rows.append({"db_fields": "+".join(fields), "db_text_mode": mode, "mR": value})
            print(f"\ndemo method, {args.fields_model}: mR (%) per database field choice")
            print(pd.DataFrame(field_rows).round(2).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
