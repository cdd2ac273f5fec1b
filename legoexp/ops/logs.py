"""MLflow's own logging of the errors that legoexp reports itself, in one line.

MLflow logs some resource errors with their whole traceback before raising them (its SQL store:
``mlflow.store.db.utils``). ``quiet`` drops, while a command runs, the log records that carry such
an error (one that ``resources.find`` finds), and only those: every other record passes.
"""

import contextlib
import logging

from legoexp.ops.resources import find


class Silenced(logging.Filter):
    """A log filter that drops the records carrying a resource error (one ``find`` finds) and keeps
    the first such error."""

    def __init__(self):
        super().__init__()
        self.first: BaseException | None = None
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        errors = [record.exc_info[1]] if record.exc_info and record.exc_info[1] is not None else []
        errors += [a for a in (record.args if isinstance(record.args, tuple) else ()) if isinstance(a, BaseException)]
        for e in errors:
            if find(e) is not None:
                self.first = self.first or e
                self.dropped += 1
                return False
        return True


LOGGERS = ("", "mlflow", "sqlalchemy.engine", "alembic", "optuna")  # those with handlers of their own


_active: list[tuple[Silenced, set]] = []  # the quiet() blocks open: their filter and the handlers it is on


@contextlib.contextmanager
def quiet():
    """``with quiet() as silenced:`` the handlers of MLflow's, SQLAlchemy's, Optuna's and the root
    logger (and Python's last-resort one) drop the records that carry a resource error; all others
    pass. ``silenced.first`` is the first error dropped. Handlers made later (MLflow makes its own
    when it loads) are covered once ``cover()`` is called."""
    silenced = Silenced()
    handlers: set = set()
    _active.append((silenced, handlers))
    try:
        cover()
        yield silenced
    finally:
        _active.remove((silenced, handlers))
        for h in handlers:
            h.removeFilter(silenced)


def cover() -> None:
    """Put the open ``quiet()`` blocks' filters on the handlers those loggers have now (call it after
    loading MLflow, Optuna or SQLAlchemy inside such a block)."""
    now = {h for name in LOGGERS for h in logging.getLogger(name).handlers} | {logging.lastResort}
    now.discard(None)
    for silenced, handlers in _active:
        for h in now - handlers:
            h.addFilter(silenced)
            handlers.add(h)
