"""Pipelines: one package per published pipeline, registered like models."""
