"""Server-side algorithms as Flower strategies, and the pieces they are built from."""

from fedprune.strategies.registry import STRATEGIES, build_strategy

__all__ = ["STRATEGIES", "build_strategy"]
