"""Load a model trained by `python -m training` and run it for inference.

    python examples/load_checkpoint.py RUN_DIR [--trial K]
    python examples/load_checkpoint.py [--tiny]     # trains a Digits run into ./experiments/example_digits first

A run's trained weights are in RUN_DIR/trial_K_model_best.pth.tar, under "state_dict" (the epoch
with the best test accuracy); its flags are in RUN_DIR/summary.json. `build_model(config)` builds a
fresh, untrained model of the run's architecture; loading the state_dict makes it the trained one.
The script evaluates it on the run's test set, which gives the run's recorded best accuracy again.
"""
import argparse
import dataclasses
import json
import os

import torch

from training.config import RunConfig
from training.data import build_dataset, make_loader
from training.models import build_model
from training.runner import run

EXAMPLE_RUN = "./experiments/example_digits"


def load_run(run_dir, trial=1, device="cpu"):
    """(config, trained model in eval mode, the summary) of a finished run."""
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    fields = {field.name for field in dataclasses.fields(RunConfig)}
    config = RunConfig(**{k: v for k, v in summary["flags"].items() if k in fields})
    model = build_model(config)                                   # fresh weights
    best = torch.load(os.path.join(run_dir, f"trial_{trial}_model_best.pth.tar"), map_location=device,
                      weights_only=True)                           # never unpickles code
    model.load_state_dict(best["state_dict"])                     # now the trained model
    return config, model.to(device).eval(), summary


def accuracy(model, config, device="cpu"):
    """Top-1 test accuracy (%): the prediction sums the logits of every time step."""
    loader = make_loader(build_dataset(config, train=False), config.val_batch_size, train=False, workers=0)
    correct = total = 0
    with torch.no_grad():
        for x, labels in loader:                                   # x: [T, B, ...], time-major
            model.reset_states()
            logits = model.sequence(x.to(device), 0)               # [T, B, classes]; 0 loss steps
            correct += (logits.sum(0).argmax(1).cpu() == labels).sum().item()
            total += len(labels)
    return 100.0 * correct / total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", help=f"a finished run's --save-path (default: train {EXAMPLE_RUN})")
    parser.add_argument("--trial", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="without RUN_DIR: train for one epoch only")
    args = parser.parse_args(argv)
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = EXAMPLE_RUN
        if not os.path.exists(os.path.join(run_dir, "summary.json")):
            run(RunConfig(dataset="Digits", arch="digits_stllr", epochs=1 if args.tiny else 5, lr=0.01,
                          delay_ls=20, batch_size=32, val_batch_size=256, step_mode="sequence",
                          print_freq=1000, save_path=run_dir))

    config, model, summary = load_run(run_dir, args.trial)
    recorded = next(t["best_acc1"] for t in summary["trials"] if t["trial"] == args.trial)
    measured = accuracy(model, config)
    print(f"{config.arch} on {config.dataset}, trial {args.trial}: test accuracy {measured:.2f}% "
          f"(recorded best {recorded:.2f}%)")


if __name__ == "__main__":
    main()
