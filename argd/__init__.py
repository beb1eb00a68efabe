"""ARGD: remove backdoors from image classifiers with Attention Relation Graph Distillation."""

__version__ = "0.1.0"
