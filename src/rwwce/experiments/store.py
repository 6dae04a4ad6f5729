"""The output folder (``--out``): its checks, the results file, the checkpoints and the report file.

* :func:`check_output_path` (creates nothing) and :func:`open_output` (creates the folder, proves
  it writable and reads the runs done before) run before any training, so a mistake costs no work
  and leaves no folder.
* ``results.jsonl`` (:data:`RESULTS`) is append-only JSONL, one record per run: whole lines,
  fsynced (:func:`append_records`); :func:`load_records` cuts off a last line cut short by a crash
  and refuses a file that is not ours (:class:`ResultsFileError`), never rewriting it otherwise.
* A checkpoint (``.checkpoint-<scenario>-<job>.pt``) holds a group's training state after its
  latest epoch; it is replaced atomically and removed once the group's runs are appended.
* ``report.md`` (:data:`REPORT`) is written whole (:func:`write_report`).

Every file rwwce writes whole goes through :mod:`rwwce._io` (written whole or not at all, with the
mode the user's umask gives); the results file only grows by whole lines, or loses a cut-off one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable

import torch

from rwwce._io import atomic_path, atomic_write

from .training import GroupState

__all__ = [
    "REPORT",
    "RESULTS",
    "ResultsFileError",
    "append_records",
    "check_output",
    "check_output_path",
    "checkpoint_path",
    "load_checkpoint",
    "load_records",
    "open_output",
    "remove_checkpoint",
    "report_path",
    "results_path",
    "save_checkpoint",
    "write_report",
]

RESULTS = "results.jsonl"
REPORT = "report.md"


class ResultsFileError(ValueError):
    """A results file holds something that is not ours: rwwce refuses to rewrite it."""


# ------------------------------------------------------------------------------ the folder
def check_output_path(out: str) -> None:
    """Check, creating nothing, that ``--out`` is a folder or could be made one: a file in the
    way, or a nearest existing ancestor that is not a writable folder, is an error naming it."""
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise ValueError(f"--out {out!r} exists and is not a directory")
        return
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        code = errno.ENOTDIR
    elif not os.access(parent, os.W_OK | os.X_OK):
        code = errno.EACCES
    else:
        return
    raise OSError(f"--out {out!r}: cannot create the folder ({os.strerror(code)})")


def check_output(out: str) -> None:
    """Create ``out`` and make sure rwwce can write there (before any training): a new file in
    it, and an existing results file opened for appending. Errors name the user's path."""
    check_output_path(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise OSError(f"--out {out!r}: cannot create the folder ({e.strerror})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".rwwce-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"--out {out!r} is not writable ({e.strerror})") from None
    for path in (results_path(out), report_path(out)):
        if os.path.isdir(path):
            raise ValueError(f"{path!r} is a directory; rwwce writes a file of that name there")
    results = results_path(out)
    if os.path.exists(results):
        try:
            with open(results, "ab"):
                pass
        except OSError as e:
            raise OSError(f"{results!r} is not writable ({e.strerror})") from None


def open_output(out: str) -> tuple[list[dict], str | None]:
    """Create ``out`` and check it (:func:`check_output`), then read its results file
    (:func:`load_records`): the records of the runs done before, and a note for the user."""
    check_output(out)
    return load_records(results_path(out))


def results_path(out: str) -> str:
    """The results file of the output folder ``out``."""
    return os.path.join(out, RESULTS)


def report_path(out: str) -> str:
    """The markdown report of the output folder ``out``."""
    return os.path.join(out, REPORT)


def write_report(out: str, text: str) -> None:
    """Write ``text`` (the markdown report) to ``out``'s report file atomically."""
    atomic_write(report_path(out), text)


# ------------------------------------------------------------------------- the results file
def load_records(path: str) -> tuple[list[dict], str | None]:
    """Every record of a results file, and a note when a truncated last line was dropped.

    A last line without its newline that does not parse (a write cut short by a crash) is cut off
    the file; one that is a whole record gets its newline; the note says which. Every other byte
    stays as it was. Any other line that is not an rwwce record raises :class:`ResultsFileError`
    naming the file and the line: the file is never rewritten behind the user's back.
    """
    if not os.path.exists(path):
        return [], None
    if os.path.isdir(path):
        raise ResultsFileError(f"{path!r} is a directory, expected rwwce's results file")
    with open(path, "rb") as f:
        raw = f.read()
    records = []
    lines = raw.split(b"\n")
    offset = 0
    for n, line in enumerate(lines, start=1):
        last = n == len(lines)
        if line.strip():
            try:
                rec = json.loads(line)
                ok = isinstance(rec, dict) and "key" in rec and "metrics" in rec
            except ValueError:
                rec, ok = None, False
            if not ok:
                if last and rec is None:  # no newline after it: an interrupted append
                    _truncate(path, offset)
                    return records, (
                        f"{path!r} line {n} was cut short (an interrupted write): dropped it"
                    )
                raise ResultsFileError(
                    f"{path!r} line {n} is not an rwwce result record; rwwce does not rewrite "
                    "files it did not write: move it aside or choose another --out"
                )
            records.append(rec)
        offset += len(line) + 1
    if raw.strip() and not raw.endswith(b"\n"):
        # A whole record without its newline (a crash between the two, an editor): new records
        # must start on a line of their own.
        with open(path, "ab") as f:
            f.write(b"\n")
        return records, f"{path!r} line {len(lines)} had no newline at its end: added one"
    return records, None


def _truncate(path: str, size: int) -> None:
    """Cut ``path`` to its first ``size`` bytes in place (one system call, fsynced): the file
    keeps its mode and owner, and its other bytes are not rewritten."""
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def append_records(path: str, records: Iterable[dict]) -> None:
    """Append whole lines and fsync, so a crash leaves at most one truncated last line."""
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_path(out: str, scenario: str, identity: str) -> str:
    """Where the checkpoint of job ``identity`` (a short hash of its runs) of ``scenario`` lives."""
    return os.path.join(out, f".checkpoint-{scenario}-{identity}.pt")


def save_checkpoint(path: str, keys: list[str], state: GroupState) -> None:
    """Save a job's training state atomically (a crash mid-save leaves the previous one)."""
    with atomic_path(path) as tmp:
        torch.save({"keys": keys, "state": state.to_dict()}, tmp)


def load_checkpoint(path: str, keys: list[str]) -> GroupState | None:
    """The state saved for exactly these runs, or None (no file, or another job's)."""
    if not os.path.exists(path):
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable checkpoint only costs the training it held
        return None
    if not isinstance(saved, dict) or saved.get("keys") != keys:
        return None
    return GroupState.from_dict(saved["state"])


def remove_checkpoint(path: str) -> None:
    """Remove a checkpoint whose runs are in the results file (no error when there is none)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
