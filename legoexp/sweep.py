"""``python -m legoexp.sweep`` (``mlflow run . -e sweep``): an Optuna study, best vs baseline, registry.

Each trial is scored by stratified k-fold cross-validation of the training split only (the test
split is not even read until the search is over), reports every fold to the pruner, and is an
MLflow child run of one parent run per study. Then the baseline and the best configuration are
trained with the same seeds and compared once on the test split (a ``comparison`` child run),
and the best configuration's median-seed model is registered with alias ``challenger``.
``--trials`` counts finished trials of the study, so rerunning the command after an interrupt or
a crash runs only what is missing.
"""

import argparse
import contextlib
import gc
import math
import sys
import time
from pathlib import Path

from legoexp import config
from legoexp.errors import ConfigError, UserError, first_line
from legoexp.ops import timings
from legoexp.ops.command import run_main

SETTINGS = config.settings("sweep")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m legoexp.sweep",
        description="Search hidden sizes, learning rate and batch size around the lab's baseline with "
                    "Optuna (cross-validated on the training split), log every trial to MLflow, compare "
                    "the best with the baseline on the test split over several seeds, register it.",
        epilog="Defaults: conf/sweep.yaml, search space: conf/search_space.yaml. Rerun the same command "
               "to resume an interrupted study.")
    config.add_options(p, "sweep")
    p.add_argument("--worker", action="store_true",
                   help="only run trials of an existing study under its parent run, then exit (what --jobs "
                        "starts, and what other machines run; see docs/scale-out.md)")
    p.add_argument("--parent-run-id", help="with --worker: the parent run (default: the study's)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (in a terminal) or progress lines (in a log) for trials and fits")
    p.add_argument("--spawned", action="store_true", help=argparse.SUPPRESS)  # a worker --jobs started
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # its main sweep's, as time.time()
    return p.parse_args(argv)


def main(argv=None) -> int:
    started = time.perf_counter()
    # The collector would walk every object MLflow, Optuna and MXNet create while they load, again and
    # again, for no cycle worth freeing (docs/performance.md). It waits for the imports, which are then
    # frozen out of its way (see after the startup lap).
    gc.disable()
    args = parse_args(argv)
    cfg = config.resolve("sweep", SETTINGS, args.config, config.options(args, "sweep"))
    if cfg["select"] != "best" and cfg["trials"] < 2:
        raise ConfigError(f"select={cfg['select']!r} compares candidates: it needs trials >= 2, got trials={cfg['trials']}")
    # one deadline for the whole command, from its process's start; --jobs workers get it as --deadline
    deadline = args.deadline or (time.time() - timings.since_start() + cfg["timeout"] if cfg["timeout"] else math.inf)

    from legoexp.data import load_split, open_source
    from legoexp.study import design

    space = design.load_space(Path(cfg["search_space"]) if cfg["search_space"] else None)
    lab = config.defaults("baseline")
    baseline_point = {k: lab[k] for k in config.SEARCHED}
    baseline = config.sweep_config(cfg, baseline_point)
    design.check_contains(space, baseline_point, cfg["search_space"] or "conf/search_space.yaml")
    source = open_source(cfg["data"])
    train_split = load_split(source, "train")  # the test split is read only after the search
    smallest = int(min((train_split.labels == c).sum() for c in range(10)))
    if cfg["folds"] > smallest:
        raise ConfigError(f"folds={cfg['folds']}: the smallest class of {train_split.where} has only "
                          f"{smallest} images; expected folds <= {smallest}")

    from legoexp.study import folds

    # started first: its workers load MXNet while this process loads MLflow and sets up
    runner = folds.FoldRunner(train_split.images, train_split.labels, folds.worker_count(cfg["folds"], cfg["jobs"]))

    import mlflow
    from optuna.trial import TrialState

    from legoexp import tracking
    from legoexp.access import rights
    from legoexp.comparison import report
    from legoexp.ops import faults, logs
    from legoexp.selection import rescore
    from legoexp.study import summary, workers
    from legoexp.study.search import Search
    from legoexp.study.storage import StudyLock, open_storage, storage_label

    logs.cover()  # MLflow's log handlers, made as it loaded: the resource errors it logs are reported in one line
    timings.lap("startup")
    gc.freeze()
    gc.enable()
    try:
        # the rights it needs on the tracking server: refused now, not when registering after the search
        rights.check_sweep(cfg["experiment_name"], None if args.worker else cfg["model_name"])
        store_dir = tracking.store_directory()
        lock = StudyLock(cfg["storage"], store_dir, cfg["heartbeat"])
        # processes started at the same instant set up one at a time: one schema, study, experiment, parent run
        with lock(first=True):
            storage = open_storage(cfg["storage"], store_dir, cfg["heartbeat"])  # a bad URL fails before anything is created
            tracking.use_experiment(cfg["experiment_name"])
            search = Search(cfg, space, baseline, source, train_split, storage,
                            storage_label=storage_label(cfg["storage"], store_dir), lock=lock, runner=runner,
                            deadline=deadline)
            if not args.worker:
                search.open_parent()
    except BaseException:
        runner.close()
        raise
    command = workers.worker_command(cfg, deadline)
    if args.worker:
        with contextlib.closing(runner):
            search.join(args.parent_run_id)
            if cfg["jobs"] > 1 and not args.spawned:  # N workers on this machine, none here
                workers.run_workers(cfg["jobs"], command, search.parent.run_id, lambda: None)
            else:
                search.work()
        return 0
    with contextlib.closing(runner), search.parent_run():
        timings.lap("setup")
        search.run(cfg["jobs"], command, quiet=args.quiet)
        timings.lap("search")
        faults.point("search.done")
        if not search.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            raise UserError(f"no trial of study {cfg['study_name']!r} completed (all pruned or failed, or none "
                            "started within --timeout); give it more trials or time, then rerun the same command")
        finished = report.Finished(search.study, search.parent.run_id, search.parent.experiment_id, baseline,
                                   seeds=list(range(cfg["seed"], cfg["seed"] + cfg["seeds"])),
                                   model_name=cfg["model_name"], train_split=train_split,
                                   provenance=search.provenance, runner=runner)
        with lock():  # one of the sweeps sharing the study reports; the others find it done
            # the candidates are re-scored by the fold workers while this process draws the figures
            pending = rescore.Pending(search.study, cfg, train_split, runner, search.parent.run_id,
                                      search.parent.experiment_id)
            if pending.known is not None and report.needs_comparison(finished, pending.known):
                report.start_comparison(finished, pending.known)  # the pick is known: its fits go out too
            summary.log_study(search.study, search.parent.run_id, search.parent.experiment_id)
            timings.lap("figures")
            choice = pending.finish()
            print(("\n" + choice.table() if len(choice.candidates) > 1 else "") + "\n" + choice.summary())
            if report.needs_comparison(finished, choice.chosen):
                report.start_comparison(finished, choice.chosen)
                # the first read of the test split
                report.compare_and_register(finished, choice, load_split(source, "test"), quiet=args.quiet)
            else:
                print(f"trial {choice.chosen.number} was already compared and registered; nothing left to do",
                      file=sys.stderr)
            # where this run's seconds went; and its CPU: this process's, and the fits' and folds' in the workers
            tracking.log_metrics(search.parent.run_id, timings.metrics() | {
                "cpu_main_s": time.process_time(), "cpu_training_s": runner.training_cpu_s})
    print(f"done in {time.perf_counter() - started:.1f} s; see it: mlflow ui --backend-store-uri "
          f"{mlflow.get_tracking_uri()}  then open {search.parent.url}", file=sys.stderr)
    return 0


def main_or_storage_error(argv=None) -> int:
    """``main``, with a storage or tracking store that goes away, a write that runs out of room or is
    refused (a full disk, a read-only file system, permission denied: ``ops.resources``), or a fold
    worker that dies mid-sweep, reported in one line (a rerun resumes). Meanwhile the log records in
    which MLflow (or Optuna) prints such a resource error with its traceback are dropped
    (``logs.quiet``): that line reports it."""
    gc.disable()  # see main
    # MLflow and Optuna are loaded by main, after it has started the fold workers (which load MXNet
    # meanwhile), and here only once an error needs them
    from legoexp.ops import logs, resources

    def places() -> resources.Places:  # what this sweep writes to, to name it; asked only after an error
        import mlflow

        from legoexp import tracking

        try:
            from legoexp.study.storage import storage_label

            args = parse_args(argv)
            cfg = config.resolve("sweep", SETTINGS, args.config, config.options(args, "sweep"))
            storage = storage_label(cfg["storage"], tracking.store_directory())
        except (Exception, SystemExit):
            storage = None
        return resources.Places(mlflow.get_tracking_uri(), mlflow.get_registry_uri(), storage)

    silenced = None
    try:
        with logs.quiet() as silenced:
            code = main(argv)
    except UserError:
        raise  # worded already
    except Exception as e:
        from concurrent.futures.process import BrokenProcessPool

        import optuna
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import OperationalError

        from legoexp import tracking

        shortage = resources.find(e, places())
        if shortage is None and silenced is not None and silenced.first is not None and \
                isinstance(e, (MlflowException, optuna.exceptions.StorageInternalError, OperationalError)):
            shortage = resources.find(silenced.first, places())  # what MLflow logged and legoexp did not see
        if shortage is not None:
            raise shortage.error() from None
        if isinstance(e, BrokenProcessPool):
            raise UserError("a fold-training worker process died (killed, or out of memory); rerun the same "
                            "command to resume") from None
        if isinstance(e, (optuna.exceptions.StorageInternalError, OperationalError)):
            raise UserError(f"the Optuna storage failed ({first_line(e.__cause__ or e)}); when it is reachable "
                            "again, rerun the same command to resume") from None
        if isinstance(e, MlflowException):
            raise tracking.store_failure(e) from None
        raise
    if silenced.first is not None:  # an error MLflow logged, which the sweep went on without
        shortage = resources.find(silenced.first, places())
        print(f"warning: {silenced.dropped} error(s) of MLflow not shown, the first: writing {shortage.what} "
              f"failed: {shortage.reason}; the sweep went on", file=sys.stderr)
    return code


if __name__ == "__main__":
    run_main(main_or_storage_error)
