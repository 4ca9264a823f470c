"""Libraries' own logging and progress bars, quieted where they are noise."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from transformers.utils import logging as hf_logging


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off for the block: what it reports while
    loading or saving (a pooler a checkpoint lacks, a task head newly initialised, a bar
    per checkpoint) is expected where this is used, and drowns the pipeline's own lines."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_logger(*names: str) -> Iterator[None]:
    """Info and warnings of the named loggers (``"root"``: the root logger) off for the
    block: an exporter's or a quantiser's reports are noise for users."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
