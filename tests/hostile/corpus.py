"""The hostile-file corpus: every file is made here, by code, so the corpus is reviewable and needs no
binary blobs in the repository. `python -m tests.hostile.corpus DIR` writes them to DIR.

Each entry is a file an attacker could upload as a model or a dataset; none of them may execute anything,
leave anything on disk, or get anything but a 4xx naming the problem. The pickles, if ever unpickled
without `weights_only`, would create the file named by `MARKER` (the tests check that it never appears).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MARKER = Path(os.environ.get("ARGD_HOSTILE_MARKER", "/tmp/argd-hostile-executed"))


@dataclass(frozen=True)
class Hostile:
    name: str
    kind: str  # "model" (with a valid spec) or "dataset"
    filename: str
    make: Callable[[], bytes]


# --- datasets ---------------------------------------------------------------------------------------------


def _zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_bomb_ratio() -> bytes:
    """One 'image' of 256 MiB of zeros that deflates to a few hundred KiB (ratio ~1000)."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("0/bomb.png", "w", force_zip64=True) as member,
    ):
        chunk = bytes(1 << 20)
        for _ in range(256):
            member.write(chunk)
    return buffer.getvalue()


def zip_bomb_nested() -> bytes:
    """Zips inside zips (each level a class folder member), the innermost a deflated block of zeros."""
    inner = _zip([("0/zeros.png", bytes(8 << 20))])
    for level in range(4):
        inner = _zip([(f"{level}/inner.zip", inner)])
    return inner


def zip_many_entries() -> bytes:
    """20,000 empty entries in class folders: work per entry, no content."""
    return _zip([(f"{i % 10}/{i}.png", b"") for i in range(20_000)], zipfile.ZIP_STORED)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_decompression_bomb() -> bytes:
    """A PNG whose header declares 100,000 x 100,000 pixels (10 G) with a tiny compressed body."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
    png += _png_chunk(b"IDAT", zlib.compress(bytes(1 << 16), 9)) + _png_chunk(b"IEND", b"")
    return _zip([("0/bomb.png", png), ("1/bomb.png", png)])


def _npz(arrays: dict[str, np.ndarray], allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays) if not allow_pickle else np.savez(buffer, allow_pickle=True, **arrays)
    return buffer.getvalue()


def npz_object_array() -> bytes:
    """`x` as an object array: loading it needs pickle, which would run the payload."""
    x = np.empty(2, dtype=object)
    x[0], x[1] = _Payload(), _Payload()
    return _npz({"x": x, "y": np.zeros(2, dtype=np.int64)}, allow_pickle=True)


def npz_huge_shape() -> bytes:
    """`x.npy` declaring [10^9, 28, 28] uint8 (784 GB) with a few bytes of data."""
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000, 28, 28), }"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(64)
    y = io.BytesIO()
    np.save(y, np.zeros(1_000_000_000 // 10**6, dtype=np.int64))
    return _zip([("x.npy", npy), ("y.npy", y.getvalue())], zipfile.ZIP_STORED)


def npz_truncated() -> bytes:
    data = _npz({"x": np.zeros((64, 28, 28), np.uint8), "y": np.zeros(64, np.int64)})
    return data[: len(data) // 2]


# --- safetensors ----------------------------------------------------------------------------------------


def _safetensors(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def st_header_past_end() -> bytes:
    return struct.pack("<Q", 10**9) + b'{"a": 1}'


def st_overlapping_offsets() -> bytes:
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    return _safetensors(json.dumps(header).encode(), bytes(24))


def st_dtype_size_mismatch() -> bytes:
    header = {"a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 8]}}
    return _safetensors(json.dumps(header).encode(), bytes(8))


def st_non_utf8_header() -> bytes:
    return _safetensors(b'{"\xff\xfe\xfa": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', bytes(4))


# --- pickles --------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs code that leaves MARKER behind."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(MARKER)!r}, 'w').write('executed')",))


def _torch_zip(data_pkl: bytes) -> bytes:
    """A torch.save-style zip archive whose data.pkl is `data_pkl`."""
    return _zip(
        [("archive/data.pkl", data_pkl), ("archive/version", b"3\n"), ("archive/byteorder", b"little")],
        zipfile.ZIP_STORED,
    )


def pickle_reduce_exec() -> bytes:
    """A checkpoint whose state dict holds an object with `__reduce__` -> exec."""
    return _torch_zip(pickle.dumps({"state_dict": {"weight": _Payload()}}, protocol=2))


def pickle_gadget_global() -> bytes:
    """Raw opcodes: GLOBAL os.system, then REDUCE with a shell command (a classic gadget)."""
    command = f"touch {MARKER}".encode()
    raw = b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(command)) + command + b"\x85R."
    return _torch_zip(raw)


def pickle_reduce_on_allowed_type() -> bytes:
    """`collections.OrderedDict` (allowed) rebuilt through REDUCE with an item built by `builtins.eval`."""
    expression = f"open({str(MARKER)!r}, 'w')".encode()
    evil = b"cbuiltins\neval\nX" + struct.pack("<I", len(expression)) + expression + b"\x85R"
    raw = b"\x80\x02ccollections\nOrderedDict\n]((X\x01\x00\x00\x00w" + evil + b"t" + b"a\x85R."
    return _torch_zip(raw)


def torchscript_archive() -> bytes:
    import torch

    module = torch.jit.script(torch.nn.Linear(2, 2))
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


def torch_export_archive() -> bytes:
    import torch

    program = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


CORPUS = [
    Hostile("zip-bomb-ratio", "dataset", "bomb.zip", zip_bomb_ratio),
    Hostile("zip-bomb-nested", "dataset", "nested.zip", zip_bomb_nested),
    Hostile("zip-many-entries", "dataset", "many.zip", zip_many_entries),
    Hostile("png-decompression-bomb", "dataset", "png-bomb.zip", png_decompression_bomb),
    Hostile("npz-object-array", "dataset", "object.npz", npz_object_array),
    Hostile("npz-huge-shape", "dataset", "huge.npz", npz_huge_shape),
    Hostile("npz-truncated", "dataset", "truncated.npz", npz_truncated),
    Hostile("safetensors-header-past-end", "model", "past-end.safetensors", st_header_past_end),
    Hostile("safetensors-overlapping-offsets", "model", "overlap.safetensors", st_overlapping_offsets),
    Hostile("safetensors-dtype-size-mismatch", "model", "mismatch.safetensors", st_dtype_size_mismatch),
    Hostile("safetensors-non-utf8-header", "model", "non-utf8.safetensors", st_non_utf8_header),
    Hostile("pickle-reduce-exec", "model", "reduce.pt", pickle_reduce_exec),
    Hostile("pickle-gadget-os-system", "model", "gadget.pt", pickle_gadget_global),
    Hostile("pickle-reduce-on-allowed-type", "model", "ordereddict.pt", pickle_reduce_on_allowed_type),
    Hostile("torchscript-archive", "model", "scripted.pt", torchscript_archive),
    Hostile("torch-export-archive", "model", "exported.pt", torch_export_archive),
]


def write_corpus(directory: Path) -> dict[str, Path]:
    """Every corpus file under `directory`; {entry name: path}."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for entry in CORPUS:
        path = directory / f"{entry.name}-{entry.filename}"
        path.write_bytes(entry.make())
        paths[entry.name] = path
    return paths


if __name__ == "__main__":
    for name, path in write_corpus(Path(sys.argv[1])).items():
        print(f"{name}: {path} ({path.stat().st_size} bytes)")
