"""The run configuration: one frozen `RunConfig` built once (from the command line, or directly from
Python) and passed explicitly; its flag table; and its checks.

    config = RunConfig(dataset="Digits", arch="digits_stllr", epochs=5)   # a notebook, a benchmark
    config = training.cli.parse_config(argv)                              # the command line

`FLAGS` is the one table of settings: each flag's spelling, type, default, choices and help. The
command line builds its parser from it and `RunConfig`'s fields take their defaults from it; a
field's name is the flag's argparse name (`--delay-ls` -> `delay_ls`). Nothing changes a config
once built: a derived one (a distributed process's share of the batch) is a new one, made with
`dataclasses.replace`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

# No torch, no stllr_kernels and no module that imports them up here: `--help`, `--version` and a
# bad flag are answered from this table before `import torch` (about 1.5 s). What the checks need
# is imported inside the functions that run them. The choices below are literal for that reason;
# tests/test_cli_help.py checks each against the implementation it names.
from . import run_dir, run_flags  # plain Python: no torch
from .errors import FlagError

OPTIMIZERS = ("SGD", "NAG", "Adam", "RMSProp", "RProp")

# The one flag table: (flag, argparse keywords). The original's flags first, in its order.
ORIGINAL_FLAGS = (
    ("--arch", dict(type=str, default="dvs_vgg_stllr", help="SNN architecture.",
                    choices=["bptt_shd_net", "digits_bptt", "digits_stllr", "dvs_vgg_bptt", "dvs_vgg_stllr",
                             "dvscifar10_vgg11_stllr", "dvscifar10_vgg_bptt", "dvscifar10_vgg_stllr",
                             "stllr_shd_net"])),
    ("--cpu", dict(action="store_true", default=False, help="Disable CUDA training and run training on CPU")),
    ("--dataset", dict(type=str, default="DVSGesture", choices=["DVSGesture", "CIFAR10DVS", "SHD", "Digits"],
                       help="Choice of the dataset")),
    ("--save-path", dict(type=str, default="./experiments/default",
                         help="Directory to save the checkpoint and logs of the experiment")),
    ("--data-path", dict(type=str, default=None, help="Path for the datasets folder.")),
    ("--trials", dict(type=int, default=1, help="Number of trials (repetitions with different initializations)")),
    ("--epochs", dict(type=int, default=100, help="Number of epochs to train (the total: with --resume, "
                                                    "the run continues up to this epoch)")),
    ("--optimizer", dict(type=str, choices=list(OPTIMIZERS), default="Adam", help="Choice of the optimizer")),
    ("--loss", dict(type=str, choices=["MSE", "BCE", "CE"], default="CE", help="Choice of the loss function")),
    ("--lr", dict(type=float, default=1e-3, help="Initial learning rate")),
    ("--batch-size", dict(type=int, default=16, help="Batch size for training")),
    ("--val-batch-size", dict(type=int, default=5, help="Batch size for testing")),
    ("--label-encoding", dict(type=str, default="class", choices=["class", "one-hot"],
                              help="Label encoding (one-hot for DFA in the original; either works here).")),
    ("--activation", dict(type=str, default="LinearSpike",
                          choices=["Surrogate", "LinearSpike", "STLLRConv2dGradNormOut", "STLLRConv2dGradExp",
                                   "STLLRConv2dSigmoid", "GradSigmoid", "STLLRLinearRecGradNorm",
                                   "STLLRLinearRecGradSigmoid"],
                          help="The original's name of the secondary activation function (Psi).")),
    ("--seed", dict(type=int, default=1234, help="Seed for reproducibility.")),
    ("--pretrained-model", dict(type=str, default=None, help="Path for the pretrained model")),
    ("--training-mode", dict(type=str, default="stllr", choices=["stllr_online", "stllr", "bptt"],
                             help="Training mode.")),
    ("--feedback-mode", dict(type=str, default="BP", choices=["BP", "DFA", "sDFA"],
                             help="Feedback mode to produce the learning signal.")),
    ("--delay-ls", dict(type=int, default=5,
                        help="Number of final time steps that get a learning signal (T - T_l); a sample "
                             "shorter than this gets it on every step, as in the original. Must be >= 1 "
                             "with S-TLLR (0 would learn nothing); ignored by --training-mode bptt.")),
    ("--scheduler", dict(type=int, default=0, help="Cosine learning-rate decay over this many epochs (0: none).")),
    ("--print-freq", dict(type=int, default=200, help="Frequency (in batches) of printing results.")),
    ("--factors-stdp", dict(nargs="+", type=float, default=[0.2, 0.75, -1, 1],
                            help="STDP parameters [lambda_post, lambda_pre, alpha_post, alpha_pre].")),
    ("--pooling", dict(type=str, default="MAX", choices=["MAX", "AVG"], help="Pooling layer.")),
    ("--weight-decay", dict(type=float, default=0, help="Weight decay L2 normalization")),
)
NEW_FLAGS = (
    ("--backend", dict(type=str, default="auto", choices=["auto", "triton", "cuda", "cpu", "torch"],
                       help="Kernel backend of stllr_kernels (auto: the fastest available).")),
    ("--step-mode", dict(type=str, default="auto", choices=["auto", "online", "sequence", "chunk"],
                         help="How S-TLLR calls the model; same gradients. online: one time step per call "
                              "(memory flat in T); sequence: the whole sequence per call (time-fused; memory "
                              "grows with T); chunk: --chunk-size steps per call, states carried (time-fused "
                              "speed, memory flat in T); auto: chunk for --training-mode stllr, online for "
                              "stllr_online. --training-mode bptt: online (auto) or sequence.")),
    ("--chunk-size", dict(type=int, default=10,
                          help="--step-mode chunk: time steps per model call (the loss on each chunk's share "
                               "of the last --delay-ls steps, a backward per chunk, one optimizer step per "
                               "batch).")),
    ("--resume", dict(type=str, default=None, metavar="PATH",
                      help="Continue a run exactly from its checkpoint (save-path/checkpoint.pth.tar), "
                           "with the same flags; --epochs and --trials are totals and may grow.")),
    ("--override", dict(action="append", default=None, metavar="NAME",
                        help="With --resume: accept a changed value of flag NAME (e.g. --override lr); "
                             "recorded in the checkpoint. Repeat for several flags.")),
    ("--workers", dict(type=int, default=None, help="DataLoader workers (default: 0 for Digits, else 4).")),
    ("--device", dict(type=str, default=None, help="torch device, e.g. cuda:1 (default: cuda if available "
                                                    "and not --cpu, else cpu).")),
    ("--frames", dict(type=str, default="original", choices=["original", "counts"],
                      help="How events become frames. original: the original code's tensors, quirks included "
                           "(the paper's inputs); counts: plain event counts at the network's resolution.")),
    ("--download", dict(action="store_true", default=False,
                        help="Fetch a missing dataset's archives (tonic's URLs and checksums) into --data-path.")),
    ("--dist-timeout", dict(type=float, default=10.0, metavar="MINUTES",
                            help="Distributed runs: a collective that waits longer than this (a hung "
                                 "process) fails the job.")),
    ("--precision", dict(type=str, default="32", choices=["32", "bf16-mixed", "16-mixed"],
                         help="32: float32. bf16-mixed: the forward under torch.autocast in bfloat16 (CPU or "
                              "CUDA). 16-mixed: float16 autocast with a GradScaler (CUDA only). Membrane, "
                              "traces and gradients stay float32 (docs/precision.md).")),
    ("--compile", dict(type=str, nargs="?", const="inductor", default=None,
                       choices=["inductor", "aot_eager", "eager"],
                       help="torch.compile the model for training and evaluation (one graph per call; "
                            "DFA/sDFA: one more at each feedback hook) with this compiler backend: inductor "
                            "(taken when --compile is given alone), or aot_eager / eager, which compile in "
                            "seconds. See docs/compile.md.")),
)
FLAGS = ORIGINAL_FLAGS + NEW_FLAGS
_TABLE = dict(FLAGS)
# `--help` groups the flags as: the original's, this package's additions, and those of distributed
# runs (torchrun), which are the entries of NEW_FLAGS named here.
DISTRIBUTED_FLAGS = ("--dist-timeout",)


def field_name(flag: str) -> str:
    """The argparse name of a flag, which is its RunConfig field: --delay-ls -> delay_ls."""
    return flag.lstrip("-").replace("-", "_")


def _default(flag: str):
    default = _TABLE[flag]["default"]
    return tuple(default) if isinstance(default, list) else default  # a frozen config holds no lists


@dataclass(frozen=True)
class RunConfig:
    """Everything one run of `python -m training` is told. Fields: the flags (see FLAGS for help)."""

    arch: str = _default("--arch")
    cpu: bool = _default("--cpu")
    dataset: str = _default("--dataset")
    save_path: str = _default("--save-path")
    data_path: Optional[str] = _default("--data-path")
    trials: int = _default("--trials")
    epochs: int = _default("--epochs")
    optimizer: str = _default("--optimizer")
    loss: str = _default("--loss")
    lr: float = _default("--lr")
    batch_size: int = _default("--batch-size")
    val_batch_size: int = _default("--val-batch-size")
    label_encoding: str = _default("--label-encoding")
    activation: str = _default("--activation")
    seed: int = _default("--seed")
    pretrained_model: Optional[str] = _default("--pretrained-model")
    training_mode: str = _default("--training-mode")
    feedback_mode: str = _default("--feedback-mode")
    delay_ls: int = _default("--delay-ls")
    scheduler: int = _default("--scheduler")
    print_freq: int = _default("--print-freq")
    factors_stdp: tuple = _default("--factors-stdp")
    pooling: str = _default("--pooling")
    weight_decay: float = _default("--weight-decay")
    backend: str = _default("--backend")
    step_mode: str = _default("--step-mode")
    chunk_size: int = _default("--chunk-size")
    resume: Optional[str] = _default("--resume")
    override: Optional[tuple] = _default("--override")
    workers: Optional[int] = _default("--workers")
    device: Optional[str] = _default("--device")
    frames: str = _default("--frames")
    download: bool = _default("--download")
    dist_timeout: float = _default("--dist-timeout")
    precision: str = _default("--precision")
    compile: Optional[str] = _default("--compile")

    def __post_init__(self):
        for name in ("factors_stdp", "override"):  # lists from argparse or a caller: stored immutable
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def from_args(cls, namespace) -> "RunConfig":
        """From the parser's namespace (exactly the fields: an unknown name is a TypeError)."""
        return cls(**vars(namespace))

    def validate(self) -> "RunConfig":
        """Raise FlagError (naming the flag) for the first setting that cannot make a run; else self.

        Reads the machine (files, devices, backends) but changes nothing.
        """
        problem = _first_problem(self)
        if problem:
            raise FlagError(problem)
        return self


_FIELDS = tuple(field_name(flag) for flag, _ in FLAGS)


def resolve_device(config: RunConfig) -> "torch.device":
    """--device, else cuda when there is one and --cpu is not given, else cpu."""
    import torch

    if config.device:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() and not config.cpu else "cpu")


def _type_problem(flag: str, value) -> Optional[str]:
    """What argparse checks on the command line (type, choices), for a config built in Python."""
    kwargs = _TABLE[flag]
    if value is None and kwargs.get("default") is None:
        return None
    expected = bool if kwargs.get("action") == "store_true" else kwargs.get("type", str)
    many = kwargs.get("nargs") == "+" or kwargs.get("action") == "append"  # a tuple of values
    if many and not isinstance(value, tuple):
        return f"{flag}: expected a sequence of {expected.__name__}, got {value!r}"
    for v in value if many else (value,):
        # bool is an int in Python but not a flag's number; an int is a fine float
        accepted = (int, float) if expected is float else expected
        if not isinstance(v, accepted) or (expected is not bool and isinstance(v, bool)):
            return f"{flag}: expected {expected.__name__}, got {v!r}"
    if "choices" in kwargs and value not in kwargs["choices"]:
        return f"{flag}: expected one of {list(kwargs['choices'])}, got {value!r}"
    return None


def _first_problem(c: RunConfig) -> Optional[str]:
    """None if the config makes a valid run, else the first problem, in one sentence."""
    import torch  # here, not at the top: the flag table must load without torch

    from stllr_kernels.backends import unavailable_reason as backend_unavailable_reason
    from stllr_kernels.config import check_factors

    from . import precision
    from .data import DATASETS
    from .models import ARCHS

    for flag in _TABLE:  # what argparse checks for the command line, here for Python callers too
        problem = _type_problem(flag, getattr(c, field_name(flag)))
        if problem:
            return problem
    try:
        check_factors(list(c.factors_stdp))
    except (TypeError, ValueError) as exc:
        return f"--factors-stdp: {exc}"
    for flag, value, low in (("--epochs", c.epochs, 1), ("--trials", c.trials, 1),
                             ("--batch-size", c.batch_size, 1), ("--val-batch-size", c.val_batch_size, 1),
                             ("--delay-ls", c.delay_ls, 0), ("--scheduler", c.scheduler, 0),
                             ("--print-freq", c.print_freq, 1), ("--chunk-size", c.chunk_size, 1)):
        if value < low:
            return f"{flag} must be >= {low}, got {value}"
    if c.workers is not None and c.workers < 0:
        return f"--workers must be >= 0, got {c.workers}"
    if not 0 < c.lr < math.inf:
        return f"--lr must be > 0 and finite, got {c.lr}"
    if not 0 <= c.weight_decay < math.inf:
        return f"--weight-decay must be >= 0 and finite, got {c.weight_decay}"
    if not 0 < c.dist_timeout < math.inf:
        return f"--dist-timeout must be > 0 and finite (minutes), got {c.dist_timeout}"
    if not 0 <= c.seed < 2 ** 63:
        return f"--seed must be in [0, 2**63), got {c.seed}"
    if c.delay_ls == 0 and c.training_mode != "bptt":
        return ("--delay-ls 0 gives no time step a learning signal: S-TLLR would learn nothing "
                "(use >= 1; the original's default is 5)")
    if c.override and not c.resume:
        return "--override only applies with --resume"
    try:
        run_flags.check_override_names(c.override, set(_FIELDS))
    except FlagError as exc:
        return str(exc)
    save_problem = run_dir.problem(c.save_path)
    if save_problem:
        return save_problem
    arch, spec = ARCHS[c.arch], DATASETS[c.dataset]
    fits = DATASETS[arch.dataset]
    if (fits.frame_shape, fits.num_classes) != (spec.frame_shape, spec.num_classes):
        return (f"--arch {c.arch} is built for {arch.dataset} (input {fits.frame_shape}, "
                f"{fits.num_classes} classes), not for --dataset {c.dataset} (input "
                f"{spec.frame_shape}, {spec.num_classes} classes)")
    if not arch.stllr and c.training_mode != "bptt":
        return f"--arch {c.arch} is a BPTT baseline; it needs --training-mode bptt"
    if not arch.stllr and c.feedback_mode != "BP":
        return f"--feedback-mode {c.feedback_mode} needs an S-TLLR architecture; {c.arch} is BPTT"
    if c.training_mode == "stllr_online" and c.step_mode in ("sequence", "chunk"):
        return (f"--training-mode stllr_online updates the weights at every step; it needs --step-mode "
                f"online (or auto), not {c.step_mode}")
    if c.training_mode == "bptt" and c.step_mode == "chunk":
        return ("--training-mode bptt back-propagates through the whole sequence: --step-mode chunk would "
                "cut its gradient at each chunk; use online (or auto) or sequence")
    if spec.needs_path and not c.data_path:
        return f"--dataset {c.dataset} needs --data-path (the folder holding the dataset)"
    if spec.needs_path and not os.path.isdir(c.data_path):
        return f"--data-path {c.data_path!r} is not a directory"
    for flag, path in (("--resume", c.resume), ("--pretrained-model", c.pretrained_model)):
        if path is not None and not os.path.isfile(path):
            return f"{flag}: no file at {path!r}"
    try:
        device = torch.device(c.device) if c.device else None
    except RuntimeError as exc:
        return f"--device: {exc}"
    if device is not None and device.type not in ("cpu", "cuda"):
        return f"--device {c.device}: expected cpu or cuda[:N]"
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {c.device}: CUDA is not available on this machine"
    if device is not None and device.type == "cuda" and c.cpu:
        return f"--cpu and --device {c.device} contradict each other"
    if c.backend != "auto":
        reason = backend_unavailable_reason(c.backend, resolve_device(c).type)
        if reason:
            return f"--backend {c.backend}: {reason}"
    return precision.problem(c.precision, resolve_device(c).type)

