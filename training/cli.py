"""The command line of `python -m training`: the original's flags (same names, choices, defaults)
plus a few new ones, and the checks that reject bad input before any work starts."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import torch

from stllr_kernels.backends import BACKEND_MODULES, BackendUnavailable, set_backend
from stllr_kernels.config import check_factors

from .data import DATASETS, unavailable_reason
from .datasets.catalog import DEFAULT_ENCODING, ENCODINGS
from .errors import DatasetError
from .engine import LOSSES, STEP_MODES, TRAINING_MODES
from .models import ACTIVATIONS, ARCHS, DEFAULT_ACTIVATION, FEEDBACK_MODES

OPTIMIZERS = ("SGD", "NAG", "Adam", "RMSProp", "RProp")

# The one flag table: (flag, argparse keywords). The original's flags first, in its order.
ORIGINAL_FLAGS = (
    ("--arch", dict(type=str, default="dvs_vgg_stllr", choices=sorted(ARCHS), help="SNN architecture.")),
    ("--cpu", dict(action="store_true", default=False, help="Disable CUDA training and run training on CPU")),
    ("--dataset", dict(type=str, default="DVSGesture", choices=list(DATASETS), help="Choice of the dataset")),
    ("--save-path", dict(type=str, default="./experiments/default",
                         help="Directory to save the checkpoint and logs of the experiment")),
    ("--data-path", dict(type=str, default=None, help="Path for the datasets folder.")),
    ("--trials", dict(type=int, default=1, help="Number of trials (repetitions with different initializations)")),
    ("--epochs", dict(type=int, default=100, help="Number of epochs to train")),
    ("--optimizer", dict(type=str, choices=list(OPTIMIZERS), default="Adam", help="Choice of the optimizer")),
    ("--loss", dict(type=str, choices=list(LOSSES), default="CE", help="Choice of the loss function")),
    ("--lr", dict(type=float, default=1e-3, help="Initial learning rate")),
    ("--batch-size", dict(type=int, default=16, help="Batch size for training")),
    ("--val-batch-size", dict(type=int, default=5, help="Batch size for testing")),
    ("--label-encoding", dict(type=str, default="class", choices=["class", "one-hot"],
                              help="Label encoding (one-hot for DFA in the original; either works here).")),
    ("--activation", dict(type=str, default=DEFAULT_ACTIVATION, choices=list(ACTIVATIONS),
                          help="The original's name of the secondary activation function (Psi).")),
    ("--seed", dict(type=int, default=1234, help="Seed for reproducibility.")),
    ("--pretrained-model", dict(type=str, default=None, help="Path for the pretrained model")),
    ("--training-mode", dict(type=str, default="stllr", choices=list(TRAINING_MODES), help="Training mode.")),
    ("--feedback-mode", dict(type=str, default="BP", choices=list(FEEDBACK_MODES),
                             help="Feedback mode to produce the learning signal.")),
    ("--delay-ls", dict(type=int, default=5,
                        help="Number of final time steps that get a learning signal (T - T_l).")),
    ("--scheduler", dict(type=int, default=0, help="Cosine learning-rate decay over this many epochs (0: none).")),
    ("--print-freq", dict(type=int, default=200, help="Frequency (in batches) of printing results.")),
    ("--factors-stdp", dict(nargs="+", type=float, default=[0.2, 0.75, -1, 1],
                            help="STDP parameters [lambda_post, lambda_pre, alpha_post, alpha_pre].")),
    ("--pooling", dict(type=str, default="MAX", choices=["MAX", "AVG"], help="Pooling layer.")),
    ("--weight-decay", dict(type=float, default=0, help="Weight decay L2 normalization")),
)
NEW_FLAGS = (
    ("--backend", dict(type=str, default="auto", choices=["auto", *BACKEND_MODULES],
                       help="Kernel backend of stllr_kernels (auto: the fastest available).")),
    ("--step-mode", dict(type=str, default="online", choices=list(STEP_MODES),
                         help="online: one time step per call (memory flat in T); sequence: the whole "
                              "sequence per call (time-fused, faster on GPUs). Same gradients.")),
    ("--resume", dict(type=str, default=None, metavar="PATH",
                      help="Continue a run exactly from its checkpoint (save-path/checkpoint.pth.tar).")),
    ("--workers", dict(type=int, default=None, help="DataLoader workers (default: 0 for Digits, else 4).")),
    ("--device", dict(type=str, default=None, help="torch device, e.g. cuda:1 (default: cuda if available "
                                                    "and not --cpu, else cpu).")),
    ("--frames", dict(type=str, default=DEFAULT_ENCODING, choices=list(ENCODINGS),
                      help="How events become frames. original: the original code's tensors, quirks included "
                           "(the paper's inputs); counts: plain event counts at the network's resolution.")),
    ("--download", dict(action="store_true", default=False,
                        help="Fetch a missing dataset's archives (tonic's URLs and checksums) into --data-path.")),
)
FLAGS = ORIGINAL_FLAGS + NEW_FLAGS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line on stderr, exit status 2 (no usage block, no traceback)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m training",
                     description="S-TLLR training, a drop-in for the original's main.py.")
    for flag, kwargs in FLAGS:
        parser.add_argument(flag, **kwargs)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check everything that can be checked before any work starts."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem:
        parser.error(problem)
    return args


def check_args(args: argparse.Namespace) -> Optional[str]:
    """None if the flags make a valid run, else the first problem, in one sentence."""
    try:
        check_factors(args.factors_stdp)
    except (TypeError, ValueError) as exc:
        return f"--factors-stdp: {exc}"
    for flag, value, low in (("--epochs", args.epochs, 1), ("--trials", args.trials, 1),
                             ("--batch-size", args.batch_size, 1), ("--val-batch-size", args.val_batch_size, 1),
                             ("--delay-ls", args.delay_ls, 0), ("--scheduler", args.scheduler, 0),
                             ("--print-freq", args.print_freq, 1)):
        if value < low:
            return f"{flag} must be >= {low}, got {value}"
    if args.workers is not None and args.workers < 0:
        return f"--workers must be >= 0, got {args.workers}"
    if not args.lr > 0:
        return f"--lr must be > 0, got {args.lr}"
    arch, spec = ARCHS[args.arch], DATASETS[args.dataset]
    fits = DATASETS[arch.dataset]
    if (fits.frame_shape, fits.num_classes) != (spec.frame_shape, spec.num_classes):
        return (f"--arch {args.arch} is built for {arch.dataset} (input {fits.frame_shape}, "
                f"{fits.num_classes} classes), not for --dataset {args.dataset} (input "
                f"{spec.frame_shape}, {spec.num_classes} classes)")
    if not arch.stllr and args.training_mode != "bptt":
        return f"--arch {args.arch} is a BPTT baseline; it needs --training-mode bptt"
    if not arch.stllr and args.feedback_mode != "BP":
        return f"--feedback-mode {args.feedback_mode} needs an S-TLLR architecture; {args.arch} is BPTT"
    if args.training_mode == "stllr_online" and args.step_mode == "sequence":
        return "--training-mode stllr_online updates the weights at every step; it needs --step-mode online"
    if spec.needs_path and not args.data_path:
        return f"--dataset {args.dataset} needs --data-path (the folder holding the dataset)"
    if spec.needs_path and not os.path.isdir(args.data_path):
        return f"--data-path {args.data_path!r} is not a directory"
    reason = unavailable_reason(args.dataset)
    if reason:
        return reason
    for flag, path in (("--resume", args.resume), ("--pretrained-model", args.pretrained_model)):
        if path is not None and not os.path.isfile(path):
            return f"{flag}: no file at {path!r}"
    try:
        device = torch.device(args.device) if args.device else None
    except RuntimeError as exc:
        return f"--device: {exc}"
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {args.device}: CUDA is not available on this machine"
    if device is not None and device.type == "cuda" and args.cpu:
        return f"--cpu and --device {args.device} contradict each other"
    try:
        set_backend(args.backend)
    except BackendUnavailable as exc:
        return f"--backend {args.backend}: {exc}"
    return None


def resolve_device(args) -> torch.device:
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from . import distributed
    from .runner import run  # heavy imports only once the flags are known good

    try:
        if distributed.launched():  # a process of `torchrun --nproc_per_node=N -m training ...`
            distributed.run(args, run)
        else:
            run(args)
    except DatasetError as exc:  # files missing or a failed --download: its message says what to do
        sys.stderr.write(f"python -m training: error: {exc}\n")
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
