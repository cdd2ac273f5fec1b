"""Where the images come from: the ``data`` parameter, its three sources, and their checks.

``data`` is ``synthetic`` (the built-in generated set, ``synthetic:SEED`` for another draw), a
directory holding the lab's two pickles, or a directory holding ``train.npz`` and ``test.npz``.
``open_source`` resolves it without reading any images; ``load_split`` reads one split, so a
search can use the training split without ever touching the test split. Every split is checked
here (shape, dtype, label range, lengths) and comes out as uint8 images (N, 48, 48) and int64
labels (N,), whatever the source; a bad input is a ``DataError`` naming the file.
"""

import hashlib
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from legoexp.classes import IMAGE_SHAPE, NUM_CLASSES
from legoexp.data.labfile import read_lab_file
from legoexp.errors import DataError

LAB_FILES = {"train": "lego-simple-mx-train", "test": "lego-simple-mx-test"}
NPZ_FILES = {"train": "train.npz", "test": "test.npz"}
SPLITS = ("train", "test")
MAX_IMAGES = 200_000  # far beyond any LEGO set here; caps what a crafted header can ask for


@dataclass(frozen=True)
class Source:
    """A resolved ``data`` parameter: what kind it is and where each split lives."""

    kind: str  # "synthetic" | "lab" | "npz"
    uri: str  # what tracking records as the data source
    seed: int = 0  # synthetic only
    directory: Path | None = None

    def path(self, split: str) -> Path:
        names = LAB_FILES if self.kind == "lab" else NPZ_FILES
        return self.directory / names[split]


@dataclass(frozen=True)
class Split:
    """One split of a data set, checked: images uint8 (N, 48, 48), labels int64 (N,) in 0..9."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    where: str

    @cached_property  # hashed once: every trial logs it
    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.images, self.labels):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.labels)


def open_source(spec: str) -> Source:
    """Resolve the ``data`` parameter; raise DataError saying what a valid one looks like."""
    spec = str(spec).strip()
    if spec == "synthetic" or spec.startswith("synthetic:"):
        seed_text = spec.partition(":")[2] or "0"
        if not seed_text.isdigit():
            raise DataError(f"data={spec!r}: expected 'synthetic' or 'synthetic:SEED' with SEED >= 0")
        return Source("synthetic", f"synthetic:{int(seed_text)}", seed=int(seed_text))
    directory = Path(spec).expanduser()
    if not directory.is_dir():
        raise DataError(f"data={spec!r}: no such directory; expected 'synthetic' or a directory "
                        f"holding {LAB_FILES['train']} and {LAB_FILES['test']} (the lab's own files, which come with the "
                        "lab, not with legoexp: see docs/data.md), or train.npz and test.npz")
    directory = directory.resolve()
    for kind, names in (("lab", LAB_FILES), ("npz", NPZ_FILES)):
        if any((directory / n).exists() for n in names.values()):
            return Source(kind, str(directory), directory=directory)
    raise DataError(f"{directory}: holds neither the lab's files ({', '.join(LAB_FILES.values())}) "
                    f"nor {', '.join(NPZ_FILES.values())}")


def load_split(source: Source, split: str) -> Split:
    """Read and check one split ("train" or "test") of a resolved source."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    if source.kind == "synthetic":
        from legoexp.data.synthetic import generate_split

        images, labels = generate_split(split, source.seed)
        where = f"{source.uri} ({split})"
    else:
        path = source.path(split)
        where = str(path)
        if not path.is_file():
            raise DataError(f"{path}: file not found (the {split} split of data={source.uri})")
        images, labels = read_lab_file(path) if source.kind == "lab" else _read_npz(path)
    images, labels = check_arrays(images, labels, where)
    return Split(split, images, labels, where)


def check_images(images, where: str, exact_dtype: bool = True) -> np.ndarray:
    """Return uint8 images (N, 48, 48) or raise DataError naming ``where``.

    Files must hold uint8 (``exact_dtype``); model inputs may encode 0..255 as any integers or
    floats with integral values, since JSON requests arrive as int64 or float64.
    """
    expected = "uint8 images of shape (N, 48, 48) or (N, 48, 48, 1)"
    if not isinstance(images, np.ndarray) or images.dtype.kind not in "uif":
        kind = getattr(images, "dtype", type(images).__name__)
        raise DataError(f"{where}: images are {kind}; expected {expected}")
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{where}: images have shape {images.shape}; expected {expected}")
    if len(images) == 0:
        raise DataError(f"{where}: there are no images; expected at least one")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise DataError(f"{where}: images contain NaN or inf; expected {expected} with values 0..255")
    if images.dtype != np.uint8:
        if exact_dtype:
            raise DataError(f"{where}: images have dtype {images.dtype}; expected {expected}")
        if images.min() < 0 or images.max() > 255 or (images != np.round(images)).any():
            raise DataError(f"{where}: image values range {images.min()}..{images.max()}; "
                            "expected integers 0..255")
    return np.ascontiguousarray(images, dtype=np.uint8)


def check_arrays(images, labels, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images (N,48,48) uint8, labels (N,) int64) or raise DataError naming ``where``."""
    images = check_images(images, where)
    if not isinstance(labels, np.ndarray) or labels.ndim != 1:
        raise DataError(f"{where}: labels have shape {getattr(labels, 'shape', None)}; expected (N,)")
    if len(labels) != len(images):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels; expected one label per image")
    expected = f"integers 0..{NUM_CLASSES - 1}"
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise DataError(f"{where}: labels contain NaN or inf; expected {expected}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels have dtype {labels.dtype}; expected {expected}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(f"{where}: labels range {labels.min()}..{labels.max()}; expected {expected}")
    return images, labels.astype(np.int64)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # np.load would allocate whatever a header claims; read each header first and bound it.
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = []
            for key in ("images", "labels"):
                if f"{key}.npy" not in zf.namelist():
                    raise DataError(f"{path}: no array '{key}'; expected an .npz holding 'images' and 'labels'")
                with zf.open(f"{key}.npy") as f:
                    arrays.append(_read_npy(f, path, key))
            return tuple(arrays)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None


def _read_npy(f, path: Path, key: str) -> np.ndarray:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = reader(f)
    if dtype.hasobject:
        raise DataError(f"{path}: '{key}' holds Python objects; expected a numeric array")
    count = int(np.prod(shape, dtype=object))
    if count * dtype.itemsize > MAX_IMAGES * IMAGE_SHAPE[0] * IMAGE_SHAPE[1]:
        raise DataError(f"{path}: '{key}' claims shape {shape}, more than legoexp reads")
    data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise DataError(f"{path}: '{key}' is truncated ({len(data)} of {count * dtype.itemsize} bytes)")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="))


def read_images_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images to predict from an .npz: ``images`` checked as a split's, ``labels`` too when present."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if "images.npy" not in names:
                raise DataError(f"{path}: no array 'images'; expected an .npz holding 'images' "
                                "(N, 48, 48) uint8 and optionally 'labels'")
            arrays = {}
            for key in ("images", "labels"):
                if f"{key}.npy" in names:
                    with zf.open(f"{key}.npy") as f:
                        arrays[key] = _read_npy(f, path, key)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if "labels" in arrays:
        return check_arrays(arrays["images"], arrays["labels"], str(path))
    return check_images(arrays["images"], str(path)), None
