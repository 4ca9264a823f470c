"""nasbert: compress BERT-family models by neural architecture search (NAS-BERT).

Importing the package is cheap; the heavy parts (torch, transformers) load when first
used. It registers the ``nasbert`` model type with transformers' Auto classes, so saved
subnets load with ``AutoModel.from_pretrained`` after ``import nasbert``.

The pipeline, one subpackage per stage, each reading its inputs through a
:class:`RunDir`: :mod:`nasbert.train` (block-wise supernet distillation and shrinking),
:mod:`nasbert.latency`, :mod:`nasbert.search`, :mod:`nasbert.finetune`, and
:mod:`nasbert.pipeline` for all of them in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasbert import _lazy, _register
from nasbert.errors import ConfigError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from nasbert.model import (
        NasBertConfig,
        NasBertForSequenceClassification,
        NasBertModel,
        load_model,
    )
    from nasbert.run import RunDir
    from nasbert.space import Arch, BlockArch, Dims, SearchSpace
    from nasbert.supernet import Supernet

__getattr__, __dir__, _ = _lazy.attach(__name__, {
    "Arch": "nasbert.space", "BlockArch": "nasbert.space", "Dims": "nasbert.space",
    "SearchSpace": "nasbert.space", "Supernet": "nasbert.supernet", "RunDir": "nasbert.run",
    "NasBertConfig": "nasbert.model", "NasBertModel": "nasbert.model",
    "NasBertForSequenceClassification": "nasbert.model", "load_model": "nasbert.model",
})
__all__ = ["Arch", "BlockArch", "ConfigError", "Dims", "NasBertConfig",
           "NasBertForSequenceClassification", "NasBertModel", "RunDir", "SearchSpace",
           "Supernet", "load_model"]

_register.install()
