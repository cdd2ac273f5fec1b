"""The README's pictures of the MLflow UI and optuna-dashboard, made from a fresh small study.

    pip install -e '.[docs]'      # Playwright's Python driver and optuna-dashboard
    apt-get install chromium      # the browser Playwright drives: nothing is downloaded
    python docs/pictures.py       # writes docs/ui-*.png

In a temporary directory it runs a baseline, a 16-trial sweep and a forced promotion on the
generated data, starts a throwaway ``mlflow ui`` and ``optuna-dashboard`` on them (127.0.0.1,
free ports), and has headless Chromium photograph: the runs table with the study unfolded and the
columns hidden1, hidden2, lr, batch_size, val_accuracy and state; the compare view's parallel
coordinates of the complete trials on val_accuracy; the registered model's versions with their
aliases and evidence tags; and in optuna-dashboard the study and its best trial, whose user
attributes link it to its MLflow run. MLflow's Assistant panel is kept closed
(its own "already opened once" and "closed" settings are set before the page loads), and no
column or page shown holds a path of this machine. Both servers stop when it ends.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1400, "height": 900}
STUDY = ["--trials", "16", "--folds", "5", "--epochs", "4", "--seeds", "3", "--quiet"]
COLUMNS = ["params.`hidden1`", "params.`hidden2`", "params.`lr`", "params.`batch_size`", "metrics.`val_accuracy`",
           "tags.`state`"]
# MLflow 3.17 keeps these in the browser's localStorage: the Assistant panel shut and never auto-opened,
# the side menu of model training rather than GenAI
BROWSER_SETTINGS = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false",
                    "mlflow.workflowType_v1": json.dumps("machine_learning")}
HIDE_ASSISTANT_BUTTON = "*:has(> .assistant-fab-label) { display: none !important; }"


def run(env, cwd, module, *args):
    subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(command, port, ready, cwd, env):
    """``command`` listening on ``port`` until the block ends; it and its workers are one process group."""
    with open(cwd / f"server-{port}.log", "wb") as log:
        process = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)], cwd=cwd, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready}", timeout=5):
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start: see {log.name}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def study_runs(uri):
    """The experiment id, the sweep's parent run id, the complete trials' run ids, the best trial's number."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("legoexp").experiment_id
    runs = client.search_runs([experiment], "tags.`legoexp.kind` != 'baseline'")
    parent = next(r for r in runs if r.data.tags["legoexp.kind"] == "sweep")
    complete = [r.info.run_id for r in runs if r.data.tags.get("state") == "complete"]
    return experiment, parent.info.run_id, complete, parent.data.tags["best_trial"]


def photograph(browser, url, path, settings, wait_for, prepare=None, height=VIEWPORT["height"]):
    context = browser.new_context(viewport={**VIEWPORT, "height": height})
    context.add_init_script(f"for (const [k, v] of Object.entries({json.dumps(settings)})) localStorage.setItem(k, v);")
    page = context.new_page()
    page.goto(url)
    page.get_by_text(wait_for, exact=True).filter(visible=True).first.wait_for(timeout=60_000)
    page.add_style_tag(content=HIDE_ASSISTANT_BUTTON)
    if prepare:
        prepare(page)
    page.wait_for_timeout(1500)  # charts draw after their data arrives
    page.screenshot(path=str(path))
    context.close()
    print(f"wrote {path.relative_to(ROOT)}")


def choose(page, select_id, wanted):
    """Make a multi-select of the compare view hold exactly ``wanted``: remove the others, type in the rest."""
    select = page.locator(f".du-bois-light-select:has(#{select_id})")
    items = select.locator(".du-bois-light-select-selection-item")
    while extra := [item for item in items.all() if item.inner_text() not in wanted]:
        extra[0].locator(".du-bois-light-select-selection-item-remove").click()
    for name in wanted:
        if name not in [item.inner_text() for item in items.all()]:
            select.click()
            page.keyboard.type(name)
            page.locator(f".du-bois-light-select-item-option[title='{name}']:visible").click()
    page.keyboard.press("Escape")
    page.evaluate("document.activeElement.blur()")


def main() -> int:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="legoexp-pictures-") as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work}/mlflow.db"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": uri,
               "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # `mlflow ui` without its GenAI job runner
        print(f"a baseline, a sweep ({' '.join(STUDY)}) and a promotion on the generated data, in {work}")
        run(env, work, "legoexp.baseline", "--epochs", "4")
        run(env, work, "legoexp.sweep", *STUDY)
        run(env, work, "legoexp.promote", "--force")
        experiment, parent, complete, best = study_runs(uri)
        table_state = {"searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False,
                       "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [],
                       "modelVersionFilter": "All Runs", "selectedColumns": COLUMNS, "runsExpanded": {parent: True}}
        runs_settings = {**BROWSER_SETTINGS,
                         f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment}"]-ReactComponentState':
                             json.dumps(table_state)}
        with server(["mlflow", "ui", "--backend-store-uri", uri, "--workers", "1"], free_port(), "/health", work,
                    env) as ui, \
                server(["optuna-dashboard", "optuna.journal"], free_port(), "/api/studies", work, env) as dashboard, \
                sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            photograph(browser, f"{ui}/#/experiments/{experiment}/runs", DOCS / "ui-runs.png", runs_settings,
                       "trial-000", height=960)  # every row, the baseline's too
            compare = urllib.parse.urlencode({"runs": json.dumps(complete), "experiments": json.dumps([experiment])})
            photograph(browser, f"{ui}/#/compare-runs?{compare}", DOCS / "ui-compare-trials.png", BROWSER_SETTINGS,
                       "Parallel Coordinates Plot",
                       lambda page: (choose(page, "dubois-select-1", ["hidden1", "hidden2", "lr", "batch_size"]),
                                     choose(page, "dubois-select-2", ["val_accuracy"])))
            photograph(browser, f"{ui}/#/models/lego-classifier", DOCS / "ui-model.png", BROWSER_SETTINGS,
                       "@ champion", height=1180)  # both versions, all their tags
            photograph(browser, f"{dashboard}/dashboard/studies/0", DOCS / "ui-optuna-dashboard.png", {}, "History")
            photograph(browser, f"{dashboard}/dashboard/studies/0/trials?numbers={best}", DOCS / "ui-optuna-trial.png",
                       {}, "User Attributes")
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
