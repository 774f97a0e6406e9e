"""hierarcaps: build and validate HierarCaps-style caption-hierarchy datasets."""

__version__ = "0.1.0"
