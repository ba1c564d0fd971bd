"""Every JSON file virnucpro reads back goes through here: bounded, never blocking, one line when bad.

A classifier description, a run file, a state record or a manifest is a small regular file. Read
naively, a FIFO in its place blocks the command for ever (holding the workdir's lock), a link to
/dev/zero or a sparse file of gigabytes fills the memory, and a few thousand nested brackets
overflow the parser's recursion. So a file is opened without blocking and refused unless fstat
calls it a regular file; it is read only up to a cap (an argument: each caller knows what its file
holds); its nesting is measured before it is parsed. Symbolic links are followed: a classifier or a
models folder linked from a shared place is ordinary.
"""

from __future__ import annotations

import json
import os
import re
import stat

from .errors import InputError

DEFAULT_MAX_BYTES = 256 << 20  # far above any run file the tool writes (a state.json of 100,000s of shards)
DEFAULT_MAX_DEPTH = 32  # the deepest file the tool writes nests 6 levels

_NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class JsonFileError(InputError, ValueError):
    """A file that cannot be a JSON document of its kind: not a regular file, too large, not UTF-8,
    not JSON or nested too deep. A ValueError, so a caller that treats unparsable JSON as damaged
    does the same with these; `reason` is the message without the path, for callers that say more;
    `too_large`: refused for its size alone."""

    def __init__(self, path, reason: str, too_large: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.too_large = str(path), reason, too_large


def not_regular_kind(mode: int) -> str | None:
    """What a file of this st_mode is when it is not a regular file ("a FIFO"); None for a regular one."""
    return next((kind for is_kind, kind in _NOT_REGULAR if is_kind(mode)), None if stat.S_ISREG(mode) else "a special file")


def read_file_bytes(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. Opened with O_NONBLOCK, so a FIFO is
    refused at once rather than waited on. FileNotFoundError (and other errors of opening it, such
    as PermissionError) pass through; anything else is a JsonFileError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        kind = not_regular_kind(info.st_mode)
        if kind:
            raise JsonFileError(path, f"is {kind}, not a regular file")
        if info.st_size > max_bytes:
            raise JsonFileError(path, f"holds {info.st_size:,} bytes, more than the {max_bytes:,} a file of its kind "
                                      "may hold, so it is not one", too_large=True)
        parts, size = [], 0
        while size <= max_bytes:  # a file growing while it is read stops at the cap too
            part = os.read(fd, min(max_bytes + 1 - size, 1 << 20))
            if not part:
                break
            parts.append(part)
            size += len(part)
    finally:
        os.close(fd)
    if size > max_bytes:
        raise JsonFileError(path, f"grew past {max_bytes:,} bytes while it was read; it is not a file of its kind",
                            too_large=True)
    return b"".join(parts)


def read_json(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH):
    """The JSON document in a regular file (see read_file_bytes), nested at most `max_depth` deep."""
    return parse_json(read_file_bytes(path, max_bytes), path, max_depth)


def parse_json(data: bytes | str, where, max_depth: int = DEFAULT_MAX_DEPTH):
    """A JSON document held in memory (read from `where`, which errors name)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonFileError(where, f"not UTF-8 text (byte {exc.start}), so not JSON") from None
    if nesting_exceeds(data, max_depth):
        raise JsonFileError(where, f"nested deeper than {max_depth} levels, which no file of its kind is")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise JsonFileError(where, f"not JSON, or cut short ({exc})") from None


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def nesting_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than `limit` (json.loads recurses once per level)."""
    if text.count("[") + text.count("{") <= limit:  # nearly every file: no scan
        return False
    depth = 0
    for bracket in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > limit:
            return True
    return False
