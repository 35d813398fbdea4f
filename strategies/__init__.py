"""Server-side algorithms as Flower strategies (the algorithms they are composed of: ``fedprune.pruning``)."""

from fedprune.strategies.registry import STRATEGIES, build_strategy

__all__ = ["STRATEGIES", "build_strategy"]
