"""legoexp: the LEGO brick lab as a reproducible MLflow + Optuna study.

Loading the package also keeps MXNet from loading scikit-learn and SciPy while MXNet itself loads:
it takes them only where it can do without them, for parts legoexp never uses (the legacy
``mxnet.model.FeedForward`` subclasses scikit-learn's ``BaseEstimator``; quantization calibration
and SciPy sparse matrices). That saves seconds in every process that loads MXNet (each fold
process, a served model; docs/performance.md); both import as usual afterwards.
"""

import sys


class _NoScikitLearnWhileMXNetLoads:
    def find_spec(self, name, path=None, target=None):
        spec = getattr(sys.modules.get("mxnet"), "__spec__", None)
        if name.partition(".")[0] in ("sklearn", "scipy") and getattr(spec, "_initializing", False):
            raise ImportError(f"{name} is not loaded while MXNet loads (see legoexp/__init__.py)")
        return None  # the usual finders take it from here


sys.meta_path.insert(0, _NoScikitLearnWhileMXNetLoads())
