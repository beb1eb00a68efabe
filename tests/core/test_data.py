"""Dataset intake: npz and zip uploads built in tmp_path, IDX files, and the refusals that keep them safe."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from argd.core.data import (
    ImageData,
    convert_channels,
    load_dataset,
    load_dataset_with_info,
    load_fashion_mnist,
    read_idx_images,
    read_idx_labels,
    save_npz,
)
from argd.core.errors import InvalidDataset

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)  # kept verbatim: writestr(str) would not keep "../" or "/" names
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return path


def _rng_images(n: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, *shape), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------- npz


def test_npz_grey_images(tmp_path: Path) -> None:
    x, y = _rng_images(5, 12, 12), np.array([0, 1, 2, 1, 0], dtype=np.int32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data, info = load_dataset_with_info(tmp_path / "d.npz", image_size=12, num_classes=3)
    assert data.x.shape == (5, 1, 12, 12) and data.x.dtype == torch.uint8
    assert torch.equal(data.x[:, 0], torch.from_numpy(x))
    assert data.y.tolist() == [0, 1, 2, 1, 0] and data.y.dtype == torch.int64
    assert (info.count, info.shape, info.classes, info.class_counts) == (
        5,
        (1, 12, 12),
        ["0", "1", "2"],
        [2, 2, 1],
    )


def test_npz_colour_images_channels_last_and_conversion(tmp_path: Path) -> None:
    x = _rng_images(4, 8, 8, 3)
    np.savez_compressed(tmp_path / "c.npz", x=x, y=np.arange(4))
    data = load_dataset(tmp_path / "c.npz")
    assert data.x.shape == (4, 3, 8, 8)
    assert torch.equal(data.x.permute(0, 2, 3, 1), torch.from_numpy(x))
    grey = load_dataset(tmp_path / "c.npz", in_channels=1)
    expected = np.asarray(Image.fromarray(x[0]).convert("L"))  # the same luma weights as PIL
    assert np.abs(grey.x[0, 0].numpy().astype(int) - expected.astype(int)).max() <= 1


def test_npz_is_recognised_without_its_suffix(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=_rng_images(2, 8, 8), y=np.array([1, 0]))
    stored = tmp_path / "sha256-abc"
    stored.write_bytes((tmp_path / "d.npz").read_bytes())
    assert len(load_dataset(stored)) == 2


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    labels = np.empty(2, dtype=object)
    labels[:] = [0, 1]
    np.savez(tmp_path / "o.npz", x=_rng_images(2, 8, 8), y=labels)
    with pytest.raises(InvalidDataset, match="object array"):
        load_dataset(tmp_path / "o.npz")


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((3, 8, 8), np.float32), np.zeros(3, np.int64), "uint8"),
        (np.zeros((3, 3, 8, 8), np.uint8)[:, :, :, :2].repeat(4, 3), np.zeros(3, np.int64), "channels-first"),
        (np.zeros((3, 8), np.uint8), np.zeros(3, np.int64), r"\[N,H,W\]"),
        (np.zeros((3, 8, 8), np.uint8), np.zeros(4, np.int64), "3 images but y has 4"),
        (np.zeros((3, 8, 8), np.uint8), np.zeros(3, np.float32), "integer"),
        (np.zeros((0, 8, 8), np.uint8), np.zeros(0, np.int64), "empty"),
        (np.zeros((3, 8, 8), np.uint8), np.array([0, -1, 2]), "outside"),
    ],
)
def test_npz_bad_arrays(tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str) -> None:
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    with pytest.raises(InvalidDataset, match=message):
        load_dataset(tmp_path / "bad.npz")


def test_labels_out_of_range_for_the_model(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=_rng_images(3, 8, 8), y=np.array([0, 9, 10]))
    with pytest.raises(InvalidDataset, match=r"1 label\(s\) outside \[0, 10\), e.g. 10"):
        load_dataset(tmp_path / "d.npz", num_classes=10)


def test_npz_missing_array_and_wrong_size(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=_rng_images(2, 8, 8), y=np.array([0, 1]))
    with pytest.raises(InvalidDataset, match="missing x"):
        load_dataset(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", x=_rng_images(2, 8, 8), y=np.array([0, 1]))
    with pytest.raises(InvalidDataset, match="8x8 but the model takes 16x16"):
        load_dataset(tmp_path / "e.npz", image_size=16)


def test_npz_limits_are_checked_from_the_header(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "big.npz", x=np.zeros((50, 64, 64), np.uint8), y=np.zeros(50, np.int64))
    with pytest.raises(InvalidDataset, match="limit of 10"):
        load_dataset(tmp_path / "big.npz", max_images=10)
    with pytest.raises(InvalidDataset, match="over the limit"):
        load_dataset(tmp_path / "big.npz", max_bytes=100_000)
    with pytest.raises(InvalidDataset, match="64x64 pixels, over the per-image limit of 1024"):
        load_dataset(tmp_path / "big.npz", max_pixels=32 * 32)


def test_save_npz_round_trip(tmp_path: Path) -> None:
    data = ImageData(torch.from_numpy(_rng_images(3, 2, 6, 6)), torch.tensor([2, 0, 1]))
    save_npz(data, tmp_path / "out.npz")
    back = load_dataset(tmp_path / "out.npz")
    assert torch.equal(back.x, data.x) and torch.equal(back.y, data.y)


def test_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(InvalidDataset, match="unsupported dataset file"):
        load_dataset(tmp_path / "x.bin")
    with pytest.raises(InvalidDataset, match="not found"):
        load_dataset(tmp_path / "nope.npz")


# ---------------------------------------------------------------------------------------------------- zip


def test_zip_of_class_folders_under_a_root(tmp_path: Path) -> None:
    images = _rng_images(5, 10, 10, 3)
    members = {
        "clean/cat/a.png": _png(images[0]),
        "clean/cat/b.png": _png(images[1]),
        "clean/dog/c.png": _png(images[2]),
        "clean/ant/d.png": _png(images[3]),
        "clean/ant/e.png": _png(images[4]),
        "__MACOSX/clean/cat/._a.png": b"junk",
        "clean/.DS_Store": b"junk",
    }
    path = _zip(tmp_path / "set.zip", members)
    data, info = load_dataset_with_info(path, image_size=10)
    assert info.classes == ["ant", "cat", "dog"] and info.class_counts == [2, 2, 1]
    assert data.y.tolist() == [0, 0, 1, 1, 2]  # members sorted by name, classes sorted to labels
    assert torch.equal(data.x[0].permute(1, 2, 0), torch.from_numpy(images[3]))
    assert info.shape == (3, 10, 10) and info.format == "zip"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.zip"]  # nothing extracted


def test_zip_numeric_class_folders_keep_their_labels(tmp_path: Path) -> None:
    grey = _rng_images(3, 8, 8)
    path = _zip(
        tmp_path / "p.zip", {"0/a.png": _png(grey[0]), "2/b.png": _png(grey[1]), "10/c.png": _png(grey[2])}
    )
    data, info = load_dataset_with_info(path, num_classes=11)
    assert data.y.tolist() == [0, 10, 2]  # "10/c.png" sorts before "2/b.png"
    assert info.classes == ["0", "2", "10"] and info.labels == [0, 2, 10]
    assert data.x.shape == (3, 1, 8, 8)
    with pytest.raises(InvalidDataset, match="outside"):
        load_dataset(path, num_classes=10)


def test_zip_mixed_modes_and_channel_request(tmp_path: Path) -> None:
    members = {"a/g.png": _png(_rng_images(1, 8, 8)[0]), "b/c.jpg": _jpeg(_rng_images(1, 8, 8, 3)[0])}
    path = _zip(tmp_path / "m.zip", members)
    assert load_dataset(path).x.shape == (2, 3, 8, 8)  # any colour image makes the set RGB
    assert load_dataset(path, in_channels=1).x.shape == (2, 1, 8, 8)


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["../evil.png", "cls/../../evil.png", "/abs/evil.png", "C:/evil.png"])
def test_zip_with_escaping_paths_is_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = _zip(
        work / "evil.zip", {"cls/ok.png": _png(_rng_images(1, 8, 8)[0]), name: _png(_rng_images(1, 8, 8)[0])}
    )
    with pytest.raises(InvalidDataset, match="unsafe archive member"):
        load_dataset(path)
    assert not (tmp_path / "evil.png").exists()
    assert sorted(p.name for p in work.iterdir()) == ["evil.zip"]


def test_zip_with_a_symlink_is_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("cls/link.png")
    link.external_attr = (0o120777 << 16) | 0x20
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("cls/ok.png", _png(_rng_images(1, 8, 8)[0]))
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(InvalidDataset, match="symbolic link"):
        load_dataset(path)


def test_zip_bomb_is_refused_from_the_declared_size(tmp_path: Path) -> None:
    path = _zip(tmp_path / "bomb.zip", {"cls/a.png": b"\x00" * (4 << 20)})
    assert path.stat().st_size < 64 << 10  # 4 MiB of zeros squeezes to a few KiB
    with pytest.raises(InvalidDataset, match="unpacks to 4194304 bytes, over the limit of 1048576"):
        load_dataset(path, max_bytes=1 << 20)


def test_oversized_image_is_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path / "big.zip", {"cls/a.png": _png(np.zeros((600, 600), np.uint8))})
    with pytest.raises(InvalidDataset, match="600x600 = 360000 pixels, over the limit of 262144"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("side", "message"),
    [
        (2_000, r"2000x2000 = 4000000 pixels, over the limit"),  # our header check
        (100_000, r"too many pixels.*10000000000 pixels"),  # PIL's, far beyond any limit
    ],
)
def test_pixel_bomb_header_is_refused_before_decoding(tmp_path: Path, side: int, message: str) -> None:
    """A PNG whose header claims a huge size over 4x4 pixels of data: decoding would fail differently, so
    the size message proves the check came from the header alone."""
    png = bytearray(_png(np.zeros((4, 4), np.uint8)))
    ihdr = 8  # after the signature: length (4), b"IHDR" (4), width, height, ...
    png[ihdr + 8 : ihdr + 16] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(png[ihdr + 4 : ihdr + 8 + 13]))
    png[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    path = _zip(tmp_path / "claims.zip", {"cls/a.png": bytes(png)})
    with pytest.raises(InvalidDataset, match=message):
        load_dataset(path)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"a.png": b""}, "class folders"),
        ({"cls/a.png": b"", "x/y/z/b.png": b""}, "class folders"),
        ({"cls/readme.txt": b"hi"}, "unsupported file 'cls/readme.txt'"),
        ({"cls/a.png": b"not an image"}, "not a readable PNG or JPEG"),
        ({"cls/": b""}, "no images"),
    ],
)
def test_zip_layout_errors(tmp_path: Path, members: dict[str, bytes], message: str) -> None:
    with pytest.raises(InvalidDataset, match=message):
        load_dataset(_zip(tmp_path / "l.zip", members))


def test_zip_images_of_different_sizes(tmp_path: Path) -> None:
    members = {"a/1.png": _png(np.zeros((8, 8), np.uint8)), "a/2.png": _png(np.zeros((9, 8), np.uint8))}
    with pytest.raises(InvalidDataset, match="differ in size"):
        load_dataset(_zip(tmp_path / "s.zip", members))


def test_zip_gif_is_refused_even_with_a_png_name(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="GIF")
    with pytest.raises(InvalidDataset, match="not a readable PNG or JPEG"):
        load_dataset(_zip(tmp_path / "g.zip", {"a/1.png": buffer.getvalue()}))


# ------------------------------------------------------------------------------------------ channels, IDX


def test_convert_channels() -> None:
    rgba = np.array([[[[10, 20, 30, 40]]]], dtype=np.uint8)
    assert convert_channels(rgba, 3).tolist() == [[[[10, 20, 30]]]]
    assert convert_channels(rgba, 1).tolist() == [[[[(10 * 299 + 20 * 587 + 30 * 114 + 500) // 1000]]]]
    grey = np.array([[[[7]]]], dtype=np.uint8)
    assert convert_channels(grey, 3).tolist() == [[[[7, 7, 7]]]]
    assert convert_channels(grey, 4).tolist() == [[[[7, 7, 7, 255]]]]


def _idx(path: Path, array: np.ndarray, *, gz: bool = True, cut: int = 0) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    payload = payload[: len(payload) - cut]
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def test_idx_reader_on_small_files(tmp_path: Path) -> None:
    images = _rng_images(3, 4, 5)
    assert np.array_equal(read_idx_images(_idx(tmp_path / "i.gz", images)), images)
    assert np.array_equal(read_idx_images(_idx(tmp_path / "i.raw", images, gz=False)), images)
    labels = read_idx_labels(_idx(tmp_path / "l.gz", np.array([3, 1, 4])))
    assert labels.tolist() == [3, 1, 4] and labels.dtype == np.int64
    with pytest.raises(InvalidDataset, match="header says 60"):
        read_idx_images(_idx(tmp_path / "short.gz", images, cut=5))
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(InvalidDataset, match="not an IDX file"):
        read_idx_images(tmp_path / "bad.gz")
    with pytest.raises(InvalidDataset, match="uint8 \\[N,H,W\\]"):
        read_idx_images(tmp_path / "l.gz")


def test_fashion_mnist_missing_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(InvalidDataset, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, split="test")


@pytest.mark.skipif(
    not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist"
)
def test_real_fashion_mnist_test_split() -> None:
    data = load_fashion_mnist(FASHION_MNIST, split="test")
    assert data.x.shape == (10_000, 1, 28, 28) and data.x.dtype == torch.uint8
    assert torch.bincount(data.y).tolist() == [1000] * 10
    assert data.y[:5].tolist() == [9, 2, 1, 1, 6]
