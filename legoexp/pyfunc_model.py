"""The file MLflow runs to rebuild the logged model (models-from-code: no pickled Python object)."""

import mlflow

from legoexp.tracking.pyfunc import LegoClassifier

mlflow.models.set_model(LegoClassifier())
