"""Checkpoints and exports: safetensors + JSON only, written atomically."""
from compress.io.checkpoint import load, save
from compress.io.manifest import FORMAT_VERSION, CheckpointError, Manifest

__all__ = ["FORMAT_VERSION", "CheckpointError", "Manifest", "load", "save"]
