"""The rvf pipeline."""
