"""The served champion, end to end: baseline -> lego-classifier@champion -> `mlflow models serve` -> HTTP.

One tracking store and one real server process for the whole module, on generated data. The store
is the module's own, so the champion it serves is the one registered here whatever other tests do
to theirs.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import run_module
from mlflow.tracking import MlflowClient

from legoexp.data import load_split, open_source
from legoexp.tracking.pyfunc import MAX_BATCH

MODEL = "lego-classifier"
CHAMPION = f"models:/{MODEL}@champion"

@pytest.fixture(scope="module")
def test_split():
    return load_split(open_source("synthetic"), "test")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The user's path on generated data: a baseline, a small sweep, and its challenger promoted to
    lego-classifier@champion; ``logged_accuracy`` is the champion's own logged test accuracy."""
    directory = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{directory}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           # `mlflow models serve` starts `uvicorn` through bash: the venv's bin/ must be on PATH
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for module, *args in (("legoexp.baseline", "--epochs", "3"),
                          ("legoexp.sweep", "--trials", "3", "--folds", "2", "--seeds", "2", "--epochs", "3"),
                          ("legoexp.promote", "--tolerance", "1")):  # a 2-seed smoke study: pass any result
        proc = run_module(module, *args, "--experiment-name", "serving", env=env, cwd=directory)
        assert proc.returncode == 0, f"{module}: {proc.stderr}"
    client = MlflowClient(tracking_uri=uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    history = client.get_metric_history(champion.tags["comparison_run_id"], "best_test_accuracy")
    logged = next(m.value for m in history if m.step == int(champion.tags["seed"]))
    return SimpleNamespace(directory=directory, uri=uri, env=env, logged_accuracy=logged)


@contextlib.contextmanager
def _tracking(uri):
    """This process on ``uri`` for a moment; MLflow keeps the URI in a global and in the environment."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status


def _port_open(port) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def server(store):
    """A real `mlflow models serve` of the champion; stopped with SIGTERM, even when a test failed."""
    port = _free_port()
    log_path = store.directory / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            env=store.env, cwd=store.directory, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # the CLI and the uvicorn it starts: one process group to stop
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no answer on /ping after 180 s:\n{log_path.read_text()}"
            with contextlib.suppress(OSError):
                if _get(f"http://127.0.0.1:{port}/ping", timeout=2) == 200:
                    break
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"the server did not stop within 30 s of SIGTERM:\n{log_path.read_text()}")
        deadline = time.monotonic() + 30
        while _port_open(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.returncode is not None and not _port_open(port), log_path.read_text()


def _post(url, body, content_type="application/json"):
    data = body if isinstance(body, bytes) else body.encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _inputs(value) -> str:
    return json.dumps({"inputs": value})


@pytest.mark.slow
def test_the_served_champion_answers_the_150_test_images_as_the_model_does_in_process(server, store, test_split):
    import mlflow

    status, body = _post(server, _inputs(test_split.images.tolist()))
    assert status == 200, body
    served = json.loads(body)["predictions"]
    assert len(served) == 150 and set(served[0]) == {"label", "class_name", "probabilities"}

    with _tracking(store.uri):
        expected = mlflow.pyfunc.load_model(CHAMPION).predict(test_split.images)
        logged = store.logged_accuracy
    assert [p["label"] for p in served] == expected["label"].tolist()
    assert [p["class_name"] for p in served] == expected["class_name"].tolist()
    assert np.allclose([p["probabilities"] for p in served], expected["probabilities"].tolist(), rtol=0, atol=1e-12)
    labels = np.array([p["label"] for p in served])
    assert (labels == test_split.labels).mean() == logged

    status, body = _post(server, _inputs(test_split.images[:5, :, :, None].tolist()))  # the (N, 48, 48, 1) layout
    assert status == 200 and [p["label"] for p in json.loads(body)["predictions"]] == labels[:5].tolist()


def _with(value):
    images = np.zeros((2, 48, 48), np.int64).astype(object)
    images[1, 7, 9] = value
    return images.tolist()


EXPECTED = f"expected 1..{MAX_BATCH} images of shape (N, 48, 48) or (N, 48, 48, 1) with integer values 0..255"
MALFORMED = {
    "wrong shape": (_inputs(np.zeros((2, 28, 28), int).tolist()), "images have shape (2, 28, 28); expected"),
    "flattened images": (_inputs(np.zeros((2, 2304), int).tolist()), "images have shape (2, 2304); expected"),
    "one image without the batch axis": (_inputs(np.zeros((48, 48), int).tolist()), "images have shape (48, 48)"),
    "images of different sizes": (_inputs([np.zeros((48, 48), int).tolist(), np.zeros((47, 48), int).tolist()]),
                                  f"images or rows of different sizes; {EXPECTED}"),
    "a value above 255": (_inputs(_with(300)), "image values range 0..300; expected integers 0..255"),
    "a negative value": (_inputs(_with(-1)), "image values range -1..0; expected integers 0..255"),
    "a fraction": (_inputs(_with(1.5)), f"images contain 1.5, not a whole number; {EXPECTED}"),
    "NaN as JSON's NaN literal": (_inputs(_with(float("nan"))), "images contain NaN or inf; expected"),
    "NaN as a string": (_inputs(_with("NaN")), f"images contain text ('NaN'); {EXPECTED}"),
    "a string": (_inputs(_with("brick")), f"images contain text ('brick'); {EXPECTED}"),
    "a null": (_inputs(_with(None)), f"images contain None; {EXPECTED}"),
    "an empty list": (_inputs([]), f"there are no images; {EXPECTED}"),
    "a single number": (_inputs(5), f"got a single value (5); {EXPECTED}"),
    "a mapping instead of images": (_inputs({"images": []}), f"got an object with keys ['images']; {EXPECTED}"),
    "more than MAX_BATCH images": (_inputs(np.zeros((MAX_BATCH + 1, 48, 48), np.uint8).tolist()),
                                   f"{MAX_BATCH + 1} images in one request; {EXPECTED}"),
    "not JSON at all": ("this is not JSON", "Ensure that input is a valid JSON formatted string"),
    "no 'inputs' key": (json.dumps({"images": []}),
                        "The input must be a JSON dictionary with exactly one of the input fields"),
    "a bare list": (json.dumps([[0] * 48] * 48), "The input must be a JSON dictionary"),
}


@pytest.mark.slow
@pytest.mark.parametrize("payload", MALFORMED)
def test_a_malformed_request_gets_a_400_that_says_what_was_expected(server, payload):
    body, message = MALFORMED[payload]
    status, answer = _post(server, body)
    assert status == 400, answer
    assert message in json.loads(answer)["message"]
    assert _get(f"{server}/ping") == 200  # and the server goes on


@pytest.mark.slow
def test_a_request_that_is_not_json_by_content_type_gets_a_415_naming_the_types(server):
    status, answer = _post(server, "0,1,2", content_type="text/plain")
    assert status == 415 and "application/json" in answer


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="MLflow 3.17's server decodes JSON with json.loads and catches only "
                                       "JSONDecodeError, so nesting deeper than Python's recursion limit is a 500")
def test_json_nested_deeper_than_the_recursion_limit_gets_a_4xx(server):
    status, _ = _post(server, '{"inputs": ' + "[" * 5000 + "]" * 5000 + "}")
    assert _get(f"{server}/ping") == 200
    assert 400 <= status < 500


@pytest.mark.slow
def test_predict_without_model_uses_the_champion_and_matches_the_logged_accuracy(store, test_split, tmp_path):
    path = tmp_path / "test.npz"
    np.savez(path, images=test_split.images, labels=test_split.labels)
    proc = run_module("legoexp.predict", path, env=store.env, cwd=store.directory)
    assert proc.returncode == 0, proc.stderr
    right = int(re.search(r"^accuracy \S+ \((\d+)/150\)$", proc.stdout, re.M).group(1))
    logged = store.logged_accuracy
    assert right / 150 == logged
