"""The logged model: an MLflow pyfunc that takes raw lab images and answers with named classes.

The ``mlflow.gluon`` flavor is gone from MLflow 3, so the trained network is exported as an
MXNet symbol + params pair and wrapped in ``LegoClassifier``, a ``PythonModel`` that re-imports
it with ``SymbolBlock.imports``. It takes images as the lab stores them, (N, 48, 48) or
(N, 48, 48, 1) with integer values 0..255, normalises them itself, and returns one row per image:
``label``, ``class_name`` and the 10 softmax ``probabilities``. Bad input is refused with an
MLflow INVALID_PARAMETER_VALUE error saying what was expected (a 400 when served).
"""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

from legoexp.classes import CLASS_NAMES
from legoexp.data import check_images
from legoexp.errors import DataError

MAX_BATCH = 10_000  # images per request; larger batches are refused rather than risk memory

# The input is declared as an object tensor because MLflow's tensor check insists on one rank
# and one dtype, while the model accepts both lab layouts and any integer or float encoding of
# 0..255 (JSON requests arrive as int64 or float64); ``to_images`` does the real checking.
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(object), (-1,))]),
    outputs=Schema([
        ColSpec("long", "label"),
        ColSpec("string", "class_name"),
        ColSpec(Array("double"), "probabilities"),
    ]),
)


def to_images(model_input) -> np.ndarray:
    """Return uint8 images (N, 48, 48) from a model input, or raise an MlflowException saying why."""
    try:
        if isinstance(model_input, pd.DataFrame):
            model_input = model_input.to_numpy()
        array = np.asarray(model_input)
        if array.dtype == object:
            array = np.array(array.tolist(), dtype=np.float64)
        if len(array) > MAX_BATCH:
            raise DataError(f"{len(array)} images in one request; at most {MAX_BATCH}")
        return check_images(array, "input", exact_dtype=False)
    except (ValueError, TypeError) as e:
        raise _bad_input(f"input: expected numbers 0..255 in (N, 48, 48) or (N, 48, 48, 1) ({e})")
    except DataError as e:
        raise _bad_input(str(e))


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
        import warnings

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
    from legoexp.train import normalise

    net.hybridize()
    net(normalise(np.zeros((1, 48, 48), np.uint8)))  # a forward pass builds the graph to export
    prefix = Path(directory) / "lego-mlp"
    net.export(str(prefix), epoch=0)
    return {"symbol": f"{prefix}-symbol.json", "params": f"{prefix}-0000.params"}
