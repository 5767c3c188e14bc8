"""Image sources for corpus.prepare: Fashion-MNIST's IDX files (Debian package dataset-fashion-mnist), scikit-learn's
8x8 digits, and a folder of images (read recursively in path order, centre-cropped to a square and resized to
`image_size`, grey when every image is, RGB otherwise; class subfolders give labels and a seeded, stratified
test split). Samples are uint8 (H, W, C) arrays; the image modality encodes them as PNG."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from sslscale.data.sources.base import Provider, Sample, Source, path_not_taken
from sslscale.data.splits import folder_files, folder_labels, folder_splits, shuffled
from sslscale.errors import SslscaleError, reason

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FMNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def read_idx(path) -> np.ndarray:
    """Parse a gzipped unsigned-byte IDX file (the MNIST format) into an array of its dims."""
    fix = "re-download it or reinstall the Debian package dataset-fashion-mnist"
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise SslscaleError(f"cannot read IDX file {path}: {reason(e)}; {fix}") from None
    if len(data) < 4 or data[:3] != b"\0\0\x08" or data[3] == 0:
        raise SslscaleError(f"{path} is not an unsigned-byte IDX file (bad magic number); {fix}")
    header = 4 + 4 * data[3]
    dims = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4")) if len(data) >= header else ()
    if not dims or len(data) != header + int(np.prod(dims)):
        raise SslscaleError(f"{path} is truncated (header dims {dims}, {len(data)} bytes); {fix}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _fmnist(path) -> Source:
    root = Path(path or FMNIST_DIR).absolute()
    missing = [root / n for names in FMNIST_FILES.values() for n in names if not (root / n).is_file()]
    if missing:
        raise SslscaleError(f"Fashion-MNIST file {missing[0]} does not exist: pass --path to your copy, "
                            "or install the Debian package dataset-fashion-mnist")
    splits = {}
    for split, names in FMNIST_FILES.items():
        images, labels = (read_idx(root / name) for name in names)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise SslscaleError(f"Fashion-MNIST {split} files in {root} disagree ({images.shape} images, "
                                f"{labels.shape} labels): reinstall dataset-fashion-mnist")
        splits[split] = (len(images), zip(zip(images[..., None]), labels.tolist()))
    return Source("fmnist", str(root), _field((*images.shape[1:], 1)), list(FMNIST_CLASSES), splits)


def _digits() -> Source:
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    test = np.arange(len(images)) % 5 == 0
    splits = {name: (int(mask.sum()), zip(zip(images[mask]), labels[mask].tolist()))
              for name, mask in (("train", ~test), ("test", test))}
    return Source("digits", "sklearn.datasets.load_digits", _field((8, 8, 1)), [str(i) for i in range(10)], splits)


def _folder(root: Path, image_size: int, on_error: str, test_fraction: float, seed: int) -> Source:
    files = folder_files(root, IMAGE_EXTENSIONS, "images")
    skipped: list[str] = []
    modes = {}
    for p in files:
        try:
            with Image.open(p) as im:
                modes[p] = im.mode
        except Exception as e:  # PIL raises many exception types for bad files
            _bad_image(p, e, on_error, skipped)
    mode = "L" if all(m in GRAY_MODES for m in modes.values()) else "RGB"
    classes, labels = folder_labels(root, files)
    kept = [p for p in files if p in modes]
    parts = shuffled(folder_splits(root, kept, classes, labels, test_fraction, seed), seed)
    shape = (image_size, image_size, 1 if mode == "L" else 3)
    return Source("folder", str(root), _field(shape), classes, {
        split: (len(part), _folder_samples(part, labels, mode, image_size, on_error, skipped))
        for split, part in parts.items()}, skipped)


def _folder_samples(files, labels, mode, size, on_error, skipped) -> Iterator[Sample]:
    for p in files:
        try:
            with Image.open(p) as im:
                img = square_resize(im.convert(mode), size)
        except Exception as e:  # PIL raises many exception types for bad files
            _bad_image(p, e, on_error, skipped)
            continue
        yield (np.asarray(img, dtype=np.uint8).reshape(size, size, -1),), labels.get(p)  # "L": one channel


def square_resize(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BILINEAR)


def _bad_image(path: Path, err: Exception, on_error: str, skipped: list[str]) -> None:
    if on_error == "fail":
        raise SslscaleError(f"cannot decode image {path}: {reason(err)}; "
                            "fix or remove it, or pass --on-error skip") from None
    skipped.append(str(path))


def _field(shape: tuple[int, int, int]) -> dict[str, dict]:
    """The manifest's image field for images of `shape` (H, W, C)."""
    return {"image": {"kind": "image", "encoding": "png", "shape": list(shape), "dtype": "uint8"}}


def open_source(name: str, *, on_error: str, test_fraction: float, seed: int, path=None,
                image_size: int = 32) -> Source:
    """fmnist (from `path`, default FMNIST_DIR), digits, or a folder of images."""
    if name == "fmnist":
        return _fmnist(path)
    if path is not None:
        raise path_not_taken(name)
    if name == "digits":
        return _digits()
    if image_size < 1:
        raise SslscaleError(f"--image-size {image_size} must be positive (e.g. 32)")
    return _folder(Path(name).absolute(), image_size, on_error, test_fraction, seed)


PROVIDER = Provider("image", ("fmnist", "digits"), IMAGE_EXTENSIONS, ("path", "image_size"), open_source)
