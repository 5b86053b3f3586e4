"""The package version (a leaf module: checkpoints and run summaries record it)."""

__version__ = "0.1.0"
