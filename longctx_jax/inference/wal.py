"""The generation write-ahead log: every sampled token on disk before the next one is decoded.

    log = WriteAheadLog.open(directory, fingerprint, num_requests=n, vocab_size=256, fsync_every=1)
    log.tokens[line]            # the tokens request `line` has already produced
    log.append([(line, index, token), ...], done=[(line, "stop"), ...])
    log.close()

A WAL directory holds `meta.json` (what the log is for: the model, the requests and the options,
written once and compared on every open), `tokens.wal` (append-only fixed-size records) and
`lock` (held with `flock` while an engine uses the log, so two engines cannot share one).

A record is 20 bytes, little-endian: kind (u8: 1 = token, 2 = done) and 3 zero bytes, the request
(its 0-based line in the prompts file, u32), the token's index in the completion (u32; for a done
record the completion's length), the token (i32; for a done record 0 = stopped, 1 = length limit),
and a CRC-32 of the first 16 bytes. The sampler needs nothing more to continue: its noise is keyed
by (seed, request, position) alone (sampling.py), and the seed is in `meta.json`.

Reading checks every record. A torn tail -- a partial record, or a last record whose checksum
fails, which is what a kill -9 during an append leaves -- is dropped (the file is truncated to the
last good record before anything is appended) and never replayed. A bad record followed by good
ones is corruption, not a tear: ValueError naming the file and the record, and nothing is changed.
Records out of order (a token index that is not the next one, a token after done) are refused the
same way.

`fsync_every`: 1 fsyncs after every append (one decode step), N after every N appends, None only
at `sync()` (preemption) and `close()`. Appends are unbuffered `os.write`s, so a killed process
loses nothing it appended; fsync matters only for a machine that loses power.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import struct
import zlib
from pathlib import Path

RECORD = struct.Struct("<B3xIIi")
RECORD_BYTES = RECORD.size + 4  # + the CRC-32
TOKEN, DONE = 1, 2
FINISH_CODES = {"stop": 0, "length": 1}
FINISH_NAMES = {code: name for name, code in FINISH_CODES.items()}
FORMAT = 1


def encode(kind: int, request: int, index: int, value: int) -> bytes:
    body = RECORD.pack(kind, request, index, value)
    return body + struct.pack("<I", zlib.crc32(body))


def _valid(record: bytes) -> bool:
    return struct.unpack("<I", record[-4:])[0] == zlib.crc32(record[:-4])


@dataclasses.dataclass
class WriteAheadLog:
    """An open WAL (module docstring): `tokens[line]` and `finished[line]` ("stop" / "length")
    as read plus everything appended since."""

    directory: Path
    tokens: list[list[int]]
    finished: dict[int, str]
    fsync_every: int | None
    _fd: int
    _lock_fd: int
    _unsynced: int = 0

    @classmethod
    def open(
        cls,
        directory,
        fingerprint: dict,
        *,
        num_requests: int,
        vocab_size: int,
        fsync_every: int | None = 1,
    ) -> WriteAheadLog:
        """Opens (creating if absent) the WAL in `directory` for the work `fingerprint` names.
        ValueError naming the file when the directory holds another run's WAL, when another
        engine holds its lock, or when a record is corrupt."""
        if fsync_every is not None and (not isinstance(fsync_every, int) or fsync_every < 1):
            raise ValueError(f"wal fsync_every={fsync_every!r}: expected None or an int >= 1")
        directory = Path(directory).absolute()  # orbax saves the caches to absolute paths only
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"wal={str(directory)!r}: is a file; expected a directory")
        if not directory.parent.is_dir():
            raise ValueError(
                f"wal={str(directory)!r}: its parent {directory.parent} does not exist"
            )
        directory.mkdir(exist_ok=True)
        lock_fd = _lock(directory / "lock")
        try:
            _check_meta(directory / "meta.json", {"format": FORMAT, **fingerprint})
            path = directory / "tokens.wal"
            data = path.read_bytes() if path.exists() else b""
            tokens, finished, good = _replay(path, data, num_requests, vocab_size)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            if good < len(data):  # the torn tail of a killed append: never replayed
                os.ftruncate(fd, good)
                os.fsync(fd)
            os.lseek(fd, good, os.SEEK_SET)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(directory, tokens, finished, fsync_every, fd, lock_fd)

    def append(self, tokens=(), done=()) -> None:
        """Appends token records (line, index, token) and done records (line, "stop" | "length")
        in one write; `index` must be the request's next."""
        chunks = []
        for line, index, token in tokens:
            if index != len(self.tokens[line]) or line in self.finished:
                raise ValueError(f"wal: token {index} of request {line} is out of order")
            self.tokens[line].append(int(token))
            chunks.append(encode(TOKEN, line, index, int(token)))
        for line, reason in done:
            self.finished[line] = reason
            chunks.append(encode(DONE, line, len(self.tokens[line]), FINISH_CODES[reason]))
        if not chunks:
            return
        data = b"".join(chunks)
        while data:
            data = data[os.write(self._fd, data) :]
        self._unsynced += 1
        if self.fsync_every is not None and self._unsynced >= self.fsync_every:
            self.sync()

    def sync(self) -> None:
        os.fsync(self._fd)
        self._unsynced = 0

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            os.close(self._lock_fd)
            self._fd = self._lock_fd = -1

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ValueError(
            f"{path}: another engine (pid {holder}) is using this WAL; one WAL serves one engine"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _check_meta(path: Path, expected: dict) -> None:
    """Writes `meta.json` for a new WAL; for an existing one, ValueError naming the first field
    that differs (the WAL belongs to another model, prompt set or option)."""
    expected = json.loads(json.dumps(expected))  # tuples -> lists, as read back
    if not path.exists():
        if (path.parent / "tokens.wal").exists():
            raise ValueError(f"{path}: missing, but {path.parent / 'tokens.wal'} exists")
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
        os.replace(temp, path)
        return
    try:
        found = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable ({error})") from None
    for key in sorted(set(expected) | set(found)):
        if found.get(key) != expected.get(key):
            raise ValueError(
                f"{path}: this WAL was written for {key}={found.get(key)!r}, this command has "
                f"{key}={expected.get(key)!r}; use another --wal directory (nothing was changed)"
            )


def _replay(path: Path, data: bytes, num_requests: int, vocab_size: int):
    """(tokens, finished, bytes of good records) of a WAL file's contents (module docstring)."""
    tokens: list[list[int]] = [[] for _ in range(num_requests)]
    finished: dict[int, str] = {}
    count = len(data) // RECORD_BYTES
    for n in range(count):
        record = data[n * RECORD_BYTES : (n + 1) * RECORD_BYTES]
        where = f"{path}: record {n} (byte {n * RECORD_BYTES})"
        if not _valid(record):
            if n == count - 1:  # the last record, torn by a killed append
                return tokens, finished, n * RECORD_BYTES
            raise ValueError(
                f"{where}: checksum mismatch; the WAL is corrupt (nothing was changed)"
            )
        kind, line, index, value = RECORD.unpack(record[:-4])
        if line >= num_requests:
            raise ValueError(f"{where}: request {line}, but the prompts file has {num_requests}")
        if line in finished:
            raise ValueError(f"{where}: request {line} has a record after its done record")
        if kind == TOKEN:
            if index != len(tokens[line]) or not 0 <= value < vocab_size:
                raise ValueError(
                    f"{where}: token {index} = {value} of request {line}, expected token "
                    f"{len(tokens[line])} in [0, {vocab_size})"
                )
            tokens[line].append(value)
        elif kind == DONE and index == len(tokens[line]) and value in FINISH_NAMES:
            finished[line] = FINISH_NAMES[value]
        else:
            raise ValueError(f"{where}: not a token or done record of request {line}")
    return tokens, finished, count * RECORD_BYTES
