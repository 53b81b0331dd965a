"""Files only the bridge's own user may read: folders 0700, files 0600, whatever the umask.

The spool holds call records (who called whom), the private Redis's folder its password and
its append-only file: another local user must not read them, nor put a forged call where
the bridge would take it for its own. The systemd units also set ``UMask=0077``; these
helpers do not rely on it, and tighten what an older version left more open.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and missing parents) and make it 0700; its files are made 0600."""
    p = Path(path)
    p.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(p, DIR_MODE)
    for child in p.iterdir():
        if child.is_file() and not child.is_symlink():
            os.chmod(child, FILE_MODE)
    return p


def open_append(path: str | Path) -> BinaryIO:
    """``open(path, "ab")``, a new file created 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    return os.fdopen(fd, "ab")


def write_private(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (a 0600 temporary file renamed over it)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, FILE_MODE)  # an older tmp file kept its mode through O_TRUNC
    os.replace(tmp, p)
