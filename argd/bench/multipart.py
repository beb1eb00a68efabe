"""A streamed multipart/form-data upload body of a chosen size, for the upload-memory benchmark."""

from __future__ import annotations

import hashlib
import io
import itertools
import random
import struct
import time
import uuid
import zlib
from collections.abc import Iterator

import numpy as np

MIB = 1024 * 1024


class UploadBody:
    """A multipart/form-data body with one file part, produced chunk by chunk, with its exact length known.

    `payload="random"`: pseudo-random bytes (one MiB block repeated, with no zip signature in it, so
    validation rejects the file without reading it). `payload="npz"`: a valid `.npz` (an uncompressed zip of
    `x` uint8 [N,32,32,3] and `y` int64 [N]) written as a stream, its CRCs in data descriptors after each
    member. Iterating yields the body; afterwards `sha256` holds the digest of the file part.
    """

    CHUNK = MIB
    IMAGE_SHAPE = (32, 32, 3)

    def __init__(self, size_bytes: int, payload: str = "random", seed: int = 0):
        if payload not in ("random", "npz"):
            raise ValueError(f"payload must be 'random' or 'npz', got {payload!r}")
        if size_bytes < 1:
            raise ValueError(f"upload size must be positive, got {size_bytes}")
        self.payload = payload
        self.boundary = f"argd-bench-{uuid.uuid4().hex}"
        self._block = random.Random(seed).randbytes(self.CHUNK).replace(b"PK", b"pk")
        self.images = 0
        self._members: list[tuple[str, bytes, int]] = []  # (name, .npy header, data bytes after it)
        if payload == "npz":
            self.images = self._image_count(size_bytes)
            shapes = (
                ("x.npy", "|u1", (self.images, *self.IMAGE_SHAPE), 1),
                ("y.npy", "<i8", (self.images,), 8),
            )
            for name, descr, shape, itemsize in shapes:
                buffer = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    buffer, {"descr": descr, "fortran_order": False, "shape": shape}
                )
                self._members.append((name, buffer.getvalue(), int(np.prod(shape)) * itemsize))
            local = sum(30 + len(name) + len(header) + length + 16 for name, header, length in self._members)
            self.file_size = local + sum(46 + len(name) for name, _, _ in self._members) + 22
        else:
            self.file_size = size_bytes
        filename = f"bench-{size_bytes // MIB}mib.npz"
        self._head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.content_length = len(self._head) + self.file_size + len(self._tail)
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self.sha256: str | None = None
        # A pause before the closing boundary: the server then holds the whole part on disk, waiting for the
        # end of the form, long enough for a sampler to see it (small uploads are otherwise gone too fast).
        self.pause_before_tail_s = 0.0

    def _image_count(self, size_bytes: int) -> int:
        from argd.core.data import MAX_IMAGES, MAX_TOTAL_BYTES  # imports torch: only for this payload

        per_image = int(np.prod(self.IMAGE_SHAPE)) + 8
        n = max(1, (size_bytes - 512) // per_image)
        if n > MAX_IMAGES or n * per_image > MAX_TOTAL_BYTES:
            raise ValueError(
                f"an .npz of {size_bytes / MIB:.0f} MiB exceeds the engine's dataset limits "
                f"({MAX_IMAGES} images of 32x32x3, {MAX_TOTAL_BYTES} bytes); use the random payload "
                "for larger uploads"
            )
        return n

    def _repeat(self, length: int) -> Iterator[bytes]:
        while length > 0:
            take = min(length, len(self._block))
            yield self._block if take == len(self._block) else self._block[:take]
            length -= take

    def _npz_stream(self) -> Iterator[bytes]:
        entries = []
        offset = 0
        for name, header, length in self._members:
            encoded = name.encode()
            # Local header: version 2.0, flag bit 3 (CRC and sizes follow the data), stored, date 1980-01-01.
            local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0x08, 0, 0, 0x21, 0, 0, 0, len(encoded), 0)
            yield local + encoded
            # y: labels 0..9 in turn (at most 1.6 MB); x: the repeated block as pixels
            body = (
                [(np.arange(self.images, dtype="<i8") % 10).tobytes()]
                if name == "y.npy"
                else self._repeat(length)
            )
            crc, size = 0, 0
            for chunk in itertools.chain([header], body):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
                yield chunk
            yield struct.pack("<IIII", 0x08074B50, crc, size, size)
            entries.append((encoded, crc, size, offset))
            offset += len(local) + len(encoded) + size + 16
        central = b"".join(
            struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0x08, 0, 0, 0x21, crc, size, size, len(encoded),
                0, 0, 0, 0, 0, local_offset,
            ) + encoded
            for encoded, crc, size, local_offset in entries
        )  # fmt: skip
        yield central
        yield struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), offset, 0)

    def __iter__(self) -> Iterator[bytes]:
        hasher = hashlib.sha256()
        yield self._head
        sent = 0
        for chunk in self._npz_stream() if self.payload == "npz" else self._repeat(self.file_size):
            hasher.update(chunk)
            sent += len(chunk)
            yield chunk
        if sent != self.file_size:
            raise RuntimeError(f"the upload generator produced {sent} bytes, expected {self.file_size}")
        self.sha256 = hasher.hexdigest()
        if self.pause_before_tail_s > 0:
            time.sleep(self.pause_before_tail_s)
        yield self._tail
