"""The README, run as written: its commands on the generated data, in order, in a copy of the checkout.

The shell blocks of the sections in ``RUN`` are read from README.md itself, so they cannot drift
from what the tests run. Each line (with its ``\\`` continuations) is one command, expected to exit
0 unless its comment says ``exit N``; a command ending in ``&`` runs in the background until a
later ``kill %1``. The example outputs of README.md and docs/*.md headed ``<!-- output of: COMMAND
-->`` are compared with what COMMAND printed (tests/test_docs.py says how they are read). Only the port of the served model changes (to a free one). ``python
tests/test_readme.py DIR`` runs the same commands in DIR (e.g. a fresh clone, in its venv) and
prints each one's exit status and wall time.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PATH_SECTION = "## The whole path, step by step"
UV_SECTION = "## Isolated environments: `--env-manager uv`"
SERVE_PORT = "5001"
MARK = "::readme-command::"  # a line of the output log before the output of each command: MARK N


def section(heading: str, text: str | None = None) -> str:
    """The README's text from ``heading`` to the next heading of the same level."""
    text = README.read_text() if text is None else text
    start = text.index(f"\n{heading}\n") + 1
    level = heading.split(" ")[0] + " "
    ends = [m.start() for m in re.finditer(rf"^{level}", text[start + 1:], re.M)]
    return text[start:start + 1 + ends[0]] if ends else text[start:]


def commands(text: str) -> list[str]:
    """The commands of the ```bash blocks in ``text``, continuation lines joined."""
    found = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        for command in re.sub(r"\\\n\s*", "", block).splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                found.append(command.strip())
    return found


def expected_status(command: str) -> int:
    """0, or N when the command's comment says ``exit N``."""
    comment = re.search(r"\s#\s.*$", command)
    status = re.search(r"\bexit (\d+)", comment.group()) if comment else None
    return int(status.group(1)) if status else 0


def run_commands(commands_: list[str], cwd: Path, env: dict, timeout: float) -> list[tuple[str, int, float]]:
    """Run the commands in one bash, in order (background jobs and files carry over as in a terminal);
    return (command, exit status, seconds) for each that ran. Every process it started is stopped after."""
    from services import Service  # stops a whole process group, servers started with `&` included

    script, results = cwd / ".readme-commands.sh", cwd / ".readme-status"
    lines = []
    for i, command in enumerate(commands_):
        lines += [f"printf '\\n{MARK} {i}\\n'", "start=$(date +%s.%N)", command,
                  f'echo "$? $start $(date +%s.%N)" >> {results}']
    script.write_text("\n".join(lines) + "\n")
    results.unlink(missing_ok=True)
    log = cwd / ".readme-output.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(["bash", str(script)], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        Service("", process, log, "the README's commands").stop()
    statuses = results.read_text().splitlines() if results.exists() else []
    return [(command, int(status), float(end) - float(start))
            for command, (status, start, end) in zip(commands_, (line.split() for line in statuses))]


def outputs(log: str) -> dict[int, str]:
    """What each command printed, by its index, from a log of ``run_commands`` (a server started with
    ``&`` goes on printing into the outputs of the commands after it). A log that later runs appended
    to (the uv section's) gives the first run's."""
    parts = re.split(rf"^{re.escape(MARK)} (\d+)$", log, flags=re.M)
    found: dict[int, str] = {}
    for i, text in zip(parts[1::2], parts[2::2]):
        found.setdefault(int(i), text)
    return found


def table(results) -> str:
    return "\n".join(f"{status:>4}  {seconds:7.1f} s  {command}" for command, status, seconds in results)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the checkout's tracked files, as a fresh clone has them."""
    copy = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            if (ROOT / name).is_file():
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, copy / name)
    else:  # not a git checkout: everything but what .gitignore names
        shutil.copytree(ROOT, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "mlflow.db", "mlruns", "mlartifacts",
            "optuna*.db", "*.journal", "generated", "predictions", "request.json"))
    return copy


@pytest.fixture(scope="module")
def user_env(checkout) -> dict:
    """A user's shell in the venv: no MLflow settings (the default ./mlflow.db), this venv's commands on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(checkout)  # the copy's code, whichever checkout the venv was installed from
    return env


def _check(results, expected_commands):
    ran = [command for command, _, _ in results]
    assert len(ran) == len(expected_commands), f"stopped after:\n{table(results)}"
    wrong = [(c, s) for c, s, _ in results if s != expected_status(c)]
    assert not wrong, f"unexpected exit statuses {wrong}:\n{table(results)}"


@pytest.fixture(scope="module")
def walked(checkout, user_env):
    """The README's path run in the copy: (commands, results, output)."""
    from conftest import require
    from services import free_port

    require(shutil.which("curl") is not None, "curl is not installed (the README's serve step uses it)")
    port = str(free_port())
    path = [re.sub(rf"\b{SERVE_PORT}\b", port, c) for c in commands(section(PATH_SECTION))]
    results = run_commands(path, checkout, user_env, timeout=1200)
    print(table(results))
    return path, results, (checkout / ".readme-output.log").read_text(errors="replace")


@pytest.mark.slow
def test_the_readme_path_runs_as_written_with_the_exit_statuses_it_states(walked, checkout):
    path, results, output = walked
    _check(results, path)
    assert "Registered model alias champion not found." in output and \
        "--model models:/lego-classifier@challenger" in output  # the hint the README promises
    assert '"predictions": [{"label": ' in output  # the served model answered
    assert "IDENTICAL: all" in output


@pytest.mark.slow
def test_every_example_output_of_the_readme_and_docs_is_what_its_command_printed(walked):
    """The blocks headed ``<!-- output of: COMMAND -->`` in README.md and docs/*.md (see test_docs.py)
    against what COMMAND printed on the path: seed-determined numbers exactly (the baseline's
    test_accuracy, the trials' val_accuracy, the comparison, the reproduced values and their count),
    seconds as ``N.N``, ids as any id."""
    from test_docs import command_index, output_blocks, unmatched

    path, results, output = walked
    printed = outputs(output)
    checked = [block for block in output_blocks() if block["command"]]
    assert checked
    wrong = {}
    for block in checked:
        i = command_index(block)
        missing = unmatched(block["body"], printed.get(i, ""))
        if missing:
            wrong[f"{block['page']}:{block['line']} ({path[i]})"] = missing
    assert not wrong, "example lines the command did not print:\n" + "\n".join(
        f"{where}:\n    " + "\n    ".join(lines) for where, lines in wrong.items())
    sweep = printed[next(i for i, c in enumerate(path) if "legoexp.sweep" in c)]  # the progress lines' shape
    assert re.search(r"^trial 5 +complete +val_accuracy \d\.\d{4}  best \d\.\d{4} \(trial \d+\) +"
                     r"elapsed +\d+\.\d s  0 left$", sweep, re.M), sweep
    assert re.search(r"^fit 6/6  best seed 44: test_accuracy \d\.\d{4} +elapsed +\d+\.\d s  0 left$", sweep, re.M)


@pytest.mark.slow
def test_the_isolated_environments_of_the_readme_run_with_uv(walked, checkout, user_env):
    from conftest import require

    require(shutil.which("uv", path=user_env["PATH"]) is not None, "uv is not installed (pip install -e '.[test]')")
    uv = commands(section(UV_SECTION))
    assert any("mlflow run" in c for c in uv) and any("mlflow models predict" in c for c in uv)
    results = run_commands(uv, checkout, user_env, timeout=1200)  # after the path: its model, its request.json
    print(table(results))
    _check(results, uv)
    output = (checkout / ".readme-output.log").read_text(errors="replace")
    assert "using uv" in output and output.count('"predictions": [{"label": ') == 2


def test_every_mlflow_run_in_the_readme_logs_to_the_experiment_its_ui_link_opens():
    text = README.read_text()
    runs = [c for c in commands(text) if c.startswith("mlflow run ") or " mlflow run " in c]
    assert runs and all("--experiment-name legoexp" in c for c in runs), runs
    assert "http://127.0.0.1:5000/#/experiments/1/runs" in text  # legoexp is experiment 1 in a new store


def test_the_readme_names_no_machine_paths_and_no_test_count_that_goes_stale():
    text = README.read_text()
    assert not re.search(r"/work/|/root/|/home/|/tmp/", text)
    assert not re.search(r"\b\d+ tests\b", text)
    setup, tests = commands(text)[:2]  # the README's first block
    assert setup.endswith("mlflow run . -e baseline --env-manager local --experiment-name legoexp")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3.11")]
    assert ci == [tests]  # CI runs the README's test command verbatim


if __name__ == "__main__":  # python tests/test_readme.py DIR: the README's commands in DIR, timed
    sys.path.insert(0, str(Path(__file__).parent))
    where = Path(sys.argv[1]).resolve()
    done = []
    for heading in (PATH_SECTION, UV_SECTION):
        done += run_commands(commands(section(heading)), where, dict(os.environ), timeout=3600)
    print(table(done))
    print(f"output: {where / '.readme-output.log'} (the last section's)")
