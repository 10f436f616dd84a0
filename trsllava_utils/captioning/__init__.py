"""Captioning: turn images into RSRT records with any vision-language model.

- ``precomputed``: records read from an existing RSRT file, and the run's copy.
"""

from .precomputed import RSRT_FILENAME, precomputed_records, write_run_records

__all__ = ["RSRT_FILENAME", "precomputed_records", "write_run_records"]
