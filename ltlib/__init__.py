"""Long-Tail Lab: long-tailed (class-imbalanced) image classification, to teach and to compare."""

__version__ = "0.1.0"
