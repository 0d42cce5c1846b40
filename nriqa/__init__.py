"""nriqa: no-reference image quality assessment, from data to a served model."""

__version__ = "0.1.0"
