"""mhtag: multi-head image tagging and attribute search."""

__version__ = "0.1.0"
