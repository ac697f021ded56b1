"""Long-Tail Lab: long-tailed (class-imbalanced) image classification, to teach and to compare."""

# Modules that register methods into the shared registries (LOSSES …) beyond the core files.
from ltlib import autobalance, contrastive  # noqa: F401

__version__ = "0.1.0"
