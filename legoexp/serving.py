"""The import path of the logged model's class in models logged before the package had sub-packages.

Such a model's ``python_model`` file says ``from legoexp.serving import LegoClassifier``; it now
lives in ``legoexp.tracking.pyfunc``.
"""

from legoexp.tracking.pyfunc import LegoClassifier

__all__ = ["LegoClassifier"]
