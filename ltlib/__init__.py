"""Long-Tail Lab: long-tailed (class-imbalanced) image classification, to teach and to compare.

Importing the package is cheap (no torch): submodules load on first use, ``ltlib.plots`` as well as
``from ltlib import plots``. The losses that live in their own modules (``autobalance``, ``contrastive``)
register themselves on the first lookup in ``ltlib.losses.LOSSES``.
"""

import importlib
import importlib.util
from typing import Any

# The one version source: pyproject.toml reads it statically, `ltlib --version` prints it.
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Only names that are submodules: anything else is a plain AttributeError (hasattr, pickling, tools).
    if importlib.util.find_spec(f"{__name__}.{name}") is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
