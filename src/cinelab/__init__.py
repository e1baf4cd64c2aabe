"""cinelab: deep learning on cardiac and chest imaging, from raw files to reports."""

__version__ = "0.1.0"
