"""Helper package of the trsllava workbook.

Training-free remote-sensing image-text retrieval: a vision-language model
describes every image as rich text (RSRT records), one sentence-embedding
model embeds captions and descriptions, and retrieval becomes text-to-text
matching. One module per concept:

- ``paths``: project, data and output folders;
- ``params``: the typed schema of a run's parameters;
- ``data``: datasets and caption-file loaders;
- ``rsrt``: RSRT records, their validation and JSON Lines files;
- ``captioning``: prompts and captioner backends;
- ``episodes``: query and gallery texts of a run;
- ``embedding``: embedders, the vector store;
- ``retrieval``: ranks, R@K, mR and their intervals;
- ``plotting``: paper figures;
- ``batch``: the papermill batch runner and the run summaries.
"""

__version__ = "0.1.0"
