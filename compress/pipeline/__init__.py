"""Recipes: the whole pipeline (prune, recover, quantize, export) with a pre-flight check and a report."""
