"""Exports to formats other tools load: hf, bitnet, gptq, compressed-tensors, gguf."""
