"""Every file virnucpro writes goes through here: temp file in the same folder, fsync, rename.

A reader therefore sees either the previous complete file or the new complete file, never a
half-written one, whatever kills the writer (SIGKILL, node failure, full disk).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputError, StateError


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_lock(path: Path):
    """A lock file (created if needed, never unlinked) opened for flock without following a
    symbolic link: a planted link would make the tool create or lock a file outside its folder."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise StateError(f"{path}: a symbolic link where virnucpro keeps a lock file; it never opens one: "
                         "remove it and run again") from None
    return os.fdopen(fd, "a+")


def _linked_folder_error(link: str) -> StateError:
    return StateError(f"{link}: a symbolic link inside the workdir; virnucpro never writes or deletes through "
                      "one (what it points to is not the run's); replace it with a real folder, or use a new "
                      "--workdir (nothing was changed)")


def refuse_linked_folders(folder: Path) -> None:
    """Refuse `folder` when it, or anything below it, is a symbolic link to a folder (or to nothing):
    writing or deleting inside such a link would reach files outside the workdir. Walks without
    following links; lists folders but stats only the links themselves."""
    if Path(folder).is_symlink() and not Path(folder).is_file():
        raise _linked_folder_error(str(folder))
    pending = [str(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        if not entry.is_file():  # a link to a file is replaced by a rename, never written through
                            raise _linked_folder_error(entry.path)
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
        except (FileNotFoundError, NotADirectoryError):
            continue


def remove_stale_temp_files(paths) -> int:
    """Remove the temp files a killed writer left beside these files or anywhere inside these
    folders; returns how many.  A temp file of a large shard can hold gigabytes, so the next owner
    of the shard clears them.  Only for paths that no live process is writing. Refuses (before
    removing anything) a folder to walk, or the folder of a file, that is or holds a symbolic link."""
    paths = list(map(Path, paths))
    for path in paths:
        if path.is_dir() or path.is_symlink():
            refuse_linked_folders(path)
        elif path.parent.is_symlink():
            raise _linked_folder_error(str(path.parent))
    removed = 0
    for path in paths:
        if path.is_dir():
            found = path.rglob(".*.tmp")
        else:
            found = path.parent.glob(f".{glob.escape(path.name)}.*.tmp")
        for stale in list(found):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
                removed += 1
    return removed


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def make_temp_file(target: Path) -> tuple[int, Path]:
    """An open temp file beside `target` (hidden, `.tmp`, so a killed writer's leftovers are
    recognised), with the permissions a plain open would give; one-line error if impossible."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(exc.errno, f"{target}: cannot create the file ({exc.strerror or exc}); "
                                     "choose a location that exists and is writable") from None
    os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are shared with the lab
    return fd, Path(tmp_name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`.

    On any exception the temp file is removed and `path` is left exactly as it was.
    """
    target = Path(path)
    fd, tmp = make_temp_file(target)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, OutputError) and _is_out_of_space(exc):
            raise OutputError(exc.errno, f"{target}: {exc.strerror or 'write failed'} while writing it; free space "
                                         "(or raise the limit) and run the same command again (the previous "
                                         "version of the file is untouched)") from None
        raise


_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _is_out_of_space(exc: OSError) -> bool:
    # h5py reports a failed write as an OSError without errno, naming it only in the message
    return exc.errno in _OUT_OF_SPACE or any(os.strerror(e) in str(exc) for e in _OUT_OF_SPACE)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """Open a temp file for writing that replaces `path` atomically when the block succeeds."""
    binary = "b" in mode
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if binary else encoding, newline=None if binary else "") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)
