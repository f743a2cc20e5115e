"""The lake's storage, behind one small interface so object stores can be added later.

The sink needs five things from storage: write a file under a temporary name and make
it durable, rename it into place atomically (and durably), read and replace a small
state file atomically, list files, and delete. :class:`LocalFS` does them on a POSIX
filesystem: ``fsync`` the file, ``rename``, then ``fsync`` the directory, so a crash or a
power cut leaves either the old name or the new one, never a half-written file under a
visible name. (An object store would implement ``commit`` as a conditional put.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import lake as L


class LakeFS(Protocol):
    root: Path

    def write_parquet(self, rel: str, table: pa.Table,
                      level: int = L.COMPRESSION_LEVEL) -> None: ...
    def read_parquet(self, rel: str) -> pa.Table: ...
    def size(self, rel: str) -> int: ...
    def version(self, rel: str) -> str: ...
    def commit(self, tmp_rel: str, final_rel: str) -> None: ...
    def read_text(self, rel: str) -> str | None: ...
    def replace_text(self, rel: str, text: str) -> None: ...
    def list(self, rel_dir: str, suffix: str) -> Iterator[str]: ...
    def exists(self, rel: str) -> bool: ...
    def remove(self, rel: str) -> None: ...


class LocalFS:
    """:class:`LakeFS` on a local (POSIX) filesystem rooted at ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _p(self, rel: str) -> Path:
        return self.root / rel

    def write_parquet(self, rel: str, table: pa.Table,
                      level: int = L.COMPRESSION_LEVEL) -> None:
        """Write ``table`` to ``rel`` (a temporary name) and fsync it (``level``: zstd's)."""
        path = self._p(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pq.write_table(table, f, **L.parquet_options(table.schema, level))
            f.flush()
            os.fsync(f.fileno())

    def read_parquet(self, rel: str) -> pa.Table:
        return pq.read_table(self._p(rel))

    def size(self, rel: str) -> int:
        return self._p(rel).stat().st_size

    def version(self, rel: str) -> str:
        """Changes whenever the file is replaced (size and modification time)."""
        st = self._p(rel).stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    def commit(self, tmp_rel: str, final_rel: str) -> None:
        """Rename into place atomically, then make the rename durable."""
        final = self._p(final_rel)
        os.replace(self._p(tmp_rel), final)
        _fsync_dir(final.parent)

    def read_text(self, rel: str) -> str | None:
        try:
            return self._p(rel).read_text()
        except FileNotFoundError:
            return None

    def replace_text(self, rel: str, text: str) -> None:
        path = self._p(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + L.TMP_SUFFIX)
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def list(self, rel_dir: str, suffix: str) -> Iterator[str]:
        """Relative paths of the files under ``rel_dir`` (recursively) ending in
        ``suffix``."""
        base = self._p(rel_dir)
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(suffix):
                    yield str(Path(dirpath, name).relative_to(self.root))

    def exists(self, rel: str) -> bool:
        return self._p(rel).exists()

    def remove(self, rel: str) -> None:
        """Delete a file, then its directories up to the dataset's that it left empty."""
        path = self._p(rel)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root and parent.parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
