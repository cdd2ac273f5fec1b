"""`python -m legoexp.predict`: a real logged model's predictions for lab files, .npz files and photos."""

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid

import numpy as np
import pytest
from conftest import require, run_module
from mlflow.tracking import MlflowClient
from PIL import Image

from legoexp.classes import CLASS_NAMES
from legoexp.data import load_split, open_source
from legoexp.predict import read_photo


@pytest.fixture(scope="module")
def test_split():
    return load_split(open_source("synthetic"), "test")


@pytest.fixture(scope="module")
def model(tracking_uri, tmp_path_factory):
    """A model trained 1 epoch on the generated set and logged to the session's store: (uri, pyfunc)."""
    import mlflow

    from legoexp import tracking
    from legoexp.train import TrainConfig, train

    split = load_split(open_source("synthetic"), "train")
    net = train(TrainConfig(epochs=1), split.images, split.labels).net
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("predict-model"))
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)
        experiment = MlflowClient().create_experiment(f"predict-{uuid.uuid4().hex[:8]}")
        with mlflow.start_run(experiment_id=experiment):
            uri = tracking.log_model(net, input_example=split.images[:2]).model_uri
        return uri, mlflow.pyfunc.load_model(uri)


def _expected(model, images):
    out = model[1].predict(images)
    return out["class_name"].tolist(), [max(p) for p in out["probabilities"]]


def _predict(env, model, *args):
    proc = run_module("legoexp.predict", "--model", model[0], *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def _check_lines(lines, names, classes, probabilities, truth=None):
    """Each line: name, class, probability, and with labels 'true NAME' and right/wrong."""
    rows = [re.split(r"\s{2,}", line) for line in lines]  # class names hold single spaces
    assert [row[0] for row in rows] == names
    assert [row[1] for row in rows] == classes
    assert [float(row[2]) for row in rows] == pytest.approx(probabilities, abs=5e-5)
    if truth is None:
        assert all(len(row) == 3 for row in rows)
    else:
        assert [row[3:] for row in rows] == [[f"true {t}", "right" if t == c else "wrong"]
                                             for t, c in zip(truth, classes)]


def _one_line_error(proc, message):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_an_npz_with_labels_prints_each_prediction_its_true_class_and_the_accuracy(
        mlflow_env, model, test_split, tmp_path):
    path = tmp_path / "few.npz"
    np.savez(path, images=test_split.images[:30], labels=test_split.labels[:30])
    lines = _predict(mlflow_env, model, path)
    classes, probabilities = _expected(model, test_split.images[:30])
    truth = [CLASS_NAMES[i] for i in test_split.labels[:30]]
    _check_lines(lines[:-1], [f"{path}[{i}]" for i in range(30)], classes, probabilities, truth)
    right = sum(c == t for c, t in zip(classes, truth))
    assert lines[-1] == f"accuracy {right / 30:.4f} ({right}/30)"


@pytest.mark.slow
def test_an_npz_without_labels_prints_predictions_only(mlflow_env, model, test_split, tmp_path):
    path = tmp_path / "unlabelled.npz"
    np.savez(path, images=test_split.images[:5, :, :, None])  # the (N, 48, 48, 1) layout
    lines = _predict(mlflow_env, model, path)
    _check_lines(lines, [f"{path}[{i}]" for i in range(5)], *_expected(model, test_split.images[:5]))


@pytest.mark.slow
def test_a_lab_file_is_predicted_with_its_labels(mlflow_env, model, lab_format_dir):
    from legoexp.data.labfile import read_lab_file

    path = lab_format_dir / "lego-simple-mx-test"
    images, labels = read_lab_file(path)
    lines = _predict(mlflow_env, model, path)
    classes, probabilities = _expected(model, images)
    truth = [CLASS_NAMES[i] for i in labels]
    _check_lines(lines[:-1], [f"{path}[{i}]" for i in range(len(labels))], classes, probabilities, truth)
    assert lines[-1].startswith("accuracy ") and lines[-1].endswith(f"/{len(labels)})")


def test_a_photo_becomes_a_48x48_grey_image_cropped_to_its_centre_square(test_split, tmp_path):
    brick = test_split.images[1]
    big = np.kron(brick, np.ones((3, 3), np.uint8))  # 144x144, as if photographed larger
    wide = np.zeros((144, 192), np.uint8)  # dark margins left and right, cropped away
    wide[:, 24:168] = big
    Image.fromarray(wide).convert("RGB").save(tmp_path / "wide.jpg", quality=95)
    photo = read_photo(tmp_path / "wide.jpg")
    assert photo.shape == (48, 48) and photo.dtype == np.uint8
    assert np.abs(photo.astype(int) - brick).mean() < 6  # JPEG and resampling blur it a little

    Image.fromarray(255 - brick).save(tmp_path / "dark-on-light.png")
    assert np.array_equal(read_photo(tmp_path / "dark-on-light.png", invert=True), brick)


@pytest.mark.slow
def test_png_and_jpeg_files_are_predicted_one_line_each(mlflow_env, model, test_split, tmp_path):
    names = []
    for i, suffix in enumerate([".png", ".jpg", ".jpeg"]):
        names.append(str(tmp_path / f"brick{i}{suffix}"))
        Image.fromarray(test_split.images[i]).save(names[-1], quality=95)
    lines = _predict(mlflow_env, model, *names)
    photos = np.stack([read_photo(name) for name in names])
    assert np.array_equal(photos[0], test_split.images[0])  # a 48x48 grey PNG is read as it is
    _check_lines(lines, names, *_expected(model, photos))


@pytest.mark.slow
def test_plot_writes_the_single_prediction_chart_and_the_batch_grid(mlflow_env, model, test_split, tmp_path):
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, images=test_split.images[:20], labels=test_split.labels[:20])
    photo = tmp_path / "brick.png"
    Image.fromarray(test_split.images[0]).save(photo)
    for inputs, directory in (([labelled], tmp_path / "with-labels"), ([photo], tmp_path / "without-labels")):
        lines = _predict(mlflow_env, model, *inputs, "--plot", directory)
        for name in ("single_prediction.png", "batch_prediction.png"):
            assert f"wrote {directory / name}" in lines
            with Image.open(directory / name) as png:
                assert png.format == "PNG" and png.width > 300
        assert sorted(os.listdir(directory)) == ["batch_prediction.png", "single_prediction.png"]


def _text_file(tmp_path, name):
    (tmp_path / name).write_text("hello")
    return tmp_path / name


def _npz(tmp_path, **arrays):
    np.savez(tmp_path / "x.npz", **arrays)
    return tmp_path / "x.npz"


@pytest.mark.parametrize("make_args, message", [
    (lambda t: [t / "missing.npz"], "missing.npz: file not found; expected a lab file, an .npz or PNG/JPEG"),
    (lambda t: [t], "is a directory; expected a lab file, an .npz or PNG/JPEG images"),
    (lambda t: [_text_file(t, "photo.png")], "photo.png: not a readable PNG/JPEG image"),
    (lambda t: [_text_file(t, "notes.txt")], "notes.txt: not a complete pickle"),
    (lambda t: [_npz(t, labels=np.zeros(3, int))], "x.npz: no array 'images'; expected an .npz holding 'images'"),
    (lambda t: [_npz(t, images=np.zeros((3, 28, 28), np.uint8))], "x.npz: images have shape (3, 28, 28)"),
    (lambda t: [_npz(t, images=np.zeros((2, 48, 48), np.uint8), labels=np.array([0, 10]))],
     "x.npz: labels range 0..10; expected integers 0..9"),
    (lambda t: ["--model", "models:/no-such-model@champion", _npz(t, images=np.zeros((1, 48, 48), np.uint8))],
     "model models:/no-such-model@champion: Registered Model with name=no-such-model not found"),
])
def test_bad_inputs_are_one_line_exit_2(mlflow_env, tmp_path, make_args, message):
    MlflowClient().search_experiments()  # the store exists (creating it is what a first run does)
    proc = run_module("legoexp.predict", *make_args(tmp_path), env=mlflow_env)
    _one_line_error(proc, message)


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory no one may write in, root included: immutable (chattr +i) as root, mode 0500 otherwise."""
    path = tmp_path / "locked"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        yield path
        path.chmod(0o700)
        return
    locked = shutil.which("chattr") and subprocess.run(["chattr", "+i", path], capture_output=True).returncode == 0
    require(locked, f"cannot make {path} immutable (chattr +i) on this file system")
    yield path
    subprocess.run(["chattr", "-i", path], check=True)


@pytest.mark.parametrize("make_plot, message", [
    (lambda t, r: _text_file(t, "some-file") / "sub", "some-file/sub: cannot be created, {t}/some-file is not a dir"),
    (lambda t, r: _text_file(t, "plots.png"), "plots.png: is not a directory; expected a directory to write the"),
    (lambda t, r: r.getfixturevalue("unwritable_dir"), "locked: cannot write in {t}/locked ("),
    (lambda t, r: r.getfixturevalue("unwritable_dir") / "new", "locked/new: cannot write in {t}/locked ("),
], ids=["under-a-file", "a-file", "unwritable", "under-unwritable"])
def test_a_plot_directory_that_cannot_be_written_is_refused_before_the_model_is_loaded(
        tmp_path, request, make_plot, message):
    plot = make_plot(tmp_path, request)
    store = tmp_path / "mlflow.db"  # there is no store and no such model: neither error may come first
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    proc = run_module("legoexp.predict", "--model", "models:/no-such-model@x", "--plot", plot,
                      _npz(tmp_path, images=np.zeros((1, 48, 48), np.uint8)), env=env, cwd=tmp_path)
    _one_line_error(proc, message.format(t=tmp_path))
    assert f"error: --plot {plot}: " in proc.stderr and "or a path where one can be created" in proc.stderr
    assert not store.exists()


@pytest.mark.parametrize("how", ["killed", "write-error"])
def test_a_png_write_cut_short_leaves_the_previous_plots_whole(test_split, tmp_path, how):
    """The second write is cut when its file passes a size limit: the kernel kills the process there
    (SIGXFSZ, a kill at a known byte), or the write fails (EFBIG, as on a full disk)."""
    from legoexp.predict import plot

    images, labels = test_split.images[:16], test_split.labels[:16]
    written = plot(tmp_path, images, np.eye(10)[labels], labels)
    before = {path: path.read_bytes() for path in written}
    limit = min(map(len, before.values())) // 2
    proc = subprocess.Popen([sys.executable, "-c", f"""
import resource, signal, numpy as np
from pathlib import Path
from legoexp import plots, predict
from legoexp.data import load_split, open_source
split = load_split(open_source("synthetic"), "test")
images, labels = split.images[:16], split.labels[:16]
signal.signal(signal.SIGXFSZ, signal.{"SIG_DFL" if how == "killed" else "SIG_IGN"})
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
predict.plot(Path({str(tmp_path)!r}), images, np.full((16, 10), 0.1), labels)
"""], stderr=subprocess.PIPE, text=True)
    stderr = proc.communicate(timeout=120)[1]
    if how == "killed":
        assert proc.returncode == -signal.SIGXFSZ, stderr
    else:
        assert proc.returncode == 1 and "File too large" in stderr, stderr
    assert {path: path.read_bytes() for path in written} == before
    left = sorted(p.name for p in tmp_path.iterdir())
    partial = [f".single_prediction.png.{proc.pid}.partial"] if how == "killed" else []
    assert left == [*partial, "batch_prediction.png", "single_prediction.png"]


def test_without_model_it_loads_the_champion_and_a_missing_store_is_refused_not_created(tmp_path):
    store = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    proc = run_module("legoexp.predict", _npz(tmp_path, images=np.zeros((1, 48, 48), np.uint8)), env=env)
    _one_line_error(proc, f"there is no tracking store at sqlite:///{store}; run this where")
    assert not store.exists()
    proc = run_module("legoexp.predict", "--help")
    assert "default models:/lego-classifier@champion" in proc.stdout


def test_a_model_without_a_champion_yet_is_refused_with_its_aliases_and_how_to_promote(mlflow_env, model, tmp_path):
    import mlflow

    name = f"lego-{uuid.uuid4().hex[:8]}"
    version = mlflow.register_model(model[0], name).version  # what a sweep leaves when promote's gate refused
    MlflowClient().set_registered_model_alias(name, "challenger", version)
    images = _npz(tmp_path, images=np.zeros((1, 48, 48), np.uint8))
    proc = run_module("legoexp.predict", "--model", f"models:/{name}@champion", images, env=mlflow_env)
    _one_line_error(proc, "Registered model alias champion not found")
    assert proc.stderr.rstrip().endswith(
        f"; {name} has @challenger: predict with one of them, e.g. --model models:/{name}@challenger, or make a "
        "version the champion with `python -m legoexp.promote` (`--force` promotes it even when the gate refuses)")
    proc = run_module("legoexp.predict", "--model", f"models:/{name}@other", images, env=mlflow_env)
    _one_line_error(proc, "alias other not found")
    assert proc.stderr.rstrip().endswith(f"e.g. --model models:/{name}@challenger")
