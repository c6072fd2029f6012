"""A bounded, fsync'd, append-only disk buffer for usage events the broker could not take.

Blocking file I/O: call it from a worker thread, never from the event loop.

Layout: numbered segment files in one directory. A record is
``length (4 bytes, big-endian) | crc32 (4 bytes) | payload``; a batch is appended and fsync'd
before ``append`` returns, so an event the gateway has spooled survives a crash. A torn record
at the end of the newest segment (a crash mid-write) is detected by its length or checksum and
ignored. Segments are replayed oldest first and deleted only after the broker acknowledged every
record in them; a crash in between replays the segment again, and the pricer stores each
event id once.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

_HEADER = struct.Struct(">II")
SEGMENT_BYTES = 16 * 1024 * 1024


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes
        self._bytes = sum(p.stat().st_size for p in self._segments())

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _segments(self) -> list[Path]:
        return sorted(self._dir.glob("segment-*.log"))

    def pending_segments(self) -> list[Path]:
        return self._segments()

    def is_empty(self) -> bool:
        return not self._segments()

    def append(self, payloads: Iterable[bytes]) -> int:
        """Append records durably (fsync), in order, as many as fit under the byte limit; returns
        how many were written (the rest did not fit)."""
        records: list[bytes] = []
        room = self._max_bytes - self._bytes
        for p in payloads:
            record = _HEADER.pack(len(p), zlib.crc32(p)) + p
            if len(record) > room:
                break
            records.append(record)
            room -= len(record)
        data = b"".join(records)
        if not data:
            return 0
        segments = self._segments()
        target = segments[-1] if segments and segments[-1].stat().st_size < SEGMENT_BYTES else self._new_segment(segments)
        with target.open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._bytes += len(data)
        return len(records)

    def _new_segment(self, segments: list[Path]) -> Path:
        number = int(segments[-1].stem.split("-")[1]) + 1 if segments else 1
        path = self._dir / f"segment-{number:012d}.log"
        path.touch()
        self._fsync_dir()
        return path

    def seal(self) -> Path | None:
        """The oldest segment, closed for appends (a new one takes later appends), to replay."""
        segments = self._segments()
        if not segments:
            return None
        oldest = segments[0]
        if oldest == segments[-1] and oldest.stat().st_size > 0:
            self._new_segment(segments)
        return oldest

    @staticmethod
    def read(segment: Path) -> list[bytes]:
        """Every intact record of a segment, in order; stops at a torn or corrupt tail."""
        data = segment.read_bytes()
        out, pos = [], 0
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            out.append(payload)
            pos += _HEADER.size + length
        return out

    def remove(self, segment: Path) -> None:
        size = segment.stat().st_size
        segment.unlink()
        self._fsync_dir()
        self._bytes -= size

    def _fsync_dir(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
