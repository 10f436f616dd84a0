"""Builders of fake runs for the analysis tests: metrics.json and ranks.csv as the retrieval notebook writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from trsllava_utils.params import RunParams

RECALL_KEYS = ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10")


def make_metrics(run_name: str, *, dataset: str = "rsitmd", captioner: str = "precomputed", n_variants: int = 5,
                 embedding_model: str = "all-MiniLM-L6-v2", db_fields: tuple[str, ...] = ("one_sentence", "feature",
                                                                                            "caption"),
                 aggregation: str = "max", recalls: tuple[float, ...] = (10.0, 30.0, 40.0, 15.0, 35.0, 45.0),
                 half_width: float = 2.0, per_class: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a metrics.json dict; mR is the mean of ``recalls`` and each interval is value +- ``half_width``."""
    params = RunParams(run_name=run_name, dataset=dataset, captioner=captioner, n_variants=n_variants,
                       embedding_model=embedding_model, db_fields=list(db_fields), aggregation=aggregation)
    metrics = dict(zip(RECALL_KEYS, recalls))
    metrics["mR"] = sum(recalls) / len(recalls)
    oracle = captioner == "human-holdout"
    return {
        "run_name": run_name, "created": "2026-01-01T00:00:00+00:00", "package_version": "0.1.0",
        "git_commit": None, "params": params.model_dump(mode="json"), "oracle": oracle,
        "label": "human-holdout oracle (upper bound)" if oracle else "method (training-free)",
        "dataset": {"name": dataset, "split": "test", "n_images": 452, "n_captions": 2260},
        "models": {"embedding": {"name": embedding_model, "identity": embedding_model, "source": "package"},
                   "captioner": {"name": captioner, "model": None}},
        "counts": {"t2i_queries": 2260, "t2i_gallery_images": 452, "t2i_gallery_texts": 2260,
                   "i2t_queries": 452, "i2t_gallery_texts": 2260, "episodes": 5 if oracle else 1},
        "unit": "percent", "metrics": metrics,
        "ci95": {key: [value - half_width, value + half_width] for key, value in metrics.items()},
        "rank_stats": {"t2i": {"median": 12.0, "mean": 30.5}, "i2t": {"median": 8.0, "mean": 20.0}},
        "ties": {"t2i": 0, "i2t": 0}, "per_fold": [], "per_class": per_class or {},
    }


def write_run(root: Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` to ``root/<run_name>/metrics.json`` and return the run folder."""
    folder = Path(root) / metrics["run_name"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return folder


def make_ranks(t2i_ranks: list[int], i2t_ranks: list[int], *, image_ids: list[str] | None = None) -> pd.DataFrame:
    """Return a ranks.csv frame with the given ranks; query ids and texts are numbered."""
    image_ids = image_ids or [f"img_{index}.jpg" for index in range(max(len(t2i_ranks), len(i2t_ranks), 1))]
    rows = []
    for direction, ranks in (("t2i", t2i_ranks), ("i2t", i2t_ranks)):
        for index, rank in enumerate(ranks):
            truth = image_ids[index % len(image_ids)]
            rows.append({"direction": direction, "episode": "all", "query_id": f"{direction}_{index}",
                         "query_text": f"query {index}", "ground_truth": truth, "rank": rank, "tied": False,
                         "top5": " ".join(image_ids[:5]), "label": ""})
    return pd.DataFrame(rows)
