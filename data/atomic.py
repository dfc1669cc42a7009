"""One way to write a file so that a kill at any moment leaves either the old file or the new one.

write(tmp) fills a temporary file in the same folder; it is flushed to disk and renamed over `path`
(os.replace is atomic within a file system). Every writer in re-po goes through here. A write that fails
(a full disk, a folder where the file should go) removes its temporary file: it leaves nothing behind. A
temporary file already there (a killed writer's, or a planted link) is removed first, so a write never goes through
a link to somewhere else.
"""
import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink()
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
