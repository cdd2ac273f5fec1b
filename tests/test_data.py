"""The data parameter: the lab's pickles read safely, .npz files, and every bad input refused."""

import hashlib
import io
import os
import pickle
import pickletools
import struct

import numpy as np
import pytest
from conftest import write_lab_file

from legoexp.data import load_split, open_source
from legoexp.data.labfile import read_lab_file
from legoexp.errors import DataError

LAB_SHA256 = {
    "lego-simple-mx-train": "4018bfad5a985e1f54c2c2055f5dd3a77c73f4bc5a6f4d69eb7c3240f6d7f1c4",
    "lego-simple-mx-test": "63730099d485111fbb3270192c151617f97b9b415d38e8cb8b645879f0ebca0d",
}


def test_lab_files_load_with_the_documented_shapes_and_class_counts(lab_dir):
    for name, sha in LAB_SHA256.items():
        assert hashlib.sha256((lab_dir / name).read_bytes()).hexdigest() == sha
    source = open_source(str(lab_dir))
    train, test = load_split(source, "train"), load_split(source, "test")
    assert source.kind == "lab"
    assert train.images.shape == (451, 48, 48) and train.images.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == [49, 50, 42, 44, 44, 39, 40, 42, 53, 48]
    assert np.bincount(test.labels).tolist() == [12, 10, 18, 16, 16, 21, 20, 18, 7, 12]
    assert train.digest != test.digest


def test_lab_reader_returns_what_mxnet_itself_unpickles(lab_format_dir):
    for name in ("lego-simple-mx-train", "lego-simple-mx-test"):
        mx_pickled = pickle.loads((lab_format_dir / name).read_bytes())  # trusted files here
        images, labels = read_lab_file(lab_format_dir / name)
        assert images.dtype == labels.dtype == np.uint8 and images.shape[1:] == (48, 48, 1)
        assert np.array_equal(images, mx_pickled._data[0].asnumpy())
        assert np.array_equal(labels, mx_pickled._data[1])


def _pickle_globals(raw: bytes) -> tuple[int, set[str]]:
    """The pickle's protocol and the globals it references."""
    ops = list(pickletools.genops(raw))
    return ops[0][1], {arg for op, arg, _ in ops if op.name == "GLOBAL"}


def test_generated_lab_pickles_hold_the_generated_set_in_the_labs_format(generated_lab_dir):
    protocol, names = _pickle_globals((generated_lab_dir / "lego-simple-mx-train").read_bytes())
    assert protocol == 3 and names == {  # as /work/shared/data/README.md lists them
        "builtins bytearray", "numpy dtype", "numpy ndarray", "numpy.core.multiarray _reconstruct",
        "mxnet.ndarray.ndarray NDArray", "mxnet.gluon.data.dataset ArrayDataset"}
    source, synthetic = open_source(str(generated_lab_dir)), open_source("synthetic")
    assert source.kind == "lab"
    for split in ("train", "test"):
        expected = load_split(synthetic, split)
        images, labels = read_lab_file(source.path(split))
        assert np.array_equal(images, expected.images[..., None]) and np.array_equal(labels, expected.labels)
        assert load_split(source, split).digest == expected.digest


def test_the_generated_pickles_writer_rewrites_the_labs_files_byte_for_byte(lab_dir, tmp_path):
    for name in LAB_SHA256:
        write_lab_file(tmp_path / name, *read_lab_file(lab_dir / name))
        assert (tmp_path / name).read_bytes() == (lab_dir / name).read_bytes()


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_a_command_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "lego-simple-mx-train"
    evil.write_bytes(pickle.dumps(_RunsACommand(marker)))
    with pytest.raises(DataError, match=r"refused to load global posix\.system"):
        read_lab_file(evil)
    assert not marker.exists()


def test_an_allowed_global_called_with_a_huge_size_is_refused(tmp_path):
    bomb = tmp_path / "bomb"
    # bytearray(10**12) would allocate a terabyte; pickle itself never writes bytearray(int)
    bomb.write_bytes(b"\x80\x03cbuiltins\nbytearray\nJ\x00\x10\xa5\xd4\x85\x94.")
    with pytest.raises(DataError):
        read_lab_file(bomb)


def _lab_bytes(directory) -> bytes:
    return (directory / "lego-simple-mx-train").read_bytes()


def _header_offset(raw: bytes) -> int:
    return raw.index(struct.pack("<I", 0xF993FAC9))


def _images_in(header: bytes) -> int:
    return struct.unpack_from("<q", header, 12)[0]


@pytest.mark.parametrize("patch, message", [
    (lambda h: h[:12] + struct.pack("<q", _images_in(h) + 1) + h[20:], "but the file holds"),  # N disagrees with bytes
    (lambda h: h[:12] + struct.pack("<q", 2**40) + h[20:], "not a valid size"),  # absurd N
    (lambda h: h[:12] + struct.pack("<q", -_images_in(h)) + h[20:], "not a valid size"),
    (lambda h: h[:8] + struct.pack("<I", 4000) + h[12:], "dimensions"),  # absurd rank
    (lambda h: h[:52] + struct.pack("<i", 99) + h[56:], "dtype code"),
    (lambda h: struct.pack("<I", 0xDEADBEEF) + h[4:], "not a dense MXNet NDArray"),
], ids=["one-image-too-many", "huge-count", "negative-count", "rank-4000", "dtype-99", "bad-magic"])
def test_crafted_ndarray_headers_are_refused_with_the_reason(lab_format_dir, tmp_path, patch, message):
    raw = _lab_bytes(lab_format_dir)
    at = _header_offset(raw)
    crafted = raw[:at] + patch(raw[at:at + 56]) + raw[at + 56:]
    path = tmp_path / "crafted"
    path.write_bytes(crafted)
    with pytest.raises(DataError, match=message) as e:
        read_lab_file(path)
    assert str(path) in str(e.value)


def test_truncated_lab_files_are_refused_at_every_cut(lab_format_dir, tmp_path):
    raw = _lab_bytes(lab_format_dir)
    path = tmp_path / "cut"
    for cut in [0, 1, 2, 40, 100, 150, 200, 1000, len(raw) // 2, len(raw) - 200, len(raw) - 1]:
        path.write_bytes(raw[:cut])
        with pytest.raises(DataError):
            read_lab_file(path)


def test_random_byte_damage_never_escapes_as_anything_but_a_data_error(lab_format_dir, tmp_path):
    raw = _lab_bytes(lab_format_dir)
    at = _header_offset(raw)
    rng = np.random.default_rng(0)
    path = tmp_path / "damaged"
    outcomes = set()
    for _ in range(300):
        damaged = bytearray(raw)
        # damage the pickle structure and the NDArray header, where bytes mean something
        for pos in rng.integers(0, at + 64, size=rng.integers(1, 4)):
            damaged[pos] = rng.integers(0, 256)
        path.write_bytes(bytes(damaged))
        try:
            images, labels = read_lab_file(path)
            outcomes.add("read")
            assert images.size <= len(raw) and labels.size <= len(raw)
        except DataError:
            outcomes.add("refused")
    assert "refused" in outcomes


def _write_npz(directory, train=None, test=None, **overrides):
    rng = np.random.default_rng(0)
    good = {"images": rng.integers(0, 256, (20, 48, 48), dtype=np.uint8), "labels": np.arange(20) % 10}
    for name, arrays in (("train.npz", train), ("test.npz", test)):
        np.savez(directory / name, **{**good, **(arrays or {})})
    return directory


def test_npz_directory_loads_both_layouts(tmp_path):
    images4 = np.zeros((20, 48, 48, 1), np.uint8)
    source = open_source(str(_write_npz(tmp_path, train={"images": images4})))
    assert source.kind == "npz"
    assert load_split(source, "train").images.shape == (20, 48, 48)
    assert load_split(source, "test").labels.dtype == np.int64


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((20, 28, 28), np.uint8)}, r"shape \(20, 28, 28\); expected uint8 images"),
    ({"images": np.zeros((20, 48, 48, 3), np.uint8)}, r"shape \(20, 48, 48, 3\)"),
    ({"images": np.zeros((20, 48, 48), np.float32)}, "dtype float32; expected uint8"),
    ({"images": np.full((20, 48, 48), np.nan)}, "NaN or inf"),
    ({"images": np.zeros((0, 48, 48), np.uint8), "labels": np.zeros(0, int)}, "no images"),
    ({"labels": np.arange(19) % 10}, "20 images but 19 labels"),
    ({"labels": np.arange(20) % 11}, r"labels range 0..10; expected integers 0..9"),
    ({"labels": np.full(20, -1)}, "labels range -1..-1"),
    ({"labels": np.full(20, np.inf)}, "labels contain NaN or inf"),
    ({"labels": np.zeros((20, 1), int)}, r"labels have shape \(20, 1\)"),
])
def test_bad_npz_contents_are_refused_naming_the_file(tmp_path, arrays, message):
    source = open_source(str(_write_npz(tmp_path, test=arrays)))
    load_split(source, "train")  # the good split still loads
    with pytest.raises(DataError, match=message) as e:
        load_split(source, "test")
    assert str(tmp_path / "test.npz") in str(e.value)


def test_an_npz_missing_an_array_or_truncated_is_refused(tmp_path):
    _write_npz(tmp_path)
    np.savez(tmp_path / "test.npz", pictures=np.zeros(3))
    with pytest.raises(DataError, match="no array 'images'"):
        load_split(open_source(str(tmp_path)), "test")
    raw = (tmp_path / "train.npz").read_bytes()
    (tmp_path / "train.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="train.npz"):
        load_split(open_source(str(tmp_path)), "train")


def test_an_npz_header_claiming_a_huge_array_is_refused_before_allocating(tmp_path):
    _write_npz(tmp_path)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**9, 48, 48)})
    import zipfile

    with zipfile.ZipFile(tmp_path / "test.npz", "w") as zf:
        zf.writestr("images.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\x00" * 100)
        zf.writestr("labels.npy", b"")
    with pytest.raises(DataError, match="more than legoexp reads"):
        load_split(open_source(str(tmp_path)), "test")


def test_a_missing_split_file_is_named(tmp_path):
    _write_npz(tmp_path)
    (tmp_path / "test.npz").unlink()
    with pytest.raises(DataError, match="test.npz: file not found"):
        load_split(open_source(str(tmp_path)), "test")


@pytest.mark.parametrize("spec, message", [
    ("/no/such/dir", "no such directory"),
    ("synthetic:x", "synthetic:SEED"),
])
def test_bad_data_parameters_say_what_is_expected(spec, message):
    with pytest.raises(DataError, match=message):
        open_source(spec)


def test_a_directory_without_lego_files_is_refused(tmp_path):
    with pytest.raises(DataError, match="holds neither"):
        open_source(str(tmp_path))


@pytest.mark.parametrize("data", ["synthetic", "lab files"])
def test_python_m_legoexp_data_writes_both_splits_as_npz_that_read_back_the_same(tmp_path, request, data):
    from conftest import run_module

    spec = str(request.getfixturevalue("lab_dir")) if data == "lab files" else data
    out = tmp_path / "exported"
    proc = run_module("legoexp.data", spec, out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["test.npz", "train.npz"]
    written, original = open_source(str(out)), open_source(spec)
    assert written.kind == "npz"
    for split in ("train", "test"):
        assert load_split(written, split).digest == load_split(original, split).digest


def test_python_m_legoexp_data_refuses_a_file_as_its_directory(tmp_path):
    from conftest import run_module

    (tmp_path / "a-file").write_text("")
    proc = run_module("legoexp.data", "synthetic", tmp_path / "a-file")
    assert proc.returncode == 2 and proc.stderr == f"error: {tmp_path / 'a-file'}: exists and is not a directory\n"
