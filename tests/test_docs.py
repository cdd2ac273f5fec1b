"""The docs cannot drift: README.md and docs/*.md, their links, their example outputs, their rules.

- Every relative link resolves: the file exists, and a ``#anchor`` names a heading of the target
  (GitHub's slugs: lowercase, punctuation but ``-`` and ``_`` dropped, spaces to ``-``).
- Every example output (a fenced block without a language; a block that is not output names
  its language, e.g. ```text for a diagram) is one of:
  (a) headed by ``<!-- output of: COMMAND -->``, COMMAND being one of the README's path
      commands: ``tests/test_readme.py`` runs it and compares the block with what it printed
      (``...`` stands for any text, a line ``...`` for any lines, ``N.N`` for a number of seconds,
      and a 32-digit hex id for any such id);
  (b) headed by a paragraph starting "Excerpt", and listed in ``EXCERPTS`` with the check of its
      stable figures.
- The README's rules hold for docs/*.md too: no machine paths, no test counts that go stale, and
  every ``mlflow run .`` logs to the experiment ``legoexp`` (its UI links open experiment 1).
"""

import re
from pathlib import Path

import pytest
from test_readme import PATH_SECTION, commands, section

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OUTPUT_OF = re.compile(r"^<!-- output of: (.*?) -->$")


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def fences(text: str) -> list[tuple[int, str, str]]:
    """The fenced blocks of a markdown text: (line index of the opening fence, language, body)."""
    found, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        opening = re.match(r"^(```+|~~~+)\s*(\S*)", lines[i])
        if opening:
            fence, start = opening.group(1), i
            i += 1
            while i < len(lines) and not lines[i].startswith(fence):
                i += 1
            found.append((start, opening.group(2), "\n".join(lines[start + 1:i])))
        i += 1
    return found


def without_blocks(text: str) -> str:
    """The text with its fenced blocks and HTML comments blanked out (no heading or link is in them)."""
    lines = text.split("\n")
    for start, _, body in fences(text):
        for k in range(start, start + body.count("\n") + 3 if body else start + 2):
            if k < len(lines):
                lines[k] = ""
    return re.sub(r"<!--.*?-->", "", "\n".join(lines), flags=re.S)


def spans(text: str) -> list[str]:
    """The code spans outside fenced blocks, a span broken over two lines joined."""
    return [" ".join(s.split()) for s in re.findall(r"(?<!`)`([^`]+)`(?!`)", without_blocks(text))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; the second of two equal ones gets -1, the third -2, as GitHub numbers them."""
    names = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", without_blocks(text), re.M):
        base, k = slug(heading), 0
        while (f"{base}-{k}" if k else base) in names:
            k += 1
        names.add(f"{base}-{k}" if k else base)
    return names


def links(text: str) -> list[str]:
    """The targets of the inline links and images of a markdown text, outside code."""
    prose = re.sub(r"(?<!`)`[^`]+`(?!`)", "``", without_blocks(text))
    return re.findall(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """What is wrong with the relative links of ``page`` (its text, or ``text`` as if it were its text)."""
    text = page.read_text() if text is None else text
    wrong = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            wrong.append(f"{target}: no file {path}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text() if path else text):
            wrong.append(f"{target}: no heading #{anchor} in {file.name}")
    return wrong


def path_commands() -> list[str]:
    return commands(section(PATH_SECTION))


def bare(command: str) -> str:
    """A command without its comment, its blanks normalised."""
    return " ".join(re.sub(r"\s#\s.*$", "", command).split())


def output_blocks() -> list[dict]:
    """Every example output of README.md and docs/*.md: its page, line, body and what heads it."""
    blocks = []
    for page in PAGES:
        text = page.read_text()
        lines = text.split("\n")
        for start, language, body in fences(text):
            if language:
                continue
            above = start - 1
            while above >= 0 and not lines[above].strip():
                above -= 1
            paragraph = above
            while paragraph > 0 and lines[paragraph - 1].strip():
                paragraph -= 1
            marker = OUTPUT_OF.match(lines[above].strip()) if above >= 0 else None
            blocks.append({"page": name(page), "line": start + 1, "body": body,
                           "command": marker.group(1) if marker else None,
                           "excerpt": above >= 0 and lines[paragraph].startswith("Excerpt")})
    return blocks


def command_index(block: dict) -> int:
    """Which of the README's path commands printed the block."""
    wanted = bare(block["command"])
    found = [i for i, c in enumerate(path_commands()) if bare(c) == wanted]
    assert found, f"{block['page']}:{block['line']}: '{block['command']}' is not a command of {PATH_SECTION}"
    return found[-1]


def line_pattern(line: str) -> re.Pattern:
    """An example line as a pattern: ``...`` any text, ``N.N`` a number, a 32-digit hex id any id,
    any run of blanks any run of blanks."""
    pattern = ""
    for part in re.split(r"(\.\.\.|N\.N|\b[0-9a-f]{32}\b)", line.strip()):
        if part == "...":
            pattern += ".*?"
        elif part == "N.N":
            pattern += r"\d+\.\d+"
        elif re.fullmatch(r"[0-9a-f]{32}", part):
            pattern += "[0-9a-f]{32}"
        else:
            pattern += re.sub(r"(?:\\\s)+", r"\\s+", re.escape(part))
    return re.compile(pattern)


def unmatched(example: str, output: str) -> list[str]:
    """The lines of ``example`` that ``output`` lacks, in order (a line ``...``: any lines between)."""
    printed = [line.strip() for line in output.splitlines() if line.strip()]
    at, missing = 0, []
    for line in example.splitlines():
        if not line.strip() or line.strip() == "...":
            continue
        pattern = line_pattern(line)
        hit = next((k for k in range(at, len(printed)) if pattern.fullmatch(printed[k])), None)
        if hit is None:
            missing.append(line)
        else:
            at = hit + 1
    return missing


# -- excerpts: each with the check of its stable figures ------------------------------------------------

def _refusals_are_tested(body: str) -> None:
    """The refusals shown are the ones tests/test_access.py provokes on a real basic-auth server."""
    tested = (ROOT / "tests" / "test_access.py").read_text()
    for fragment in ("user 'worker' may not register versions of model 'lego-classifier'",
                     "user 'sweep' may not move the aliases", "that needs MANAGE",
                     "needs a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        assert fragment in body and fragment in tested, fragment


def _lab_comparison_rows(body: str) -> None:
    """The baseline's row is the one test_the_baseline_accuracies_of_the_results_page_hold computes."""
    assert re.search(r"^baseline\s+0\.9827\s+0\.9688\.\.0\.9965$", body, re.M), body
    assert "paired t-test over 5 seeds" in body


EXCERPTS = {  # (page, first line of the block) -> its check
    ("docs/scale-out.md", "error: user 'worker' may not register versions of model 'lego-classifier'"):
        _refusals_are_tested,
    ("docs/results.md", "configuration        mean  95% CI"): _lab_comparison_rows,
}


def excerpt_check(block: dict):
    first = block["body"].splitlines()[0] if block["body"] else ""
    return next((check for (page, start), check in EXCERPTS.items()
                 if page == block["page"] and first.startswith(start)), None)


# -- the tests ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_relative_link_resolves_to_a_file_and_a_heading(page):
    assert broken_links(page) == []


def test_the_link_check_finds_a_broken_file_a_broken_anchor_and_passes_good_ones():
    page = ROOT / "docs" / "sweep.md"
    good = "[resume](#resume), [data](data.md#bad-input), [path](../README.md#the-whole-path-step-by-step)"
    assert broken_links(page, f"# X\n\n## Resume\n\n{good}\n") == []
    assert len(broken_links(page, "[a](nowhere.md) [b](data.md#no-such-heading) [c](#nor-here)\n")) == 3
    assert broken_links(page, "`[a](nowhere.md)`\n\n```\n[b](nowhere.md)\n```\n") == []  # code is not a link
    assert slug("Isolated environments: `--env-manager uv`") == "isolated-environments---env-manager-uv"
    assert slug("The whole path, step by step") == "the-whole-path-step-by-step"
    assert anchors("# A\n## A\n## A\n") == {"a", "a-1", "a-2"}


def test_every_page_of_docs_says_first_what_the_reader_can_do_there():
    for page in PAGES[1:]:
        lines = page.read_text().split("\n")
        assert lines[0].startswith("# "), name(page)
        first = next(line for line in lines[1:] if line.strip())
        assert not first.startswith(("#", "```", "|", "!", "<")), f"{name(page)} starts with {first!r}"


def test_every_example_output_is_checked_against_the_real_one_or_a_checked_excerpt():
    blocks = output_blocks()
    assert len([b for b in blocks if b["command"]]) >= 6  # the baseline, sweep, promote, predict, serve, reproduce
    for block in blocks:
        where = f"{block['page']}:{block['line']}"
        if block["command"]:
            command_index(block)  # one of the path's commands: tests/test_readme.py compares the output
            assert [line for line in block["body"].splitlines() if line.strip() and line.strip() != "..."], where
        else:
            assert block["excerpt"], (f"{where}: an example output neither headed by '<!-- output of: COMMAND -->' "
                                      "nor by a paragraph starting 'Excerpt' (or give the block a language)")
            check = excerpt_check(block)
            assert check is not None, f"{where}: an excerpt that EXCERPTS has no check for"
            check(block["body"])


def test_the_example_matcher_takes_numbers_ids_and_elisions_and_nothing_else():
    output = ("noise\ntrial 0    complete   val_accuracy 0.6918  elapsed   10.4 s  5 left\nmore noise\n"
              "run 69168a6dc62c421c90d499dcd95f8000 (baseline-seed42)\nIDENTICAL: all 22 logged values\n")
    assert unmatched("trial 0 complete val_accuracy 0.6918  elapsed    N.N s  5 left\n...\n"
                     "run 0123456789abcdef0123456789abcdef (baseline-...)\nIDENTICAL: all 22 logged values",
                     output) == []
    assert unmatched("IDENTICAL: all 8 logged values", output) == ["IDENTICAL: all 8 logged values"]
    assert unmatched("trial 0 complete val_accuracy 0.6919 elapsed N.N s 5 left", output) != []
    assert unmatched("IDENTICAL: all 22 logged values\nrun 69168a6dc62c421c90d499dcd95f8000 (baseline-seed42)",
                     output) != []  # in order


@pytest.mark.parametrize("page", PAGES[1:], ids=name)
def test_the_docs_name_no_machine_paths_no_test_counts_and_log_every_mlflow_run_to_legoexp(page):
    text = page.read_text()
    assert not re.search(r"/work/|/root/|/home/|/tmp/", text)
    assert not re.search(r"\b\d+ tests\b", text)
    runs = [c for c in commands(text) if c.startswith("mlflow run ") or " mlflow run " in c]
    inline = [s for s in spans(text) if s.startswith("mlflow run .")]
    assert all("--experiment-name legoexp" in c for c in runs + inline), runs + inline


def test_the_readme_is_a_map_and_its_inline_mlflow_runs_log_to_legoexp():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    inline = [s for s in spans(text) if s.startswith("mlflow run .")]
    assert inline and all("--experiment-name legoexp" in s for s in inline), inline
    linked = {link.partition("#")[0] for link in links(text)}
    assert {f"docs/{p.name}" for p in PAGES[1:]} <= linked  # every page is reachable from the README


def test_the_baseline_accuracies_of_the_results_page_hold(lab_dir):
    """docs/results.md: the baseline over seeds 0-9 on the lab's files and on the generated set, and
    its row of the comparison over seeds 42-46 (the same fit as the sweep's comparison trains)."""
    import numpy as np
    from scipy import stats

    from legoexp.data import load_split, open_source
    from legoexp.evaluate import evaluate
    from legoexp.train import TrainConfig, train

    text = (ROOT / "docs" / "results.md").read_text()

    def accuracies(spec, seeds):
        source = open_source(spec)
        tr, te = load_split(source, "train"), load_split(source, "test")
        return [evaluate(train(TrainConfig(seed=s), tr.images, tr.labels).net, te.images, te.labels).accuracy
                for s in seeds]

    for spec, row in ((str(lab_dir), "baseline on the lab's files, seeds 0-9"),
                      ("synthetic", "baseline on the generated set, seeds 0-9")):
        found = accuracies(spec, range(10))
        shown = f"test_accuracy mean {np.mean(found):.3f}, min {min(found):.3f}, max {max(found):.3f}"
        assert re.search(rf"^\| {re.escape(row)} \|.*\| {re.escape(shown)} \|$", text, re.M), (row, shown)

    found = accuracies(str(lab_dir), range(42, 47))
    mean, half = np.mean(found), stats.t.ppf(0.975, len(found) - 1) * stats.sem(found)
    assert f"baseline           {mean:.4f}  {mean - half:.4f}..{mean + half:.4f}" in text
    assert f"Per seed (42..46) the baseline scored {', '.join(f'{a:.3f}' for a in found)} " in " ".join(text.split())
