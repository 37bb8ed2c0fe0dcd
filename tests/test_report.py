"""python -m training.report: the paper's Table 3 layout from runs' summary.json files (synthetic here;
the docs test runs it on two real Digits runs)."""
from __future__ import annotations

import json
import statistics

import pytest

from training import report


def _run(folder, dataset, training_mode, accuracies, feedback_mode="BP", delay_ls=5, with_flags=True):
    folder.mkdir(parents=True)
    summary = {"arch": "x", "dataset": dataset, "training_mode": training_mode, "step_mode": "online",
               "device": "cpu", "trials": [{"trial": k + 1, "best_acc1": a, "final_acc1": a - 1.0}
                                           for k, a in enumerate(accuracies)]}
    if with_flags:
        summary["flags"] = {"feedback_mode": feedback_mode, "delay_ls": delay_ls}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _rows(text):
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()[2:]]


def test_table_has_the_papers_layout_and_figures(tmp_path, capsys):
    shd_dfa = [74.1, 75.0, 73.9, 74.8, 74.2]
    _run(tmp_path / "runs" / "SHD_STLLR_DFA", "SHD", "stllr", shd_dfa, feedback_mode="DFA", delay_ls=90)
    _run(tmp_path / "runs" / "VGG_Gesture_BASELINE", "DVSGesture", "bptt", [95.0, 96.1, 94.9])
    _run(tmp_path / "runs" / "CIFAR_d10", "CIFAR10DVS", "stllr", [75.5], delay_ls=10)
    _run(tmp_path / "runs" / "CIFAR_d7", "CIFAR10DVS", "stllr", [70.0, 71.0], delay_ls=7)
    digits = _run(tmp_path / "digits", "Digits", "stllr", [97.2, 96.8])

    assert report.main([str(tmp_path / "runs"), str(digits), "--out", str(tmp_path / "table.md")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "table.md").read_text().strip() == text.strip()
    assert text.splitlines()[0] == ("| dataset | method | trials | best test accuracy (%), mean ± std | "
                                    "paper, Table 3 (%) | run |")
    rows = _rows(text)
    # the paper's order: Gesture, CIFAR10-DVS, SHD, then Digits; BPTT before S-TLLR
    assert [(r[0], r[1]) for r in rows] == [("DVS Gesture", "BPTT"), ("CIFAR10-DVS", "S-TLLR (BP)"),
                                            ("CIFAR10-DVS", "S-TLLR (BP)"), ("SHD", "S-TLLR (DFA)"),
                                            ("Digits", "S-TLLR (BP)")]
    gesture, cifar10, cifar7, shd, digit = rows
    mean, std = statistics.mean([95.0, 96.1, 94.9]), statistics.stdev([95.0, 96.1, 94.9])
    assert gesture[2:5] == ["3", f"{mean:.2f} ± {std:.2f}", "95.58 ± 1.08"]
    assert shd[2:5] == ["5", f"{statistics.mean(shd_dfa):.2f} ± {statistics.stdev(shd_dfa):.2f}", "74.60 ± 0.52"]
    assert cifar10[2:5] == ["1", "75.50", "75.60 ± 0.10"]           # one trial: no std; the delay-ls 10 figure
    assert cifar7[4] == "73.93 ± 0.62 (delay-ls 5); 75.60 ± 0.10 (delay-ls 10)"  # no exact match: both
    assert digit[4] == "—" and digit[5] == str(digits)


def test_summary_without_flags_reads_as_bp(tmp_path, capsys):
    _run(tmp_path / "old", "SHD", "stllr", [78.0, 79.0], with_flags=False)
    assert report.main([str(tmp_path / "old")]) == 0
    row = _rows(capsys.readouterr().out)[0]
    assert row[1] == "S-TLLR (BP)" and row[4] == "78.24 ± 1.84"


@pytest.mark.parametrize("setup,needle", [
    (lambda p: None, "no such folder"),
    (lambda p: p.mkdir(), "no summary.json"),
    (lambda p: (p.mkdir(), (p / "checkpoint.pth.tar").write_bytes(b"x")), "has not finished"),
    (lambda p: (p.mkdir(), (p / "summary.json").write_text("{not json")), "not a summary.json"),
    (lambda p: (p.mkdir(), (p / "summary.json").write_text('{"dataset": "SHD", "trials": []}')), "no finished trial"),
])
def test_unusable_folders_are_one_line_errors(tmp_path, capsys, setup, needle):
    folder = tmp_path / "run"
    setup(folder)
    assert report.main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and err.startswith("python -m training.report: error:"), err


def test_paper_table_lists_every_figure():
    rows = _rows(report.paper_table())
    assert len(rows) == len(report.PAPER_TABLE3) == 8
    assert ["SHD", "S-TLLR (BP)", "78.24 ± 1.84"] in rows
    assert ["CIFAR10-DVS", "S-TLLR (BP)", "73.93 ± 0.62 with `--delay-ls 5`"] in rows
