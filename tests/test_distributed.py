"""Distributed training on CPU (Gloo, 2 processes on 127.0.0.1): the same weights as one process on
the same global batch, one gradient all-reduce per optimizer step, files and logs from rank 0 only,
test metrics summed over ranks."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import assert_close_policy, tol
from training import distributed
from training.config import RunConfig
from training.engine import Trainer, predict, topk_correct
from training.errors import DistributedError
from training.models import build_model

WORLD = 2
STEPS, T, BATCH = 3, 6, 8  # optimizer steps, time steps, global batch
CHUNK = 3  # --chunk-size of the chunk case: the loss window (4 steps) spans its two chunks
# (name, arch, training mode, step mode, delay_ls, feedback)
CASES = (
    ("stllr", "digits_stllr", "stllr", "online", 4, "BP"),
    ("stllr_sequence", "digits_stllr", "stllr", "sequence", 4, "BP"),
    ("stllr_chunk", "digits_stllr", "stllr", "chunk", 4, "BP"),  # chunks of CHUNK: two backwards, one sync
    ("stllr_online", "digits_stllr", "stllr_online", "online", 2, "BP"),
    ("stllr_dfa", "digits_stllr", "stllr", "online", 3, "DFA"),
    ("bptt", "digits_bptt", "bptt", "online", 1, "BP"),
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, like the spawned ranks: tiny per-step ops on a small shared CPU run
    many times slower with torch's thread pool spin-waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batches(seed: int = 0):
    """STEPS global batches (x [T, BATCH, 64] spikes, labels [BATCH]), the same in every process."""
    gen = torch.Generator().manual_seed(seed)
    return [((torch.rand(T, BATCH, 64, generator=gen) < 0.3).float(), torch.randint(0, 10, (BATCH,), generator=gen))
            for _ in range(STEPS)]


def model_config(arch: str, feedback: str) -> RunConfig:
    return RunConfig(arch=arch, dataset="Digits", factors_stdp=(0.5, 0.8, 1.0, 1.0), feedback_mode=feedback)


def train(case, rank: int = 0, world: int = 1, ddp: bool = True):
    """Train case's model for STEPS optimizer steps on this rank's contiguous share of each global
    batch (through DDP when world > 1 and ddp); returns (state_dict, number of all-reduces)."""
    _, arch, mode, step_mode, delay, feedback = case
    torch.manual_seed(1 + rank)  # other ranks start elsewhere: DDP must give them rank 0's model
    model = build_model(model_config(arch, feedback))
    # SGD: the update is linear in the gradient, so equal gradients give equal weights to rounding
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    calls = [0]
    train_model, sync = model, None
    if world > 1 and ddp:
        train_model, sync = distributed.wrap_model(model, torch.device("cpu"))

        def counting_allreduce(state, bucket):
            calls[0] += 1
            work = dist.all_reduce(bucket.buffer().div_(world), async_op=True)
            return work.get_future().then(lambda fut: fut.value()[0])

        train_model.register_comm_hook(None, counting_allreduce)
    trainer = Trainer(train_model, optimizer, F.cross_entropy, mode, step_mode, delay, chunk_size=CHUNK)
    if sync is not None:
        trainer.sync_context = sync
    share = BATCH // world
    for x, labels in batches():
        rows = slice(rank * share, (rank + 1) * share)
        trainer.train_batch(x[:, rows], labels[rows])
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, calls[0]


def optimizer_steps(case) -> int:
    _, _, mode, _, delay, _ = case
    return STEPS * (min(delay, T) if mode == "stllr_online" else 1)


def _join(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)


def _main_first_checks(rank: int) -> dict:
    """main_first: rank 0's call ends before the others' begin; a failure of rank 0 stops them."""
    import time

    def prepare():
        start = time.time()
        if rank == 0:
            time.sleep(0.3)
        return start, time.time()

    times = distributed.main_first(prepare)
    spans = [None] * WORLD
    dist.all_gather_object(spans, times)

    def fail():
        raise FileNotFoundError("no files")

    try:
        distributed.main_first(fail)
        outcome = "returned"
    except DistributedError as exc:
        outcome = f"DistributedError {exc}"
    except FileNotFoundError:
        outcome = "FileNotFoundError"
    return {"spans": spans, "failure": outcome}


def _equivalence_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    _join(rank, port)
    try:
        results = {case[0]: train(case, rank, WORLD) for case in CASES}
        results["main_first"] = _main_first_checks(rank)
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp"))
    mp.spawn(_equivalence_worker, args=(free_port(), out), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_two_processes_match_one_on_the_global_batch(case, ddp_results):
    single, _ = train(case)
    initial = build_model(model_config(case[1], case[5]))
    for rank in range(WORLD):
        weights, calls = ddp_results[rank][case[0]]
        # one all-reduce per optimizer step (the whole model fits one DDP bucket)
        assert calls == optimizer_steps(case)
        for name, value in single.items():
            # all-reduced half-batch gradients against one sum over the global batch, STEPS times
            assert_close_policy(weights[name], value, reduction=STEPS * T * BATCH * 64,
                                msg=f"{case[0]} rank {rank} {name}")
    # the comparison means something only if training moved the weights
    assert any((single[k] - v).abs().max() > 1e-3 for k, v in initial.state_dict().items()
               if k in single and v.is_floating_point())


@pytest.mark.slow
def test_half_batch_alone_differs(ddp_results):
    """Control: one process on its half of the batch (no all-reduce) does not give those weights."""
    case = CASES[0]
    half, _ = train(case, rank=0, world=WORLD, ddp=False)
    weights, _ = ddp_results[0][case[0]]
    assert any(not torch.allclose(half[k], weights[k], **tol(torch.float32, STEPS * T * BATCH * 64)) for k in half)


@pytest.mark.slow
def test_rank_0_prepares_first_and_its_failure_stops_the_others(ddp_results):
    spans = ddp_results[0]["main_first"]["spans"]
    rank0_end = spans[0][1]
    assert all(start >= rank0_end for start, _ in spans[1:])
    assert ddp_results[0]["main_first"]["failure"] == "FileNotFoundError"  # rank 0 reports it
    for rank in range(1, WORLD):
        outcome = ddp_results[rank]["main_first"]["failure"]
        assert outcome.startswith(f"DistributedError rank {rank}: stopped") and "rank 0 failed" in outcome


def test_global_batch_must_divide_among_processes():
    config = RunConfig(dataset="Digits", arch="digits_stllr", batch_size=16, val_batch_size=5)
    local = distributed.per_process_config(config, 4, torch.device("cpu"))
    assert (local.batch_size, local.val_batch_size, local.device) == (4, 2, "cpu")
    assert (config.batch_size, config.val_batch_size, config.device) == (16, 5, None)  # a new config
    with pytest.raises(DistributedError, match=r"--batch-size 18 \(the global batch\) must be divisible by .* 4"):
        distributed.per_process_config(RunConfig(batch_size=18), 4, torch.device("cpu"))


def test_single_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched() and distributed.is_main() and distributed.world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched()


# ----------------------------------------------------------------------------- the whole command

def _cli_worker(rank: int, port: int, root: str) -> None:
    """One torchrun process, by its environment variables, running `python -m training`."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from training.cli import main

    # a different --save-path per rank shows who writes: only rank 0 may
    # large batches: few steps of Python overhead per epoch, the same arithmetic
    main(["--dataset", "Digits", "--arch", "digits_stllr", "--epochs", "1", "--batch-size", "512",
          "--val-batch-size", "512", "--delay-ls", "3", "--cpu", "--workers", "0",
          "--save-path", os.path.join(root, f"rank{rank}")])


@pytest.mark.slow
def test_command_under_two_processes_writes_from_rank_0_and_reduces_metrics(tmp_path):
    mp.spawn(_cli_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    assert not (tmp_path / "rank1").exists()
    run = tmp_path / "rank0"
    assert {"log.log", "checkpoint.pth.tar", "trial_1_history.csv", "summary.json"} <= set(os.listdir(run))
    log = (run / "log.log").read_text()
    assert log.count("Epoch 1...") == 1

    # the logged test accuracy is over the whole test set, though each rank saw half of it
    import json

    from training.data import DigitsSpikes, pad_collate

    summary = json.loads((run / "summary.json").read_text())
    from training import checkpoint as ckpt

    state = ckpt.load(str(run / "checkpoint.pth.tar"))
    model = build_model(RunConfig(**state["flags"]))
    model.load_state_dict(state["model"])
    test_set = DigitsSpikes(False, seed=state["flags"]["seed"])
    x, labels = pad_collate([test_set[i] for i in range(len(test_set))])
    correct, _ = topk_correct(predict(model, x), labels)
    assert state["history"]["val_acc"][-1] == pytest.approx(100.0 * correct / len(test_set))
    assert summary["trials"][0]["final_acc1"] == pytest.approx(100.0 * correct / len(test_set))
