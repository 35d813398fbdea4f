"""fedprune: federated pruning on Flower. The ``fedprune`` command lives in ``fedprune.cli``."""

__version__ = "0.1.0"
