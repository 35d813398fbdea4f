"""fedprune: federated pruning on Flower. The ``fedprune`` command lives in ``fedprune.cli``.

The project's top-level folders (``server/``, ``client/``, ``protos/``, ...) are the subpackages
``fedprune.server``, ``fedprune.client``, ... An installed wheel holds them under ``fedprune/`` (setuptools
``package-dir`` in pyproject.toml). In a source tree — a checkout, or the Flower app bundle a SuperLink
ships to its nodes — they sit beside this folder, so the tree's root is also searched for subpackages:
the code that runs is the code of that tree, never a copy installed elsewhere.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"
SUBPACKAGES = ("server", "client", "strategies", "pruning", "protos", "kernels", "simulation", "models", "data",
               "deploy", "tuning")

_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and all((_root / name / "__init__.py").is_file() for name in SUBPACKAGES):
    __path__.append(str(_root))  # noqa: F821 - a package's __path__ is set by the import system
