"""``python -m legoexp.predict``: a logged or registered model's predictions for files on disk.

An INPUT is a lab pickle (``lego-simple-mx-test``), an ``.npz`` holding ``images`` (and maybe
``labels``), or a PNG/JPEG photo. Photos become lab images here: EXIF rotation applied, grey,
cropped to their centre square and shrunk to 48x48 with a Lanczos filter; the lab's bricks are
bright on a dark ground, so dark-on-light photos need ``--invert``. Every input is read and
checked before the model is loaded; the model is loaded with ``mlflow.pyfunc.load_model`` and
fed in batches of at most ``serving.MAX_BATCH``. One line per image: where it came from, the
predicted class, its probability, and the true class with an accuracy at the end when labels
are known. ``--plot DIR`` draws the lab's single-prediction chart and 16-image grid.
"""

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from legoexp import config
from legoexp.errors import DataError, UserError, first_line
from legoexp.ops.command import run_main

PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg"}
SHOWN = 16  # the lab's batch grid


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m legoexp.predict",
        description="Predict the LEGO class of images with a logged or registered model.",
        epilog="INPUT: a lab file (lego-simple-mx-train/-test), an .npz with 'images' (N, 48, 48) uint8 and "
               "optionally 'labels', or PNG/JPEG photos (turned grey, centre-cropped to a square, resized to "
               "48x48). The lab's photos show a bright brick on a dark ground: use --invert for a dark brick "
               "on a light ground. The model is read from MLflow's tracking store (MLFLOW_TRACKING_URI, "
               "default sqlite:///mlflow.db).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="lab file, .npz, or PNG/JPEG files")
    champion = f"models:/{config.model_name()}@champion"
    p.add_argument("--model", default=champion,
                   help=f"model URI: models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-... (default {champion})")
    p.add_argument("--plot", metavar="DIR", help="write single_prediction.png and batch_prediction.png into DIR")
    p.add_argument("--invert", action="store_true", help="invert PNG/JPEG photos (for dark bricks on a light ground)")
    return p.parse_args(argv)


def read_photo(path: Path, invert: bool = False) -> np.ndarray:
    """A PNG/JPEG photo as a lab image: uint8 (48, 48), bright brick on a dark ground."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from legoexp.classes import IMAGE_SHAPE

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("L")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable PNG/JPEG image ({e})") from None
    image = ImageOps.fit(image, IMAGE_SHAPE[::-1], method=Image.Resampling.LANCZOS)
    if invert:
        image = ImageOps.invert(image)
    return np.asarray(image, dtype=np.uint8)


def read_inputs(paths: list[str], invert: bool) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """All images of all inputs, their labels (None unless every input has them), and their names."""
    from legoexp.data import check_arrays, read_images_npz
    from legoexp.data.labfile import read_lab_file

    images, labels, names = [], [], []
    for text in paths:
        path = Path(text)
        if not path.is_file():
            raise DataError(f"{path}: {'is a directory' if path.is_dir() else 'file not found'}; expected a lab "
                            "file, an .npz or PNG/JPEG images")
        suffix = path.suffix.lower()
        if suffix in PHOTO_SUFFIXES:
            images.append(read_photo(path, invert)[None])
            labels.append(None)
            names.append(str(path))
            continue
        if suffix == ".npz":
            array, label = read_images_npz(path)
        else:
            try:
                array, label = check_arrays(*read_lab_file(path), str(path))
            except DataError as e:
                raise DataError(f"{e}; read as a lab file, since it is not .npz, .png, .jpg or .jpeg") from None
        images.append(array)
        labels.append(label)
        names += [f"{path}[{i}]" for i in range(len(array))]
    known = None if any(label is None for label in labels) else np.concatenate(labels)
    return np.concatenate(images), known, names


def load_model(uri: str):
    import mlflow
    from mlflow.exceptions import MlflowException

    if uri.startswith(("models:/", "runs:/")):
        from legoexp.tracking import check_store

        check_store()
    from legoexp.access.rules import refusal

    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as e:
        raise refusal(e, f"load model {uri}") or UserError(
            f"model {uri}: {first_line(e)} (tracking store {mlflow.get_tracking_uri()}){_alias_hint(uri)}") from None


def _alias_hint(uri: str) -> str:
    """For a registered model that lacks the alias asked for: the aliases it has, and how @champion is made."""
    from legoexp.registry import model_aliases

    name, at, alias = uri.removeprefix("models:/").partition("@")
    aliases = model_aliases(name) if uri.startswith("models:/") and at else None
    if not aliases or alias in aliases:
        return ""
    example = "challenger" if "challenger" in aliases else sorted(aliases)[0]
    hint = (f"; {name} has {', '.join('@' + a for a in sorted(aliases))}: predict with one of them, "
            f"e.g. --model models:/{name}@{example}")
    if alias == "champion":
        hint += (", or make a version the champion with `python -m legoexp.promote` "
                 "(`--force` promotes it even when the gate refuses)")
    return hint


def predict(model, images: np.ndarray) -> np.ndarray:
    """Softmax probabilities (N, 10) from the pyfunc, a batch of at most MAX_BATCH images at a time."""
    from mlflow.exceptions import MlflowException

    from legoexp.tracking.pyfunc import MAX_BATCH

    parts = []
    for start in range(0, len(images), MAX_BATCH):
        try:
            frame = model.predict(images[start:start + MAX_BATCH])
        except MlflowException as e:
            raise UserError(f"the model refused the input: {e.message}") from None
        parts.append(np.array(frame["probabilities"].tolist(), dtype=np.float64))
    return np.concatenate(parts)


def report(names: list[str], probabilities: np.ndarray, labels: np.ndarray | None) -> None:
    from legoexp.classes import CLASS_NAMES

    predicted = probabilities.argmax(axis=1)
    width = max(map(len, names))
    for i, name in enumerate(names):
        line = f"{name:<{width}}  {CLASS_NAMES[predicted[i]]:<14}  {probabilities[i, predicted[i]]:.4f}"
        if labels is not None:
            verdict = "right" if predicted[i] == labels[i] else "wrong"
            line += f"  true {CLASS_NAMES[labels[i]]:<14}  {verdict}"
        print(line.rstrip())
    if labels is not None:
        right = int((predicted == labels).sum())
        print(f"accuracy {right / len(labels):.4f} ({right}/{len(labels)})")


def plot(directory: Path, images: np.ndarray, probabilities: np.ndarray, labels: np.ndarray | None) -> list[Path]:
    """The lab's single prediction (first image) and 16-image grid; without labels a grid of predictions."""
    from legoexp import plots

    predicted = probabilities.argmax(axis=1)
    first = None if labels is None else int(labels[0])
    single = plots.single_prediction(images[0], probabilities[0], actual=first, index=0)
    shown = slice(0, SHOWN)
    if labels is None:
        grid = plots.sample_grid(images[shown], predicted[shown], n=SHOWN)
        grid.suptitle("predicted classes (true classes unknown)")
    else:
        grid = plots.batch_prediction(images[shown], predicted[shown], labels[shown])
    return [plots.save(single, directory / "single_prediction.png"),
            plots.save(grid, directory / "batch_prediction.png")]


def check_plot_dir(directory: Path) -> None:
    """Refuse a ``--plot`` DIR that cannot be created or written in, before anything is predicted."""
    expected = "expected a directory to write the plots in, or a path where one can be created"
    existing = directory
    while not os.path.lexists(existing):  # ends at "." or "/" at the latest
        existing = existing.parent
    if not existing.is_dir():
        why = "is not a directory" if existing == directory else f"cannot be created, {existing} is not a directory"
        raise UserError(f"--plot {directory}: {why}; {expected}")
    try:  # only a real write tells: permissions, read-only mounts, immutable directories, root
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise UserError(f"--plot {directory}: cannot write in {existing} ({e.strerror}); {expected}") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plot:
        check_plot_dir(Path(args.plot))
    images, labels, names = read_inputs(args.inputs, args.invert)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    probabilities = predict(load_model(args.model), images)
    report(names, probabilities, labels)
    if args.plot:
        for path in plot(Path(args.plot), images, probabilities, labels):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
