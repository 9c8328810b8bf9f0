"""harness: benchmark and evaluation harness for quantized MLX language models."""

__version__ = "0.1.0"
