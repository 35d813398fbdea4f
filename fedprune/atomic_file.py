"""Files a reader may open at any moment (results.json, checkpoints, a node's edge model), written whole.

The content goes to a temporary file beside the target, which is then renamed over it: a reader, or a
crash halfway, sees the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[str], None], mode: int | None = None) -> Path:
    """Replace ``path`` with what ``write`` writes into the temporary file whose name it is given.

    The temporary file is ``.<stem>-*.tmp`` in ``path``'s folder, created 0600 (``mode`` sets another one
    before the rename); it is removed if ``write`` fails.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
