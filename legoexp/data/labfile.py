"""Reading the lab's pickled ``ArrayDataset`` files without trusting them.

The lab ships its data as pickles of an ``mxnet.gluon.data.ArrayDataset`` holding an MXNet
``NDArray`` of images and a NumPy array of labels. Unpickling runs whatever the file asks for,
so ``read_lab_file`` uses an unpickler that resolves only the six globals those files use, and
maps each to an inert stand-in that merely records its arguments: no MXNet or NumPy code ever
sees the file's bytes. The arrays are then rebuilt here from the recorded bytes with every
length, shape and dtype checked against a size budget, so a damaged or crafted file is refused
with a ``DataError`` instead of crashing, hanging or exhausting memory.
"""

import io
import math
import pickle
import struct
from pathlib import Path

import numpy as np

from legoexp.errors import DataError

MAX_FILE_BYTES = 256 * 2**20  # the lab's files are ~1 MB; anything far larger is not one
_MAX_ELEMENTS = MAX_FILE_BYTES

# MXNet's raw NDArray format (NDArray::Save, V2): magic, storage type, shape, context, dtype.
_NDARRAY_V2_MAGIC = 0xF993FAC9
_MXNET_DTYPES = {0: "float32", 1: "float64", 2: "float16", 3: "uint8", 4: "int32", 5: "int8", 6: "int64"}
_NUMPY_DTYPES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8", "b1"}


class _Record:
    """Stand-in for an allowed global: keeps what the pickle passes, runs nothing."""

    def __init__(self, *args):
        self.args = args
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _ArrayDataset(_Record):
    pass


class _NDArray(_Record):
    pass


class _NumpyArray(_Record):
    pass


class _NumpyArrayType(_Record):
    pass


class _Dtype(_Record):
    pass


def _reconstruct(*args):
    return _NumpyArray(*args)


def _bytearray(*args):
    # Only the forms pickle itself writes: bytearray(bytes) or bytearray(str, 'latin-1').
    # bytearray(10**12) would allocate; a pickle must not be able to ask for that.
    if len(args) == 1 and isinstance(args[0], bytes):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin-1", "latin1"):
        return bytearray(args[0].encode("latin-1"))
    if not args:
        return bytearray()
    raise pickle.UnpicklingError("bytearray called with arguments pickle never writes")


_ALLOWED = {
    ("builtins", "bytearray"): _bytearray,
    ("numpy", "dtype"): _Dtype,
    ("numpy", "ndarray"): _NumpyArrayType,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("mxnet.ndarray.ndarray", "NDArray"): _NDArray,
    ("mxnet.gluon.data.dataset", "ArrayDataset"): _ArrayDataset,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"refused to load global {module}.{name}: a lab data file holds "
                            "only an ArrayDataset of an MXNet NDArray and a NumPy array") from None


def read_lab_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (images, labels) from a lab pickle; raise DataError naming the file otherwise."""
    try:
        return _read(Path(path))
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DataError(f"file is {size} bytes, more than any lab data file ({MAX_FILE_BYTES})")
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read the file ({e.strerror})") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw)).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"not a complete pickle ({e or 'truncated'})") from None
    except (MemoryError, RecursionError):
        raise DataError("pickle is malformed (nesting or sizes out of bounds)") from None
    except Exception as e:  # the C unpickler raises assorted errors on garbage bytes
        raise DataError(f"not a lab data pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, _ArrayDataset) or not isinstance(obj.state, dict):
        raise DataError("expected a pickled mxnet ArrayDataset")
    arrays = obj.state.get("_data")
    if not isinstance(arrays, list) or len(arrays) != 2:
        raise DataError("expected an ArrayDataset of two arrays (images, labels)")
    return tuple(_to_numpy(a, what) for a, what in zip(arrays, ("images", "labels")))


def _to_numpy(obj, what: str) -> np.ndarray:
    if isinstance(obj, _NDArray):
        state = obj.state if isinstance(obj.state, dict) else {}
        handle = state.get("handle")
        if not isinstance(handle, (bytes, bytearray)):
            raise DataError(f"{what}: NDArray without its bytes")
        return _parse_ndarray(bytes(handle), what)
    if isinstance(obj, _NumpyArray):
        return _build_numpy(obj, what)
    raise DataError(f"{what}: expected an MXNet NDArray or a NumPy array, got {type(obj).__name__}")


def _parse_ndarray(buf: bytes, what: str) -> np.ndarray:
    def unpack(fmt, offset):
        end = offset + struct.calcsize(fmt)
        if end > len(buf):
            raise DataError(f"{what}: NDArray bytes truncated in the header")
        return struct.unpack_from(fmt, buf, offset), end

    (magic, stype), pos = unpack("<Ii", 0)
    if magic != _NDARRAY_V2_MAGIC or stype != 0:
        raise DataError(f"{what}: not a dense MXNet NDArray (magic {magic:#x}, storage {stype})")
    (ndim,), pos = unpack("<I", pos)
    if not 1 <= ndim <= 8:
        raise DataError(f"{what}: NDArray header claims {ndim} dimensions")
    shape, pos = unpack(f"<{ndim}q", pos)
    (_dev_type, _dev_id, type_flag), pos = unpack("<iii", pos)
    if type_flag not in _MXNET_DTYPES:
        raise DataError(f"{what}: unknown MXNet dtype code {type_flag}")
    return _frombuffer(buf[pos:], np.dtype(_MXNET_DTYPES[type_flag]), shape, what)


def _build_numpy(obj: _NumpyArray, what: str) -> np.ndarray:
    state = obj.state
    if not (isinstance(state, tuple) and len(state) == 5):
        raise DataError(f"{what}: malformed NumPy array state")
    _version, shape, dtype, fortran, data = state
    if not (isinstance(dtype, _Dtype) and dtype.args and dtype.args[0] in _NUMPY_DTYPES):
        raise DataError(f"{what}: unsupported NumPy dtype")
    if not isinstance(data, (bytes, bytearray)) or fortran not in (False, 0):
        raise DataError(f"{what}: NumPy array payload is not raw C-ordered bytes")
    if not isinstance(shape, tuple):
        raise DataError(f"{what}: NumPy array shape is not a tuple")
    byteorder = dtype.state[1] if isinstance(dtype.state, tuple) and len(dtype.state) > 1 else "<"
    np_dtype = np.dtype(dtype.args[0]).newbyteorder(">" if byteorder == ">" else "<")
    return _frombuffer(bytes(data), np_dtype, shape, what).astype(np_dtype.newbyteorder("="))


def _frombuffer(payload: bytes, dtype: np.dtype, shape, what: str) -> np.ndarray:
    if not all(isinstance(d, int) and 0 <= d <= _MAX_ELEMENTS for d in shape):
        raise DataError(f"{what}: array shape {shape} is not a valid size")
    count = math.prod(shape)
    if count * dtype.itemsize != len(payload):
        raise DataError(f"{what}: array header says shape {tuple(shape)} of {dtype.name} "
                        f"({count * dtype.itemsize} bytes) but the file holds {len(payload)} bytes")
    return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()
