"""Quantization and quality evaluation: quantize jobs that make a compressed-tensors artifact from a model, evaluate
jobs that measure perplexity and task accuracy of artifacts on the same held-out data, and their figures."""
