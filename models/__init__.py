"""Model architectures both server and clients build, and which of their tensors are prunable."""

from fedprune.models.registry import BATCHNORM_MODELS, MODELS, build_model, default_model_for, prunable_names

__all__ = ["BATCHNORM_MODELS", "MODELS", "build_model", "default_model_for", "prunable_names"]
