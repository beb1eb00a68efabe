"""Image datasets as uint8 tensors, and their safe loading from user files.

Two upload formats: an `.npz` holding `x` (uint8 [N,H,W] or [N,H,W,C]) and `y` (integer [N]), read with
`allow_pickle=False` after checking each array's header; or a `.zip` of class folders of PNG/JPEG images,
read member by member in memory (nothing is extracted to disk) with limits on entries, sizes and pixels, and
with unsafe member names (absolute paths, `..`, symlinks) refused outright. Gzipped IDX files (Fashion-MNIST)
are read for the benchmark and the demo.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from argd.core.errors import InvalidDataset

#: Default limits for user uploads; every loader takes them as keyword arguments.
MAX_IMAGES = 200_000
MAX_IMAGE_PIXELS = 512 * 512  # the largest image a ModelSpec accepts
MAX_TOTAL_BYTES = 1 << 30  # decoded pixels, and the declared uncompressed size of a zip
MAX_MEMBER_BYTES = 32 << 20  # one encoded image inside a zip
MAX_ZIP_ENTRIES = MAX_IMAGES + 10_000

#: Ceiling for any image PIL decodes in this process (PIL refuses beyond twice this number).
HARD_MAX_IMAGE_PIXELS = 4096 * 4096
Image.MAX_IMAGE_PIXELS = HARD_MAX_IMAGE_PIXELS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass
class ImageData:
    """A labelled image set kept as tensors: `x` uint8 [N, C, H, W], `y` int64 [N]."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"x must be uint8 [N,C,H,W], got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(f"y must be [N] with N={self.x.shape[0]}, got {tuple(self.y.shape)}")
        self.y = self.y.to(torch.int64)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: torch.Tensor) -> ImageData:
        return ImageData(self.x[index], self.y[index])


@dataclass(frozen=True)
class DatasetInfo:
    """What an upload holds: image count, per-image shape (C, H, W), class names and their labels/counts."""

    count: int
    shape: tuple[int, int, int]
    classes: list[str]
    labels: list[int] = field(default_factory=list)  # label of each entry of `classes`
    class_counts: list[int] = field(default_factory=list)  # images per entry of `classes`
    format: str = "npz"  # "npz" or "zip"


def load_dataset(
    path: str | os.PathLike[str],
    *,
    in_channels: int | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    max_images: int = MAX_IMAGES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_bytes: int = MAX_TOTAL_BYTES,
) -> ImageData:
    """Load an `.npz` or a `.zip` of class folders as ImageData; see `load_dataset_with_info`."""
    data, _ = load_dataset_with_info(
        path,
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        max_images=max_images,
        max_pixels=max_pixels,
        max_bytes=max_bytes,
    )
    return data


def load_dataset_with_info(
    path: str | os.PathLike[str],
    *,
    in_channels: int | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    max_images: int = MAX_IMAGES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_bytes: int = MAX_TOTAL_BYTES,
) -> tuple[ImageData, DatasetInfo]:
    """Load a dataset file and describe it; the format is sniffed from the content, not the file name.

    `in_channels` converts images (grey <-> RGB, alpha dropped or added); `image_size` requires square images
    of that side; `num_classes` requires labels in [0, num_classes). Bad input raises InvalidDataset.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidDataset(f"dataset file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise InvalidDataset(
            "unsupported dataset file: expected an .npz with arrays x and y, or a .zip of class folders of "
            "PNG/JPEG images"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidDataset(f"corrupt archive: {exc}") from exc
    max_pixels = min(max_pixels, HARD_MAX_IMAGE_PIXELS)
    if path.suffix.lower() == ".npz" or (names and all(name.endswith(".npy") for name in names)):
        x, y = _read_npz(path, max_images, max_pixels, max_bytes)
        fmt = "npz"
        class_names: dict[int, str] | None = None
    else:
        x, y, class_names = _read_image_zip(path, in_channels, image_size, max_images, max_pixels, max_bytes)
        fmt = "zip"
    if in_channels is not None:
        x = convert_channels(x, in_channels)
    n, h, w, c = x.shape
    if image_size is not None and (h, w) != (image_size, image_size):
        raise InvalidDataset(
            f"images are {h}x{w} but the model takes {image_size}x{image_size}; resize them before uploading",
            details={"found": [h, w], "expected": [image_size, image_size]},
        )
    _check_labels(y, num_classes)
    data = ImageData(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y))
    labels, counts = np.unique(y, return_counts=True)
    names_by_label = class_names or {int(label): str(int(label)) for label in labels}
    info = DatasetInfo(
        count=int(n),
        shape=(int(c), int(h), int(w)),
        classes=[names_by_label[int(label)] for label in labels],
        labels=[int(label) for label in labels],
        class_counts=[int(count) for count in counts],
        format=fmt,
    )
    return data, info


def _check_labels(y: np.ndarray, num_classes: int | None) -> None:
    low, high = int(y.min()), int(y.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        bad = y[(y < 0) | (y >= (num_classes if num_classes is not None else np.iinfo(np.int64).max))]
        upper = f"{num_classes})" if num_classes is not None else "inf)"
        raise InvalidDataset(
            f"{bad.size} label(s) outside [0, {upper}, e.g. {int(bad[0])} "
            f"(labels range from {low} to {high})",
            details={"min": low, "max": high, "num_classes": num_classes},
        )


# ----------------------------------------------------------------------------------------------------- npz


def _npy_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype of an array inside an npz, read from its header before any data is loaded."""
    with archive.open(member) as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        except (ValueError, SyntaxError, struct.error) as exc:
            raise InvalidDataset(f"array {member!r} has a malformed .npy header: {exc}") from exc
    return tuple(int(s) for s in shape), dtype


def _read_npz(path: Path, max_images: int, max_pixels: int, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        members = set(archive.namelist())
        missing = [key for key in ("x", "y") if f"{key}.npy" not in members]
        if missing:
            found = ", ".join(sorted(name.removesuffix(".npy") for name in members)) or "nothing"
            raise InvalidDataset(
                f"the .npz must hold arrays 'x' (images) and 'y' (labels); missing {', '.join(missing)}, "
                f"found {found}"
            )
        headers = {key: _npy_header(archive, f"{key}.npy") for key in ("x", "y")}
    for key, (_, dtype) in headers.items():
        if dtype.hasobject:
            raise InvalidDataset(
                f"array {key!r} is an object array (pickled Python objects), which is not accepted; "
                "store plain numeric arrays"
            )
    (x_shape, x_dtype), (y_shape, y_dtype) = headers["x"], headers["y"]
    if x_dtype != np.uint8:
        raise InvalidDataset(f"x must be uint8 (pixel values 0-255), got {x_dtype}")
    if len(x_shape) not in (3, 4) or (len(x_shape) == 4 and not 1 <= x_shape[3] <= 4):
        hint = ""
        if len(x_shape) == 4 and x_shape[1] in (1, 3, 4):
            hint = " (channels-first arrays must be transposed to [N,H,W,C])"
        raise InvalidDataset(
            f"x must have shape [N,H,W] or [N,H,W,C] with C in 1..4, got {list(x_shape)}{hint}"
        )
    if y_dtype.kind not in "iu" or len(y_shape) != 1:
        raise InvalidDataset(f"y must be a 1-D integer array, got {y_dtype} with shape {list(y_shape)}")
    n = x_shape[0]
    if n == 0:
        raise InvalidDataset("the dataset is empty (x has 0 images)")
    if y_shape[0] != n:
        raise InvalidDataset(f"x has {n} images but y has {y_shape[0]} labels")
    if n > max_images:
        raise InvalidDataset(f"{n} images exceed the limit of {max_images}", details={"limit": max_images})
    if x_shape[1] * x_shape[2] > max_pixels:
        raise InvalidDataset(
            f"images are {x_shape[1]}x{x_shape[2]} pixels, over the per-image limit of {max_pixels}",
            details={"limit": max_pixels},
        )
    nbytes = int(np.prod(x_shape)) + int(np.prod(y_shape)) * y_dtype.itemsize
    if nbytes > max_bytes:
        raise InvalidDataset(f"the arrays take {nbytes} bytes, over the limit of {max_bytes}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataset(f"cannot read the .npz arrays: {exc}") from exc
    if x.ndim == 3:
        x = x[..., None]
    return x, y.astype(np.int64)


# ------------------------------------------------------------------------------------------- zip of images


def _check_member_name(info: zipfile.ZipInfo) -> None:
    name = info.filename
    reason = None
    if "\x00" in name:
        reason = "NUL byte in the name"
    elif name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        reason = "absolute path"
    elif ".." in re.split(r"[\\/]", name):
        reason = "'..' path component"
    elif stat.S_ISLNK(info.external_attr >> 16):
        reason = "symbolic link"
    elif info.flag_bits & 0x1:
        reason = "encrypted member"
    if reason:
        raise InvalidDataset(f"unsafe archive member {name!r}: {reason}", details={"member": name})


def _is_junk(name: str) -> bool:
    parts = name.split("/")
    return parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts) or parts[-1] == "Thumbs.db"


def _class_layout(names: list[str]) -> list[str]:
    """The class folder of each image: `<class>/<image>` or `<root>/<class>/<image>`."""
    split = [name.split("/") for name in names]
    depths = {len(parts) for parts in split}
    if depths == {2}:
        return [parts[0] for parts in split]
    if depths == {3} and len({parts[0] for parts in split}) == 1:
        return [parts[1] for parts in split]
    odd = next((name for name, parts in zip(names, split, strict=True) if len(parts) not in (2, 3)), names[0])
    raise InvalidDataset(
        "images must sit in class folders, as <class>/<image> or <root>/<class>/<image>, all at the same "
        f"depth; found {odd!r}",
        details={"member": odd},
    )


def _label_map(classes: list[str]) -> dict[str, int]:
    """Folders named by integers keep those numbers as labels (a subset may miss classes); other names are
    sorted and numbered from 0."""
    unique = sorted(set(classes))
    if all(name.isdecimal() for name in unique):
        return {name: int(name) for name in unique}
    return {name: index for index, name in enumerate(unique)}


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_MEMBER_BYTES:
        raise InvalidDataset(f"{info.filename!r} is {info.file_size} bytes, over the per-file limit")
    with archive.open(info) as handle:
        data = handle.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise InvalidDataset(f"{info.filename!r} is over the per-file limit")
    return data


def _decode(name: str, data: bytes, target_mode: str | None, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as image:
            width, height = image.size  # from the header; nothing decoded yet
            if width * height > max_pixels:
                raise InvalidDataset(
                    f"{name!r} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
                    details={"member": name, "pixels": width * height, "limit": max_pixels},
                )
            mode = target_mode or ("L" if image.mode in _GRAY_MODES else "RGB")
            array = np.asarray(image.convert(mode), dtype=np.uint8)
    except InvalidDataset:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own header check, for sizes far over any limit
        raise InvalidDataset(
            f"{name!r} has too many pixels, over the limit of {max_pixels} ({exc})",
            details={"member": name, "limit": max_pixels},
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidDataset(f"{name!r} is not a readable PNG or JPEG image: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidDataset(f"cannot decode {name!r}: {exc}") from exc
    return array if array.ndim == 3 else array[..., None]


def _read_image_zip(
    path: Path,
    in_channels: int | None,
    image_size: int | None,
    max_images: int,
    max_pixels: int,
    max_bytes: int,
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    target_mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(in_channels) if in_channels else None
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise InvalidDataset(f"the archive has {len(infos)} entries, over the limit of {MAX_ZIP_ENTRIES}")
        for info in infos:
            _check_member_name(info)
        files = [info for info in infos if not info.is_dir() and not _is_junk(info.filename)]
        declared = sum(info.file_size for info in files)
        if declared > max_bytes:
            raise InvalidDataset(
                f"the archive unpacks to {declared} bytes, over the limit of {max_bytes}",
                details={"declared": declared, "limit": max_bytes},
            )
        others = [info.filename for info in files if not info.filename.lower().endswith(IMAGE_SUFFIXES)]
        if others:
            raise InvalidDataset(
                f"unsupported file {others[0]!r} in the archive: only .png, .jpg and .jpeg images in class "
                "folders are accepted",
                details={"member": others[0]},
            )
        if not files:
            raise InvalidDataset("the archive holds no images")
        if len(files) > max_images:
            raise InvalidDataset(f"{len(files)} images exceed the limit of {max_images}")
        files.sort(key=lambda info: info.filename)
        classes = _class_layout([info.filename for info in files])
        label_of = _label_map(classes)
        images: list[np.ndarray] = []
        decoded = 0
        first_size: tuple[int, int] | None = None
        for info in files:
            array = _decode(info.filename, _read_member(archive, info), target_mode, max_pixels)
            size = (array.shape[0], array.shape[1])
            if image_size is not None and size != (image_size, image_size):
                raise InvalidDataset(
                    f"{info.filename!r} is {size[0]}x{size[1]} but the model takes "
                    f"{image_size}x{image_size}; resize the images before uploading",
                    details={"member": info.filename, "found": list(size)},
                )
            if first_size is None:
                first_size = size
            elif size != first_size:
                raise InvalidDataset(
                    f"images differ in size: {info.filename!r} is {size[0]}x{size[1]}, "
                    f"the first one {first_size[0]}x{first_size[1]}",
                    details={"member": info.filename},
                )
            decoded += array.nbytes
            if decoded > max_bytes:
                raise InvalidDataset(f"the decoded images take over {max_bytes} bytes")
            images.append(array)
    if target_mode is None and any(image.shape[2] == 3 for image in images):
        images = [convert_channels(image[None], 3)[0] for image in images]
    x = np.stack(images)
    y = np.array([label_of[name] for name in classes], dtype=np.int64)
    return x, y, {label: name for name, label in label_of.items()}


# ---------------------------------------------------------------------------------------------- channels


def convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Convert uint8 NHWC images to `channels` (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).

    Grey from colour uses the ITU-R 601-2 luma weights (as PIL's "L" mode); missing alpha is opaque.
    """
    c = x.shape[3]
    if c == channels:
        return x
    if not 1 <= c <= 4 or not 1 <= channels <= 4:
        raise InvalidDataset(f"cannot convert images with {c} channels to {channels}")
    if c >= 3:
        rgb = x[..., :3].astype(np.uint32)
        gray = ((rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000).astype(np.uint8)
        color = x[..., :3]
    else:
        gray = x[..., 0]
        color = np.repeat(x[..., :1], 3, axis=3)
    alpha = x[..., c - 1] if c in (2, 4) else np.full(x.shape[:3], 255, dtype=np.uint8)
    if channels == 1:
        return gray[..., None]
    if channels == 2:
        return np.stack([gray, alpha], axis=3)
    if channels == 3:
        return np.ascontiguousarray(color)
    return np.concatenate([color, alpha[..., None]], axis=3)


# ------------------------------------------------------------------------------------------------ writing


def save_npz(data: ImageData, path: str | os.PathLike[str], *, compressed: bool = True) -> None:
    """Write `data` in the upload format (`x` uint8 [N,H,W,C], `y` int64 [N]); the file appears atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = data.x.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    y = data.y.cpu().numpy().astype(np.int64)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            (np.savez_compressed if compressed else np.savez)(handle, x=x, y=y)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -------------------------------------------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_maybe_gzip(path: Path) -> IO[bytes]:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def read_idx(path: str | os.PathLike[str], *, max_bytes: int = MAX_TOTAL_BYTES) -> np.ndarray:
    """Read an IDX file (plain or gzipped): two zero bytes, a type code, the rank, big-endian sizes, data."""
    path = Path(path)
    try:
        with _open_maybe_gzip(path) as handle:
            header = handle.read(4)
            if len(header) != 4 or header[:2] != b"\x00\x00" or header[2] not in _IDX_DTYPES:
                raise InvalidDataset(f"{path.name} is not an IDX file (bad magic number)")
            rank = header[3]
            dims = struct.unpack(f">{rank}I", handle.read(4 * rank)) if rank else ()
            dtype = np.dtype(_IDX_DTYPES[header[2]])
            expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            if expected > max_bytes:
                raise InvalidDataset(f"{path.name} declares {expected} bytes of data, over the limit")
            payload = handle.read(expected + 1)
    except (OSError, EOFError, struct.error) as exc:
        raise InvalidDataset(f"cannot read {path.name}: {exc}") from exc
    if len(payload) != expected:
        raise InvalidDataset(
            f"{path.name} holds {len(payload)}{'+' if len(payload) > expected else ''} bytes of data, "
            f"its header says {expected}"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """uint8 images [N, H, W] from an IDX3 file such as `train-images-idx3-ubyte.gz`."""
    array = read_idx(path)
    if array.dtype != np.uint8 or array.ndim != 3:
        raise InvalidDataset(
            f"{Path(path).name}: expected uint8 [N,H,W] images, got {array.dtype} {array.shape}"
        )
    return array


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """int64 labels [N] from an IDX1 file such as `train-labels-idx1-ubyte.gz`."""
    array = read_idx(path)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise InvalidDataset(
            f"{Path(path).name}: expected 1-D integer labels, got {array.dtype} {array.shape}"
        )
    return array.astype(np.int64)


def load_fashion_mnist(root: str | os.PathLike[str] = FASHION_MNIST_ROOT, split: str = "train") -> ImageData:
    """Fashion-MNIST as ImageData (x uint8 [N,1,28,28]): 60,000 `train` or 10,000 `test` images."""
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    images_path = root / f"{prefixes[split]}-images-idx3-ubyte.gz"
    labels_path = root / f"{prefixes[split]}-labels-idx1-ubyte.gz"
    for needed in (images_path, labels_path):
        if not needed.is_file():
            raise InvalidDataset(
                f"Fashion-MNIST not found: {needed} is missing; install it with "
                "`apt-get install dataset-fashion-mnist` or pass the folder holding the IDX files as root"
            )
    images, labels = read_idx_images(images_path), read_idx_labels(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise InvalidDataset(f"{images.shape[0]} images but {labels.shape[0]} labels in {root}")
    return ImageData(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels))


__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "DatasetInfo",
    "ImageData",
    "convert_channels",
    "load_dataset",
    "load_dataset_with_info",
    "load_fashion_mnist",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "save_npz",
]
