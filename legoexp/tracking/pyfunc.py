"""The logged model: an MLflow pyfunc that takes raw lab images and answers with named classes.

The ``mlflow.gluon`` flavor is gone from MLflow 3, so the trained network is exported as an
MXNet symbol + params pair and wrapped in ``LegoClassifier``, a ``PythonModel`` that re-imports
it with ``SymbolBlock.imports``. It takes images as the lab stores them, (N, 48, 48) or
(N, 48, 48, 1) with integer values 0..255, normalises them itself, and returns one row per image:
``label``, ``class_name`` and the 10 softmax ``probabilities``. Bad input (another shape, values
outside 0..255, NaN, text, an empty or too large batch) is refused with an MLflow
INVALID_PARAMETER_VALUE error saying what was expected, which ``mlflow models serve`` answers
with a 400.
"""

import re
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import Array, ColSpec, Schema

from legoexp.classes import CLASS_NAMES
from legoexp.data import check_images
from legoexp.errors import DataError

# Images per request. MLflow's server parses and deep-copies the whole JSON body before the model
# can count the images, so a larger batch costs seconds before it can be refused (docs/performance.md).
MAX_BATCH = 1_000

# Only the output is declared. With an input schema MLflow's server converts and checks a request
# itself before the model sees it, and answers some bad ones (an empty list) with a message about
# tensor signatures instead of images; without one, every request reaches ``to_images``.
SIGNATURE = ModelSignature(
    outputs=Schema([
        ColSpec("long", "label"),
        ColSpec("string", "class_name"),
        ColSpec(Array("double"), "probabilities"),
    ]),
)
# The model's code: legoexp itself, loaded through ``legoexp/pyfunc_model.py``, the file that every
# logged model names (models logged by earlier versions import ``legoexp.serving``, kept for them).
PACKAGE_DIR = Path(__file__).resolve().parent.parent
_JSON_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")
EXPECTED = f"1..{MAX_BATCH} images of shape (N, 48, 48) or (N, 48, 48, 1) with integer values 0..255"


def to_images(model_input) -> np.ndarray:
    """Return uint8 images (N, 48, 48) from a model input, or raise an MlflowException saying why.

    In process the input is what the caller passed. Behind ``mlflow models serve`` it is
    ``np.array`` of the request's ``inputs`` (any text turns every value into a string, a null or
    a ragged list makes an object array), a bare ``[]`` for an empty list, or a DataFrame for
    the ``dataframe_*`` formats.
    """
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.to_numpy()
    if isinstance(model_input, dict):
        raise _bad_input(f"input: got an object with keys {sorted(map(str, model_input))[:5]}; expected {EXPECTED}")
    with warnings.catch_warnings():  # NumPy warns before making an object array of a ragged list
        warnings.simplefilter("ignore", np.VisibleDeprecationWarning)
        array = np.asarray(model_input)
    if array.ndim == 0:
        raise _bad_input(f"input: got a single value ({array.item()!r:.40}); expected {EXPECTED}")
    if array.size == 0:
        raise _bad_input(f"input: there are no images; expected {EXPECTED}")
    if len(array) > MAX_BATCH:
        raise _bad_input(f"input: {len(array)} images in one request; expected {EXPECTED} "
                         "(send larger sets in several requests)")
    if array.dtype.kind in "US":
        raise _bad_input(f"input: images contain text ({array.flat[_first_text(array)]!r}); expected {EXPECTED}")
    if array.dtype == object:
        array = _numbers(array)
    if array.dtype.kind == "f" and np.isfinite(array).all() and (array != np.round(array)).any():
        fraction = array[array != np.round(array)][0]
        raise _bad_input(f"input: images contain {fraction!r}, not a whole number; expected {EXPECTED}")
    try:
        return check_images(array, "input", exact_dtype=False)
    except DataError as e:
        raise _bad_input(str(e)) from None


def _first_text(array: np.ndarray) -> int:
    """Index of the first value that is no number as JSON writes it: one string in a request makes
    NumPy turn every value into text, so the string that did it is the one that is not a number."""
    for i, value in enumerate(array.flat):
        if not _JSON_NUMBER.fullmatch(str(value)):
            return i
    return 0  # numbers sent as strings


def _numbers(array: np.ndarray) -> np.ndarray:
    """An object array (nulls, nested lists of unequal length, huge integers) as float64, or refused."""
    for value in array.flat:
        if isinstance(value, (list, tuple, np.ndarray)):
            raise _bad_input(f"input: images or rows of different sizes; expected {EXPECTED}")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise _bad_input(f"input: images contain {value!r}; expected {EXPECTED}")
    try:
        return array.astype(np.float64)
    except OverflowError:
        raise _bad_input(f"input: an image value is too large for a number; expected {EXPECTED}") from None


def _bad_input(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def predictions_frame(probabilities: np.ndarray) -> pd.DataFrame:
    labels = probabilities.argmax(axis=1)
    return pd.DataFrame({
        "label": labels.astype(np.int64),
        "class_name": [CLASS_NAMES[i] for i in labels],
        "probabilities": [row.tolist() for row in probabilities],
    })


class LegoClassifier(mlflow.pyfunc.PythonModel):
    """Serves a network exported by ``export_net``: raw images in, named classes out."""

    def load_context(self, context):
        from mxnet import gluon

        with warnings.catch_warnings():  # MXNet warns that the input's dtype is not declared
            warnings.simplefilter("ignore", UserWarning)
            self.net = gluon.nn.SymbolBlock.imports(
                context.artifacts["symbol"], ["data"], context.artifacts["params"])

    def predict(self, context, model_input: np.ndarray, params=None):
        from legoexp.evaluate import predict_proba

        return predictions_frame(predict_proba(self.net, to_images(model_input)))


def export_net(net, directory: Path) -> dict[str, str]:
    """Write the network as MXNet symbol + params files; return them as pyfunc artifacts."""
    from legoexp.model import normalise

    net.hybridize()
    net(normalise(np.zeros((1, 48, 48), np.uint8)))  # a forward pass builds the graph to export
    prefix = Path(directory) / "lego-mlp"
    net.export(str(prefix), epoch=0)
    return {"symbol": f"{prefix}-symbol.json", "params": f"{prefix}-0000.params"}


def pip_requirements() -> list[str]:
    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "mxnet", "numpy", "pandas")]


def log_model(net, input_example, name: str = "model"):
    """Log ``net`` as a LegoClassifier pyfunc; returns MLflow's ModelInfo (``model_uri``). The requirements
    are explicit, because MLflow's inference of them is slow and, for MXNet, fails."""
    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(PACKAGE_DIR / "pyfunc_model.py"),
            artifacts=export_net(net, tmp),
            code_paths=[str(PACKAGE_DIR)],
            signature=SIGNATURE,
            input_example=input_example,
            pip_requirements=pip_requirements(),
        )
