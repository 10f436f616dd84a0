"""Helper package of the trsllava workbook.

Training-free remote-sensing image-text retrieval: a vision-language model
describes every image as rich text (RSRT records), one sentence-embedding
model embeds captions and descriptions, and retrieval becomes text-to-text
matching. One module per concept:

- ``paths``: project, data and output folders;
- ``params``: the typed schema of a run's parameters;
- ``data`` (with ``data_formats`` and ``data_download``): datasets, caption-file
  loaders and the download command;
- ``rsrt``: RSRT records, their validation and JSON Lines files;
- ``captioning``: prompts and captioner backends;
- ``episodes``: query and gallery texts of a run;
- ``embedding`` (with ``embedders``, ``lexical``, ``openai_embeddings`` and
  ``vector_store``): embedders and the vector cache;
- ``retrieval``: ranks, R@K, mR and their intervals;
- ``summary`` and ``baselines``: run tables beside published results;
- ``plotting``: paper figures;
- ``explorer``: the interactive retrieval explorer;
- ``batch``: the papermill batch runner.
"""

__version__ = "0.1.0"


def log_to_notebook(level: int = 20) -> None:
    """Show this package's log lines (INFO by default) in a notebook, and only warnings from other libraries.

    Libraries such as fontTools log every step at INFO, which would bury the
    workbook's own progress lines.
    """
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).setLevel(level)
