"""The benchmark scripts run (tiny --quick sizes) and their measuring tools measure what they claim."""
import csv

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close_policy, backend

from benchmarks import chunk_sweep, common, machine, macs, memory, networks, summary, train_step
from stllr_kernels.nn import LinearRecSTLLR, LinearSTLLR
from training.models import DEFAULT_ACTIVATION
from training.models.vgg import VGGBPTT


def test_naive_outer_product_matches_the_package(seed):
    """The naive per-sample formula (the train_step baseline) gives the package's S-TLLR gradients."""
    K, N, B, T = 7, 5, 3, 4
    fast = LinearRecSTLLR(K, N, factors=(0.5, 0.9, -0.3, 1.0))
    naive = networks.NaiveLinearRecSTLLR(K, N, factors=(0.5, 0.9, -0.3, 1.0))
    naive.load_state_dict(fast.state_dict())
    x = (torch.rand(T, B, K) < 0.5).float() * 2.0  # strong input: the layer spikes
    with backend("torch"):
        for layer in (fast, naive):
            layer.reset_state()
            for t in range(T):
                (layer(x[t]) * torch.linspace(-1, 1, N)).sum().backward()
    for name, p in fast.named_parameters():
        if p.requires_grad:  # each gradient sums B x T outer products (and the gains, a row of K)
            assert_close_policy(dict(naive.named_parameters())[name].grad, p.grad, reduction=B * T * K,
                                msg=f"gradient of {name}")
    assert fast.weight_rec.grad.abs().sum() > 0  # the recurrent term was exercised


def test_live_tensor_tracker_counts_saved_and_freed_tensors():
    x = torch.randn(256, 256, requires_grad=True)  # before the tracker: not counted
    tracker = common.LiveTensorTracker()
    nbytes = 256 * 256 * 4
    with tracker:
        y = (x * 2).sigmoid()  # x*2 is freed, the sigmoid output is saved for backward
        assert tracker.current == nbytes
        y.sum().backward()
        del y
    assert tracker.current == nbytes  # only x.grad is left
    assert nbytes * 2 <= tracker.peak <= nbytes * 4


def test_count_macs_of_one_stllr_step_matches_the_analytic_count():
    B, K, N = 3, 11, 5
    layer = LinearSTLLR(K, N, normalization=False)
    x = torch.rand(B, K, requires_grad=True)
    with backend("torch"):  # as macs.py counts: the reference ops are aten matmuls
        forward = common.count_macs(lambda: layer(x))
        layer.reset_state()
        total = common.count_macs(
            lambda: F.cross_entropy(layer(x), torch.zeros(B, dtype=torch.long)).backward())
    assert forward == B * N * K
    # backward: dW is two GEMMs (causal and non-causal terms), dx one
    assert total == forward + 3 * B * N * K


@pytest.mark.parametrize("spec,batch,method", [(networks.SHD.with_(T=5, delay_ls=3), 2, "stllr_chunk"),
                                               (networks.GESTURE.with_(T=2, delay_ls=1), 1, "stllr_fused")],
                         ids=["shd-chunk", "vgg-fused"])
def test_gemm_shapes_hold_the_counted_macs_and_replay_them(spec, batch, method):
    """The torch.mm replay of a batch runs exactly the MACs FlopCounterMode counts (convs as im2col GEMMs)."""
    trainer = networks.make_trainer(spec, method, "cpu", chunk_size=2)
    x, y = networks.make_batch(spec, batch, "cpu")
    shapes = machine.gemm_shapes(lambda: trainer.train_batch(x, y))
    with backend("torch"):
        counted = common.count_macs(lambda: trainer.train_batch(x, y))
    assert machine.macs(shapes) == counted > 0
    replayed = common.count_macs(machine.mm_replay(shapes, "cpu"))
    assert replayed == counted  # blocks of at most MAX_DIM rows: the same MACs


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """The three scripts in --quick mode, once, into one folder (as `make bench` fills results/)."""
    out = tmp_path_factory.mktemp("results")
    train_step.main(["--quick", "--out", str(out), "--models", "shd"])
    chunk_sweep.main(["--quick", "--out", str(out), "--models", "shd"])
    memory.main(["--quick", "--out", str(out), "--models", "shd"])
    macs.main(["--quick", "--out", str(out)])
    return out


@pytest.mark.slow
def test_train_step_quick(quick_results):
    rows = _rows(quick_results / "train_step_cpu.csv")
    assert {r["provider"] for r in rows} == set(train_step.PROVIDERS)
    assert all(r["median"] != "—" or r["note"] for r in rows)
    share = {r["provider"]: r["pct_of_torch_mm"] for r in rows}
    assert share[train_step.CHUNK].endswith(" %") and share[train_step.FUSED].endswith(" %")
    assert not share["BPTT (lean torch)"]  # only the S-TLLR rows are replayed
    assert (quick_results / "train_step_cpu.png").stat().st_size > 0
    assert "| SHD |" in (quick_results / "train_step_cpu.md").read_text()


@pytest.mark.slow
def test_chunk_sweep_quick(quick_results):
    rows = _rows(quick_results / "chunk_sweep_cpu.csv")
    assert [r["mode"] for r in rows] == ["online", "time-fused", "chunk 1", "chunk 2", "chunk 4"]
    assert all(int(r["peak_bytes"]) > 0 for r in rows)  # (at these tiny sizes weight-sized tensors dominate)
    assert all(r["x time-fused"].endswith("x") for r in rows[1:])
    assert (quick_results / "chunk_sweep_cpu.png").stat().st_size > 0


@pytest.mark.slow
def test_memory_quick(quick_results):
    rows = _rows(quick_results / "memory_cpu.csv")
    online = [int(r["peak_bytes"]) for r in rows if r["method"] == "S-TLLR online"]
    bptt = [int(r["peak_bytes"]) for r in rows if r["method"] == "BPTT (stllr_kernels.nn)"]
    assert online[0] == online[-1]  # S-TLLR online does not grow with T
    assert bptt[-1] > bptt[0]        # BPTT does
    assert (quick_results / "memory_cpu.png").stat().st_size > 0


@pytest.mark.slow
def test_macs_quick(quick_results):
    rows = _rows(quick_results / "macs.csv")
    assert len(rows) == 2 * len(macs.METHODS)
    for r in rows:
        assert int(r["total_macs"]) > int(r["forward_macs"]) > 0


@pytest.mark.slow
def test_summary_reads_all_three(quick_results):
    summary.main(["--out", str(quick_results)])
    text = (quick_results / "summary_cpu.md").read_text()
    assert "s / batch" in text and "peak memory" not in text  # quick memory has no T=100 row
    assert "MACs / sample" in text


def largest_fan_in(model) -> int:
    """The longest sum any layer of `model` forms: the reduction length of its outputs' noise."""
    return max(p[0].numel() for p in model.parameters() if p.dim() >= 2)


def test_spikingjelly_vgg_is_the_same_network_as_the_bptt_vgg(seed):
    """The SpikingJelly baseline computes the same forward as this package's BPTT model."""
    pytest.importorskip("spikingjelly.activation_based.neuron")
    # the training package's BPTT VGG (as the dvs_vgg_bptt builder makes it) on small 8x8 frames
    ours = VGGBPTT(2, 8, 8, 11, DEFAULT_ACTIVATION, dropout=0.0)
    with torch.no_grad():  # at its initial gains the deep layers stay silent on random input
        for conv in ours.convs:
            conv.gain.fill_(4.0)
    theirs = networks.SpikingJellyModel(ours)  # a copy: same weights
    x = (torch.rand(5, 2, 2, 8, 8) < 0.3).float() * 3.0
    ours.reset_states()
    theirs.reset_states()
    out = ours.sequence(x, x.shape[0])
    assert out.std() > 0  # the last layer spiked: the comparison is not of two constant outputs
    assert_close_policy(theirs.sequence(x, x.shape[0]), out, reduction=largest_fan_in(ours))


def test_spikingjelly_shd_is_the_same_network_as_the_bptt_shd(seed):
    pytest.importorskip("spikingjelly.activation_based.neuron")
    ours = networks.make_trainer(networks.SHD.with_(T=6), "bptt", "cpu").model
    theirs = networks.SpikingJellyModel(ours)
    x = (torch.rand(6, 3, 700) < 0.2).float() * 3.0
    ours.reset_states()
    theirs.reset_states()
    out = ours.sequence(x, x.shape[0])
    assert out.std() > 0
    assert_close_policy(theirs.sequence(x, x.shape[0]), out, reduction=largest_fan_in(ours))


def test_methods_build_the_training_clis_models():
    """The benchmarks train what `python -m training` builds from the README's flags."""
    from training.models import SHDSTLLR, VGGSTLLR
    shd = networks.make_trainer(networks.SHD, "naive", "cpu")
    assert isinstance(shd.model, SHDSTLLR) and isinstance(shd.model.linear1, networks.NaiveLinearRecSTLLR)
    assert (shd.training_mode, shd.step_mode, shd.delay_ls) == ("stllr", "online", 90)
    chunk = networks.make_trainer(networks.SHD, "stllr_chunk", "cpu", chunk_size=7)
    assert (chunk.step_mode, chunk.chunk_size) == ("chunk", 7)
    assert shd.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)
    fused = networks.make_trainer(networks.GESTURE, "stllr_fused", "cpu")
    assert isinstance(fused.model, VGGSTLLR) and fused.step_mode == "sequence" and fused.delay_ls == 5
    assert "naive" not in networks.methods(networks.GESTURE)


def test_precision_digits_table_compares_each_seed_and_the_means():
    """The float32 / bf16-mixed table: differences per seed (bf16 minus float32), means, the largest."""
    from benchmarks import precision_digits

    def row(run, best, final):
        return {"run": run, "best_acc1": best, "best_epoch": "3", "final_acc1": final, "seconds_per_epoch": "0.2",
                "saved_for_backward_peak_mb": "2.0", "peak_memory_mb": "500", "run_seconds": "5"}
    results = {(1, "float32"): {"S-TLLR": row("S-TLLR", "97.0", "96.0"), "BPTT": row("BPTT", "95.0", "95.0")},
               (1, "bf16-mixed"): {"S-TLLR": row("S-TLLR", "96.5", "96.0"), "BPTT": row("BPTT", "96.0", "94.0")},
               (2, "float32"): {"S-TLLR": row("S-TLLR", "98.0", "97.0"), "BPTT": row("BPTT", "96.0", "96.0")},
               (2, "bf16-mixed"): {"S-TLLR": row("S-TLLR", "98.5", "97.0"), "BPTT": row("BPTT", "96.0", "96.0")}}
    text, worst = precision_digits.table(results, [1, 2])
    lines = text.splitlines()
    assert "| 1 | S-TLLR | 97.00 / 96.00 | 96.50 / 96.00 | -0.50 / 0.00 |" in lines[2]
    assert "| mean | S-TLLR | 97.50 / 96.50 | 97.50 / 96.50 | 0.00 / 0.00 |" in lines[4]
    assert "| 1 | BPTT | 95.00 / 95.00 | 96.00 / 94.00 | +1.00 / -1.00 |" in lines[5]
    assert worst == {"S-TLLR": 0.5, "BPTT": 1.0}
