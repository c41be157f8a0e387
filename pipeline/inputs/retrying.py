"""A random-access file whose every read is retried on its own through outages, for readers that take a
Python file (pyarrow's Parquet reader) and would otherwise lose their place when one request fails."""

from __future__ import annotations

import io

import pyarrow as pa

from ..retry import Retry


class RetryingFile(io.RawIOBase):
    """`read`, `seek` and `read_at` over a pyarrow input file; each read is one retried ranged request."""

    def __init__(self, file: pa.NativeFile, uri: str, retry: Retry):
        super().__init__()
        self.file, self.uri, self.retry = file, uri, retry
        self.size = file.size()
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(base + offset, 0)
        return self.position

    def read_at(self, size: int, offset: int) -> bytes:
        size = max(min(size, self.size - offset), 0)
        if not size:
            return b""
        return self.retry.call(f"reading {self.uri}", lambda: self.file.read_at(size, offset))

    def read(self, size: int = -1) -> bytes:
        data = self.read_at(self.size - self.position if size is None or size < 0 else size, self.position)
        self.position += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
