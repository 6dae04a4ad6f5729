"""Files written whole or not at all: the one home of rwwce's atomic writers.

Every file rwwce writes (reports, plots, cost matrices, results files) goes through here, so that an
interrupted run never leaves a half-written file and new files get the permissions the user's umask
gives (``tempfile.mkstemp`` creates 0600; the final file gets ``0666 & ~umask``, or keeps the mode of
the file it replaces).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

__all__ = ["atomic_write", "atomic_path", "save_figure"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` is untouched.
    The result has the mode of the file it replaces, or ``0666 & ~umask`` for a new file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    except OSError as error:  # name the user's path, not the temporary file's
        raise _naming(error, path) from None
    os.close(fd)
    try:
        yield tmp
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        try:
            os.replace(tmp, path)
        except OSError as error:
            raise _naming(error, path) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _naming(error: OSError, path: str) -> OSError:
    """The same error, saying the user's path instead of the temporary file's."""
    reason = error.strerror or str(error) or type(error).__name__
    message = f"cannot write {path}: {reason}"
    return type(error)(message) if error.errno is None else type(error)(error.errno, message)


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` (str is UTF-8 encoded) to ``path`` whole, fsynced, or not at all."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def save_figure(fig: Any, path: str | os.PathLike[str], **savefig_kwargs: Any) -> None:
    """``fig.savefig`` to ``path`` atomically (format from ``path``'s suffix)."""
    options: dict[str, Any] = {"dpi": 110, "bbox_inches": "tight", **savefig_kwargs}
    suffix = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    options.setdefault("format", suffix)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **options)
