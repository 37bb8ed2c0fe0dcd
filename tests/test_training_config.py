"""The run configuration (one frozen RunConfig from the one flag table), the typed errors and the
training package's import graph."""
from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys

import pytest

from training import cli
from training.config import FLAGS, RunConfig, field_name
from training.errors import (CheckpointError, DatasetError, FlagError, RunDiverged, RunInterrupted,
                             TrainingError)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "training")


def test_fields_are_the_flags_with_the_tables_defaults():
    fields = dataclasses.fields(RunConfig)
    assert [f.name for f in fields] == [field_name(flag) for flag, _ in FLAGS]
    parser_defaults = vars(cli.build_parser().parse_args([]))
    for f in fields:
        default = dict(FLAGS)[f"--{f.name.replace('_', '-')}"]["default"]
        expected = tuple(default) if isinstance(default, list) else default
        assert f.default == expected == (tuple(parser_defaults[f.name]) if isinstance(default, list)
                                         else parser_defaults[f.name]), f.name
    assert RunConfig.from_args(cli.build_parser().parse_args([])) == RunConfig()


def test_config_is_frozen_and_built_once_from_the_command_line(tmp_path):
    config = cli.parse_config(["--dataset", "Digits", "--arch", "digits_stllr", "--lr", "0.01",
                               "--factors-stdp", "0.5", "1", "1", "1", "--save-path", str(tmp_path)])
    assert isinstance(config, RunConfig)
    assert (config.lr, config.factors_stdp, config.delay_ls) == (0.01, (0.5, 1.0, 1.0, 1.0), 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.1
    changed = dataclasses.replace(config, batch_size=4)
    assert (changed.batch_size, config.batch_size) == (4, 16)
    with pytest.raises(TypeError):  # a misspelt setting fails where the config is built
        RunConfig(learning_rate=0.1)


def test_python_built_config_validates_like_the_command_line():
    good = RunConfig(dataset="Digits", arch="digits_stllr", factors_stdp=[0.5, 1, 1, 1])
    assert good.validate() is good and good.factors_stdp == (0.5, 1, 1, 1)
    bad = {
        "--arch": dict(arch="resnet"),
        "--lr: expected float": dict(lr="0.1"),
        "--epochs: expected int": dict(epochs=2.5),
        "--cpu: expected bool": dict(cpu=1),
        "--lr must be > 0": dict(lr=0.0),
        "--factors-stdp": dict(factors_stdp=(0.2, 0.75, -1)),
        "built for DVSGesture": dict(arch="dvs_vgg_stllr"),
        "--training-mode bptt": dict(arch="digits_bptt"),
        "--step-mode online": dict(training_mode="stllr_online", step_mode="sequence"),
        "--resume": dict(resume="/nonexistent/checkpoint"),
    }
    for needle, changes in bad.items():
        config = dataclasses.replace(good, **changes)
        with pytest.raises(FlagError, match=needle.replace("(", r"\(")):
            config.validate()
    with pytest.raises(FlagError, match="--data-path"):
        RunConfig(dataset="SHD", arch="stllr_shd_net").validate()


def test_every_error_has_its_exit_code():
    assert issubclass(FlagError, TrainingError) and issubclass(FlagError, ValueError)
    from training.datasets import DatasetFilesMissing
    assert issubclass(DatasetFilesMissing, DatasetError) and issubclass(DatasetFilesMissing, FileNotFoundError)
    assert (FlagError.exit_code, CheckpointError.exit_code, RunDiverged.exit_code,
            RunInterrupted.exit_code) == (2, 2, 3, 130)


@pytest.mark.parametrize("error", [CheckpointError("--resume: the checkpoint is of --arch x, not y"),
                                   RunDiverged("loss became nan at epoch 3"),
                                   RunInterrupted("interrupted in trial 1, epoch 2")])
def test_command_line_turns_a_typed_error_into_one_line_and_its_code(error, tmp_path, monkeypatch, capsys):
    import training.runner

    def fail(config):
        raise error

    monkeypatch.setattr(training.runner, "run", fail)
    code = cli.main(["--dataset", "Digits", "--arch", "digits_stllr", "--save-path", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == error.exit_code
    assert err == f"python -m training: error: {error}\n"


def _sys_exits(path: str) -> list:
    """Lines of `path` that call sys.exit or raise SystemExit outside an `if __name__ == "__main__"`."""
    tree = ast.parse(open(path).read())
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            guarded |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        text = ast.unparse(node) if isinstance(node, (ast.Call, ast.Raise)) else ""
        if (isinstance(node, ast.Call) and text.startswith("sys.exit(")) or \
                (isinstance(node, ast.Raise) and "SystemExit" in text):
            found.append(node.lineno)
    return found


def _modules():
    """training.* module name -> file, for every module of the package."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), REPO)[:-3].split(os.sep)
                modules[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, name)
    return modules


def test_no_system_exit_outside_the_command_line():
    allowed = {"training.cli", "training.__main__"}
    offenders = {name: lines for name, path in _modules().items()
                 if name not in allowed and (lines := _sys_exits(path))}
    assert not offenders, f"raise a training.errors type instead of exiting: {offenders}"


def _imports(name: str, path: str, modules: dict) -> set:
    """The training modules that module `name` imports (anywhere in it, except under TYPE_CHECKING)."""
    tree = ast.parse(open(path).read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    skipped = {id(n) for node in ast.walk(tree)
               if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from . import x` imports the module x if there is one, else a name of the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def test_training_modules_import_each_other_without_a_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "training.config" in graph["training.cli"] and "training.cli" not in graph["training.runner"]
    state, path = {}, []

    def visit(node):  # depth-first search; a node met again while on the path closes a cycle
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_each_module_imports_first():
    """Each module imported first, with nothing of the package loaded (one process, module cache
    of the package cleared between imports): no module depends on another being imported before."""
    names = sorted(n for n in _modules() if n != "training.__main__")
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    for m in [m for m in sys.modules if m == 'training' or m.startswith('training.')]:\n"
            "        del sys.modules[m]\n"
            "    importlib.import_module(name)\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, *sys.path])))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
