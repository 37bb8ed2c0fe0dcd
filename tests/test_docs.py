"""The documentation stays true: every example runs as written, every quoted figure equals its
results file, and nothing in the repository points at a file that is not in it.

How the examples run (docs/contributing.md, "The docs test"):
- the ```python blocks of one markdown file run in order in one fresh process (one namespace), in an
  empty temporary folder, with the repository on PYTHONPATH;
- the ```bash blocks of one file run one after the other under `bash -e -o pipefail`, in a fresh copy
  of the repository (tracked files plus the built extension) that is the working directory and on
  PYTHONPATH, with this Python's folder first on PATH;
- a block preceded by `<!-- not-run: <reason> -->` is skipped (the reason is required); ```text
  blocks are output and never run; any other fence language is an error.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

from benchmarks import quote

REPO = Path(__file__).resolve().parent.parent
LANGUAGES = {"python", "bash", "text"}
NOT_RUN = re.compile(r"^<!--\s*not-run(?::\s*(.*?))?\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")
TIMEOUT = 600


@dataclass(frozen=True)
class Block:
    path: Path
    line: int              # 1-based line of the opening fence
    language: str
    code: str
    skip: Optional[str]    # the not-run reason, None when the block runs

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def markdown_files() -> List[Path]:
    return quote.documents(REPO)


def blocks(path: Path) -> List[Block]:
    """The fenced blocks of a markdown file; ValueError for a malformed fence or not-run marker."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        start, language = i, opening.group(1)
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            i += 1
        if i == len(lines):
            raise ValueError(f"{path.relative_to(REPO)}:{start + 1}: code block never closed")
        previous = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = NOT_RUN.match(previous)
        if marker and not (marker.group(1) or "").strip():
            raise ValueError(f"{path.relative_to(REPO)}:{start}: `<!-- not-run -->` needs a reason: "
                             "`<!-- not-run: <reason> -->`")
        found.append(Block(path, start + 1, language, "\n".join(lines[start + 1:i]) + "\n",
                           marker.group(1).strip() if marker else None))
        i += 1
    return found


def _runnable(language: str) -> list:
    return [pytest.param(path, id=str(path.relative_to(REPO))) for path in markdown_files()
            if any(b.language == language and b.skip is None for b in blocks(path))]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "STLLR_BACKEND")}
    import torch  # already loaded by conftest; the workers share the cores as the test process does

    env.update(OMP_NUM_THREADS=str(torch.get_num_threads()), MPLBACKEND="Agg", PYTHONUNBUFFERED="1", **extra)
    return env


# ----------------------------------------------------------------------------- the blocks' form

def test_every_block_is_well_formed():
    problems = []
    for path in markdown_files():
        try:
            found = blocks(path)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        problems += [f"{b.where}: fence language {b.language!r}; use one of {sorted(LANGUAGES)} "
                     "(```text for output)" for b in found if b.language not in LANGUAGES]
        text = path.read_text().splitlines()
        fences = {b.line - 1 for b in found}
        for n, line in enumerate(text):  # a not-run marker must sit right before a fence
            if NOT_RUN.match(line.strip()):
                after = next((k for k in range(n + 1, len(text)) if text[k].strip()), None)
                if after not in fences:
                    problems.append(f"{path.relative_to(REPO)}:{n + 1}: a not-run marker that precedes no code block")
    assert not problems, "\n".join(problems)


def test_block_parser_reads_markers_and_languages(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n<!-- not-run: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n```python\nx = 1\n```\n"
                   "```text\nout\n```\n")
    parsed = blocks(doc)
    assert [(b.language, b.skip, b.code) for b in parsed] == [
        ("bash", "needs a GPU", "nvidia-smi\n"), ("python", None, "x = 1\n"), ("text", None, "out\n")]
    doc.write_text("<!-- not-run -->\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        blocks(doc)
    doc.write_text("```python\nx = 1\n")
    with pytest.raises(ValueError, match="never closed"):
        blocks(doc)


# ----------------------------------------------------------------------------- running them

PYTHON_DRIVER = r"""
import json, sys, traceback
namespace = {"__name__": "__main__"}
for where, code in json.load(open(sys.argv[1])):
    print(f"### {where}", flush=True)
    try:
        exec(compile(code, where, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"### FAILED: the block at {where}", flush=True)
        sys.exit(1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("path", _runnable("python"))
def test_python_blocks_run_as_written(path, tmp_path):
    runnable = [(b.where, b.code) for b in blocks(path) if b.language == "python" and b.skip is None]
    (tmp_path / "blocks.json").write_text(json.dumps(runnable))
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", PYTHON_DRIVER, str(tmp_path / "blocks.json")], cwd=work,
                          env=_env(PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"


def repository_copy(dest: Path) -> Path:
    """The tracked files of the repository (as they are in the working tree) and the built
    extension, copied to dest: what a fresh clone holds once `make` has built it."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True)
    if listed.returncode == 0:
        files = [f for f in listed.stdout.split("\0") if f]
    else:  # not a git checkout (an unpacked archive): everything but what .gitignore lists
        skip = {".venv", ".git", "experiments", "build", ".pytest_cache", "__pycache__", "gpu-check-out"}
        files = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(REPO).parts)]
    files += [str(p.relative_to(REPO)) for p in (REPO / "stllr_kernels").glob("_C*.so")]
    for name in files:
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("path", _runnable("bash"))
def test_bash_blocks_run_as_written(path, tmp_path):
    copy = repository_copy(tmp_path / "repo")
    script = ["set -euo pipefail"]
    for b in blocks(path):
        if b.language == "bash" and b.skip is None:
            script += [f"echo '### {b.where}' >&2", b.code]
    (tmp_path / "blocks.sh").write_text("\n".join(script) + "\n")
    env = _env(PYTHONPATH=str(copy), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(["bash", str(tmp_path / "blocks.sh")], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"


def _training_commands(code: str) -> List[list]:
    """The argument lists of the `python -m training ...` (or `torchrun ... -m training ...`) commands
    of a bash block, continuation lines joined, $VARIABLES left as words."""
    import shlex

    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        for i in range(len(words) - 1):
            if words[i:i + 2] == ["-m", "training"]:
                argv = words[i + 2:]
                ends = [k for k, w in enumerate(argv) if set(w) <= set(";&|()<>")]  # ; && || | ...
                commands.append(argv[:ends[0]] if ends else argv)
                break
    return commands


def test_every_documented_training_command_parses():
    """Also those that cannot run here (the paper's runs need the datasets): their flags exist and
    their values have the right types and choices."""
    from training.cli import build_parser

    parser, checked = build_parser(), 0
    for path in markdown_files():
        for b in blocks(path):
            for argv in _training_commands(b.code) if b.language == "bash" else []:
                try:
                    parser.parse_args(argv)
                except SystemExit as exc:  # status 0: --help or --version
                    if exc.code:
                        pytest.fail(f"{b.where}: python -m training {' '.join(argv)}: does not parse")
                checked += 1
    assert checked >= 7 + 2  # the paper's seven runs and the two Digits runs at least


# ----------------------------------------------------------------------------- quoted figures

def test_quoted_figures_equal_their_results_files():
    assert quote.stale() == [], "run `python -m benchmarks.quote` after changing a results file"


def test_every_figure_is_quoted_somewhere():
    quoted = {name for doc in markdown_files() for name in quote.OPENING.findall(doc.read_text())}
    assert quoted == set(quote.FIGURES), f"unquoted: {set(quote.FIGURES) - quoted}"


def test_a_changed_figure_is_caught(tmp_path):
    doc = tmp_path / "README.md"
    fresh = quote.rewrite("intro\n<!-- figures:demo -->\n<!-- /figures -->\n", doc)
    doc.write_text(fresh)
    assert quote.stale([doc]) == []
    row = next(line for line in fresh.splitlines() if line.startswith("| S-TLLR |"))
    edited = row.replace(row.split("|")[2], " 12.34 ")
    doc.write_text(fresh.replace(row, edited))
    assert quote.stale([doc]) == [f"{doc}: region demo"]


def test_figures_follow_the_results_files(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(quote.RESULTS, results)
    rows = (results / "digits_demo.csv").read_text().splitlines()
    header = rows[0].split(",")
    first = rows[1].split(",")
    first[header.index("best_acc1")] = "12.3456"
    (results / "digits_demo.csv").write_text("\n".join([rows[0], ",".join(first), *rows[2:]]) + "\n")
    rendered = quote.FIGURES["demo"](results, tmp_path / "README.md")
    assert f"| {first[0]} | 12.35 |" in rendered


def test_malformed_regions_are_errors(tmp_path):
    with pytest.raises(quote.QuoteError, match="unknown"):
        quote.rewrite("<!-- figures:nonesuch -->\n<!-- /figures -->\n", tmp_path / "a.md")
    with pytest.raises(quote.QuoteError, match="not closed"):
        quote.rewrite("<!-- figures:demo -->\ntext\n", tmp_path / "a.md")


# ----------------------------------------------------------------------------- references

# Documents that exist only outside the repository; built from parts so this file does not match.
OUTSIDE = [re.compile(p) for p in (r"\b" + "SPEC" + r"(\.md)?\b", r"\b" + "DESIGN" + r"(\.md)?\b",
                                    r"\b" + "STYLE" + r"\.md\b", r"\.\./" + "shared", "/work/" + "shared",
                                    r"\breviews/")]
TEXT_SUFFIXES = {".py", ".md", ".txt", ".cpp", ".h", ".cu", ".cuh", ".ini", ".cfg", ".toml", ".yml", ".yaml", ""}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"`((?:stllr_kernels|training|benchmarks|tests|csrc|docs|examples)/[\w./-]+)`")


def tracked_text_files() -> List[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    paths = [REPO / f for f in listed.stdout.splitlines()]
    return [p for p in paths if p.is_file() and p.suffix in TEXT_SUFFIXES and p.name != Path(__file__).name
            and (p.suffix or p.parent.name in (".ci",) or p.name == "Makefile")]


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set:
    found, fenced = set(), False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def test_no_mention_of_documents_outside_the_repository():
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()[:120]}"
            for p in tracked_text_files()
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if any(pattern.search(line) for pattern in OUTSIDE)]
    assert not hits, "cite docs/rule.md or docs/design.md (their sections) instead:\n" + "\n".join(hits)


def test_markdown_links_resolve():
    broken = []
    for doc in [p for p in tracked_text_files() if p.suffix == ".md"]:
        text = doc.read_text()
        text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
        for match in LINK.finditer(text):
            target = match.group(1) or match.group(2)
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            resolved = (doc.parent / file).resolve() if file else doc
            if not resolved.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{doc.relative_to(REPO)}: {target} (no heading #{anchor} in {file or 'this file'})")
    assert not broken, "\n".join(broken)


def test_quoted_repository_paths_exist():
    missing = []
    for path in tracked_text_files():
        if path.suffix not in (".md", ".py"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for ref in REPO_PATH.findall(line):
                if not (REPO / ref.rstrip(".")).exists() and not _generated(ref.rstrip(".")):
                    missing.append(f"{path.relative_to(REPO)}:{n}: `{ref}`")
    assert not missing, "\n".join(missing)


def _generated(path: str) -> bool:
    """A path git ignores is an output (a build log, a results folder), not a file to ship."""
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0


def test_reference_checks_catch_a_missing_file(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("see [the rule](rule.md#1-one-time-step) and ../" + "shared/x\n")
    assert any(p.search(doc.read_text()) for p in OUTSIDE)
    target = LINK.search(doc.read_text()).group(1)
    assert target == "rule.md#1-one-time-step" and not (tmp_path / "rule.md").exists()
    assert slug("7.1 The inputs, quirks `included`") == "71-the-inputs-quirks-included"
