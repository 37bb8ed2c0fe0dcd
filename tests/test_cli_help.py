"""The command line as people expect it: --help shows defaults and choices in three groups, a prefix
of a flag is refused, --help / --version / a malformed flag answer before torch is imported, and
one version string serves the package, the command line and setup.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stllr_kernels
from training.cli import GROUPS, build_parser, parse_config, version
from training.config import DISTRIBUTED_FLAGS, FLAGS, NEW_FLAGS, ORIGINAL_FLAGS

REPO = Path(__file__).resolve().parent.parent


def _groups(help_text: str) -> dict:
    """title -> the text of that group in --help."""
    titles = [title for title, _ in GROUPS]
    found, current = {}, None
    for line in help_text.splitlines():
        if line.rstrip(":") in titles:
            current = line.rstrip(":")
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return {title: "\n".join(lines) for title, lines in found.items()}


def _entries(help_text: str) -> dict:
    """flag -> its whole entry in --help (the option line and its help lines)."""
    entries, current = {}, None
    for line in help_text.splitlines():
        found = re.match(r"^  (--[\w-]+)", line)
        if found:
            current = found.group(1)
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_help_groups_flags_and_shows_defaults_and_choices(monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # one line per help text: easier to read back
    text = build_parser().format_help()
    groups = _groups(text)
    assert list(groups) == [title for title, _ in GROUPS]
    expected = {GROUPS[0][0]: [f for f, _ in ORIGINAL_FLAGS],
                GROUPS[1][0]: [f for f, _ in NEW_FLAGS if f not in DISTRIBUTED_FLAGS],
                GROUPS[2][0]: list(DISTRIBUTED_FLAGS)}
    for title, flags in expected.items():
        assert re.findall(r"^  (--[\w-]+)", groups[title], re.M) == flags, title
    entries = _entries(text)
    for flag, kwargs in FLAGS:
        entry = entries[flag]
        if "choices" in kwargs:
            assert "{" + ",".join(map(str, kwargs["choices"])) + "}" in entry, flag
        default = kwargs.get("default")
        if kwargs.get("action") == "store_true":
            assert default is False, flag  # an off switch: its default goes without saying
        elif "default" in kwargs.get("help", "").lower():
            assert "default" in entry.lower(), flag  # the help text states it in words
        else:
            shown = "none" if default is None else " ".join(map(str, default)) if isinstance(default, list) else default
            assert f"(default: {shown})" in entry, (flag, entry)


@pytest.mark.parametrize("argv", [["--epoch", "1"], ["--ep", "3"], ["--data", "x"], ["--save", "x"]])
def test_prefixes_of_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and argv[0] in err and "unrecognized" in err, err


def test_one_version_string():
    assert version() == stllr_kernels.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version())
    definitions = [p for p in list(REPO.glob("stllr_kernels/**/*.py")) + list(REPO.glob("training/**/*.py"))
                   + [REPO / "setup.py"] if re.search(r"^\s*(__version__|version)\s*=\s*['\"]", p.read_text(), re.M)
                   or re.search(r"version=['\"]", p.read_text())]
    assert definitions == [REPO / "stllr_kernels" / "_version.py"], definitions


@pytest.mark.slow  # a fresh interpreter per case, as a user's shell would start it
def test_help_version_and_bad_flags_answer_before_torch():
    """The flag table needs no torch: --help, --version and a flag that does not parse exit before
    `import torch`. (Measured by the modules loaded, not wall time, which depends on the load.)"""
    probe = (
        "import sys\n"
        "from training.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'stllr_kernels') if m in sys.modules)\n"
        "print('EXIT', code, 'HEAVY', heavy, file=sys.stderr)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for argv, code in ((["--help"], 0), (["--version"], 0), (["--epoch", "1"], 2), (["--arch", "resnet"], 2),
                       (["--lr", "fast"], 2)):
        proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120,
                              env=env, cwd=REPO)
        assert f"EXIT {code} HEAVY []" in proc.stderr, (argv, proc.stderr[-2000:])
        if argv == ["--version"]:
            assert proc.stdout.strip() == f"python -m training (stllr-kernels) {stllr_kernels.__version__}"


@pytest.mark.slow
def test_python_m_training_help_and_version_processes():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and "the original's flags:" in proc.stdout and "(default: 100)" in proc.stdout
    print(f"python -m training --help: {elapsed:.2f} s (load average {os.getloadavg()[0]:.2f})")
    proc = subprocess.run([sys.executable, "-m", "training", "--version"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0 and stllr_kernels.__version__ in proc.stdout


@pytest.mark.slow
def test_setup_py_reads_the_same_version():
    proc = subprocess.run([sys.executable, "setup.py", "--version"], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=dict(os.environ, STLLR_NO_EXTENSION="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == stllr_kernels.__version__


def test_flag_choices_match_the_implementation():
    """The table's choices are literal (it loads without torch); here each is checked against the
    code that implements the flag, so that a new architecture, dataset or mode updates both."""
    from stllr_kernels.backends import BACKEND_MODULES
    from training.data import DATASETS
    from training.datasets.catalog import DEFAULT_ENCODING, ENCODINGS
    from training.engine import LOSSES, STEP_MODES, TRAINING_MODES
    from training.models import ACTIVATIONS, ARCHS, DEFAULT_ACTIVATION, FEEDBACK_MODES

    table = dict(FLAGS)
    implemented = {
        "--arch": sorted(ARCHS), "--dataset": list(DATASETS), "--loss": list(LOSSES),
        "--activation": list(ACTIVATIONS), "--training-mode": list(TRAINING_MODES),
        "--feedback-mode": list(FEEDBACK_MODES), "--backend": ["auto", *BACKEND_MODULES],
        "--step-mode": list(STEP_MODES), "--frames": list(ENCODINGS),
    }
    for flag, choices in implemented.items():
        assert list(table[flag]["choices"]) == choices, flag
    assert table["--activation"]["default"] == DEFAULT_ACTIVATION
    assert table["--frames"]["default"] == DEFAULT_ENCODING
