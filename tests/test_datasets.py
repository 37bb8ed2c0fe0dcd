"""The three dataset pipelines on tiny datasets written in the real on-disk formats.

Expected frames are recomputed here from the written files with plain numpy (no tonic, no
pipeline code): the original's steps (docs/rule.md section 7.1) for the default `--frames original`, and
plain counts for `--frames counts`. A wrong unit, axis, polarity, bin edge, slice, resize, rounding
or split in the pipeline shows up as a mismatch; frames compare exactly.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import re
import shutil
import time

import numpy as np
import pytest
import torch

pytest.importorskip("tonic")
pytest.importorskip("aedat")
pytest.importorskip("flatbuffers")

import dataset_fixtures as fx  # noqa: E402

from training import datasets  # noqa: E402
from training.data import pad_collate  # noqa: E402
from training.datasets import cache as cache_mod  # noqa: E402
from training.datasets import catalog, cifar10dvs, dvs_gesture, shd  # noqa: E402
from training.datasets.errors import DatasetFilesMissing  # noqa: E402
from training.datasets.sources import EventSource, offline  # noqa: E402
from training.datasets.transforms import normalize, random_crop, resize  # noqa: E402
from training.errors import DatasetError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small ops run faster on one thread


def args_for(root, workers=0, frames=None, download=False):
    args = argparse.Namespace(data_path=str(root), workers=workers, download=download)
    if frames is not None:
        args.frames = frames
    return args


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The three tiny datasets, written once; tests that write caches work on copies. Gesture and
    CIFAR10-DVS have a dense patch of events, so that the original's rounded and 8-bit resizes
    give more than zeros."""
    root = tmp_path_factory.mktemp("raw")
    fx.write_shd(str(root))
    fx.write_dvs_gesture(str(root), counts=(20_000, 30_000), blob=0.6)
    fx.write_cifar10dvs(str(root), per_class=10, counts=(2_000, 4_000), blob=0.5)
    return root


@pytest.fixture
def data(raw, tmp_path):
    """A fresh --data-path (raw files, no cache)."""
    target = tmp_path / "data"
    shutil.copytree(raw, target)
    return target


# --- the original's steps, re-stated from docs/rule.md section 7.1 ------------------------------

def tonic_windows(t, window):
    """tonic 1.4.3's SliceByTime: floor((t_last - t_first - window) / window) + 1 windows (at least
    one) from the first event, [start, start + window)."""
    count = max(math.floor((t[-1] - t[0] - window) / window) + 1, 1)
    return [(t[0] + k * window, t[0] + (k + 1) * window) for k in range(count)]


def antialias_weights(n_in, n_out):
    """Bilinear with antialiasing (Pillow / torch antialias=True), float64 [n_out, n_in]: a triangle
    of half-width s = n_in / n_out around each output pixel's centre (i + 0.5) s, rows normalised."""
    s = n_in / n_out
    x = np.arange(n_in) + 0.5
    w = np.stack([np.clip(1 - np.abs(x - (i + 0.5) * s) / s, 0, None) for i in range(n_out)])
    return w / w.sum(axis=1, keepdims=True)


def assert_rounded(got, exact):
    """`got` (integers) equals round(`exact`) (float64), half to even; at an exact .5 tie, where
    float32 and float64 can land on either side, either neighbour is accepted."""
    got = np.asarray(got, dtype=np.float64)
    near_tie = np.abs(np.abs(exact - np.floor(exact)) - 0.5) < 1e-4
    ok = (got == np.round(exact)) | (near_tie & (np.abs(got - exact) <= 0.5 + 1e-4))
    assert ok.all(), f"{(~ok).sum()} values differ, e.g. got {got[~ok][:5]} for {exact[~ok][:5]}"


def gesture_events(path):
    ev = np.load(path)
    return ev[:, 0], ev[:, 1], ev[:, 2], ev[:, 3] * 1000  # x, y, p, t in us (tonic converts ms -> us)


def gesture_frames_128(x, y, p, t):
    """int counts [n, 2, 128, 128] of 75 ms bins from the first event, the incomplete last bin dropped."""
    windows = tonic_windows(t, 75_000)
    frames = np.zeros((len(windows), 2, 128, 128), np.int64)
    for k, (lo, hi) in enumerate(windows):
        m = (t >= lo) & (t < hi)
        np.add.at(frames[k], (p[m], y[m], x[m]), 1)
    return frames


def gesture_resized(counts):
    """The exact (float64) 32x32 values before torchvision rounds them back to int16."""
    w = antialias_weights(128, 32)
    return w @ counts.astype(np.float64) @ w.T  # [32, 128] @ [t, c, 128, 128] @ [128, 32]


def gesture_paths(root, split):
    return sorted(glob.glob(os.path.join(root, "DVSGesture", "ibmGesture" + split.capitalize(), "*", "*.npy")))


def gesture_original_slices(path):
    """The original's training samples of one recording: per 1.575 s slice, frames from the
    slice's first event (exact float64 values before rounding)."""
    x, y, p, t = gesture_events(path)
    out = []
    for lo, hi in tonic_windows(t, 1_575_000):
        m = (t >= lo) & (t < hi)
        if m.any():
            out.append(gesture_resized(gesture_frames_128(x[m], y[m], p[m], t[m])))
    return out


def shd_recordings(root, split):
    import h5py

    with h5py.File(os.path.join(root, "SHD", f"shd_{split}.h5"), "r") as f:
        times, units, labels = f["spikes/times"][()], f["spikes/units"][()], f["labels"][()]
    return [((t_s.astype(np.float64) * 1e6).astype(np.int64), u.astype(np.int64), int(label))
            for t_s, u, label in zip(times, units, labels)]


def shd_original(t, u):
    """[n <= 99, 700]: one 1 s slice from the first spike, 10 ms bins from it, last incomplete dropped."""
    in_slice = t < t[0] + 1_000_000
    t, u = t[in_slice], u[in_slice]
    windows = tonic_windows(t, 10_000)
    frames = np.zeros((len(windows), 700), np.float32)
    for k, (lo, hi) in enumerate(windows):
        m = (t >= lo) & (t < hi)
        np.add.at(frames[k], u[m], 1)
    return frames


def shd_counts(t, u):
    """[100, 700]: bins [k*10 ms, (k+1)*10 ms) from t = 0; spikes at or after 1 s dropped."""
    keep = t < 1_000_000
    frames = np.zeros((100, 700), np.float32)
    np.add.at(frames, (t[keep] // 10_000, u[keep]), 1)
    return frames


def cifar_events(path):
    import aedat

    ev = np.concatenate([pkt["events"] for pkt in aedat.Decoder(path)])
    return ev["x"].astype(int), ev["y"].astype(int), ev["on"].astype(int)


def cifar_original_counts(path):
    """10 frames of N // 10 consecutive events, the last taking the remainder (spikingjelly)."""
    x, y, p = cifar_events(path)
    n = len(x) // 10
    frames = np.zeros((10, 2, 128, 128), np.float32)
    for k in range(10):
        end = (k + 1) * n if k < 9 else len(x)
        np.add.at(frames[k], (p[k * n:end], y[k * n:end], x[k * n:end]), 1)
    return frames


def cifar_tonic_counts(path):
    """tonic's 10 bins of N // 10 events, the leftover dropped (the counts encoding)."""
    x, y, p = cifar_events(path)
    n = len(x) // 10
    frames = np.zeros((10, 2, 128, 128), np.float32)
    np.add.at(frames, (np.arange(10 * n) // n, p[:10 * n], y[:10 * n], x[:10 * n]), 1)
    return frames


def cifar_original_images(path):
    """uint8 [10, 2, 48, 48] as the original makes them: ToPILImage (mul(255).byte(): modulo 256,
    an "LA" image), then Pillow's Resize(48)."""
    from PIL import Image

    wrapped = (cifar_original_counts(path).astype(np.int64) * 255 % 256).astype(np.uint8)
    out = []
    for frame in wrapped:
        image = Image.fromarray(np.dstack([frame[0], frame[1]]), mode="LA").resize((48, 48), Image.BILINEAR)
        out.append(np.asarray(image).transpose(2, 0, 1))
    return np.stack(out)


def cifar_split(root, split):
    """(path, label) per class, by the index in the file name: 0-899 train, 900-999 test."""
    out = []
    for label, name in enumerate(catalog.CIFAR10DVS_CLASSES):
        paths = glob.glob(os.path.join(root, "CIFAR10DVS", name, "*.aedat4"))
        index = {p: int(re.search(r"(\d+)\.aedat4$", p).group(1)) for p in paths}
        chosen = [p for p in paths if (index[p] < 900) == (split == "train")]
        out += [(p, label) for p in sorted(chosen, key=index.get)]
    return out


def shifts_of(window, padding):
    """Every crop of `window` [T, C, H, W] zero-padded by `padding`."""
    h, w = window.shape[-2:]
    padded = torch.nn.functional.pad(window, (padding,) * 4)
    return [padded[..., i:i + h, j:j + w] for i in range(2 * padding + 1) for j in range(2 * padding + 1)]


MEAN = torch.tensor([0.2728, 0.1295]).view(1, 2, 1, 1)  # the original's values (docs/rule.md section 7.1)
STD = torch.tensor([0.2225, 0.1290]).view(1, 2, 1, 1)


# --- SHD ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("train", [True, False])
def test_shd_original_frames(data, train):
    ds = shd.build(args_for(data), train)  # --frames original is the default
    expected = shd_recordings(data, "train" if train else "test")
    assert len(ds) == len(expected)
    lengths = set()
    for i, (t, u, label) in enumerate(expected):
        x, y = ds[i]
        want = shd_original(t, u)
        assert x.dtype == torch.float32 and y == label and x.shape[1:] == (700,)
        torch.testing.assert_close(x, torch.from_numpy(want), rtol=0, atol=0)
        lengths.add(len(want))
        assert t[0] > 0  # the fixture's onsets: bins from t = 0 would differ
    steps = catalog.SHD.steps["original"]  # 99: 1 s of 10 ms bins from the first spike, the last dropped
    assert max(lengths) <= steps
    if train:  # a recording of over 1 s gives the full 99 frames, a shorter one fewer
        assert steps in lengths and len(lengths) > 1


@pytest.mark.parametrize("train", [True, False])
def test_shd_counts_frames(data, train):
    ds = shd.build(args_for(data, frames="counts"), train)
    expected = shd_recordings(data, "train" if train else "test")
    assert len(ds) == len(expected)
    assert any((t >= 1_000_000).any() for t, _, _ in expected) or not train  # spikes after 1 s
    for i, (t, u, label) in enumerate(expected):
        x, y = ds[i]
        assert x.dtype == torch.float32 and tuple(x.shape) == (catalog.SHD.steps["counts"], 700)
        assert type(y) is int and y == label
        torch.testing.assert_close(x, torch.from_numpy(shd_counts(t, u)), rtol=0, atol=0)


def test_shd_batches_pad_to_the_longest_sample(data):
    ds = shd.build(args_for(data), True)
    items = [ds[i] for i in range(len(ds))]
    x, labels = pad_collate(items)
    longest = max(len(f) for f, _ in items)
    assert x.shape == (longest, len(items), 700)
    for b, (frames, label) in enumerate(items):
        assert torch.equal(x[:len(frames), b], frames) and not x[len(frames):, b].any()
        assert labels[b] == label


def test_shd_cache_workers_give_same_frames(data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(data, other)
    a = shd.build(args_for(data, workers=0), True)
    b = shd.build(args_for(other, workers=2), True)
    assert len(a) == len(b)
    for i in range(len(a)):
        torch.testing.assert_close(a[i][0], b[i][0], rtol=0, atol=0)
        assert a[i][1] == b[i][1]


# --- DVS Gesture --------------------------------------------------------------------------------

def test_resize_of_integer_frames_matches_a_hand_computed_case():
    """8x8 -> 2x2: output (0, 0) weighs input rows/columns 0..5 by the triangle 1 - |x + 0.5 - 2| / 4,
    i.e. 0.625, 0.875, 0.875, 0.625, 0.375, 0.125 (sum 3.5); a block of 4s in rows/columns 0..3
    gives 4 (3/3.5)^2 = 2.94 -> 3, 4 (3/3.5)(0.5/3.5) = 0.49 -> 0, 4 (0.5/3.5)^2 = 0.08 -> 0."""
    from training.datasets.resample import resize_integer

    frames = torch.zeros(1, 1, 8, 8, dtype=torch.int16)
    frames[..., :4, :4] = 4
    exact = torch.nn.functional.interpolate(frames.float(), size=(2, 2), mode="bilinear", antialias=True)
    torch.testing.assert_close(exact[0, 0], torch.tensor([[4 * (3 / 3.5) ** 2, 4 * 3 * 0.5 / 3.5 ** 2],
                                                          [4 * 3 * 0.5 / 3.5 ** 2, 4 * (0.5 / 3.5) ** 2]]))
    got = resize_integer(frames, 2)
    assert got.dtype == torch.int16 and got[0, 0].tolist() == [[3, 0], [0, 0]]
    w = antialias_weights(8, 2)  # the re-statement used by the pipeline tests agrees
    np.testing.assert_allclose(w @ frames[0, 0].numpy() @ w.T, exact[0, 0].numpy(), rtol=1e-6)


def test_gesture_original_test_items_are_whole_recordings(data):
    ds = dvs_gesture.build(args_for(data), train=False)
    paths = gesture_paths(data, "test")
    assert len(ds) == len(paths)
    lengths = set()
    for i, path in enumerate(paths):
        x, y = ds[i]
        x_, y_, p, t = gesture_events(path)
        exact = gesture_resized(gesture_frames_128(x_, y_, p, t))
        assert y == int(os.path.basename(path)[:-4]) and x.dtype == torch.float32
        assert tuple(x.shape) == (len(exact), 2, 32, 32)
        assert_rounded(x.numpy(), exact)
        lengths.add(x.shape[0])
    assert len(lengths) > 1  # T varies with the recording


def test_gesture_original_training_slices(data):
    ds = dvs_gesture.build(args_for(data), train=True)
    expected = []
    for path in gesture_paths(data, "train"):
        label = int(os.path.basename(path)[:-4])
        expected += [(frames, label) for frames in gesture_original_slices(path)]
    lengths = [len(f) for f, _ in expected]
    steps = catalog.DVS_GESTURE.steps["original"]  # 20: 1.575 s of 75 ms frames, the last bin dropped
    assert max(lengths) == steps and min(lengths) < steps, "fixture lacks a full or a short slice"
    assert len(ds) == len(expected)

    crop = ds.transform
    ds.transform = None  # the slices themselves
    nonzero = 0
    for i, (exact, label) in enumerate(expected):
        x, y = ds[i]
        assert y == label and tuple(x.shape) == (len(exact), 2, 32, 32)
        assert_rounded(x.numpy(), exact)
        nonzero += int((x > 0).sum())
        assert (x >= 0).all() and torch.equal(x, x.round())
    assert nonzero > 100  # the rounded resize left real activity to compare

    ds.transform = crop  # training items: the slice moved by a random crop (padding 4)
    torch.manual_seed(0)
    ds.transform = None
    plain = ds[0][0]
    ds.transform = crop
    candidates = shifts_of(plain, 4)
    offsets = set()
    for _ in range(12):
        x, _ = ds[0]
        hits = [k for k, c in enumerate(candidates) if torch.equal(c, x)]
        assert hits, "a training item is not a padded crop of its slice"
        offsets.add(hits[0])
    assert len(offsets) > 1
    x, _ = pad_collate([ds[i] for i in range(len(ds))])
    assert x.shape[0] == steps  # padded per batch to its longest sample


def test_gesture_counts_test_items_are_whole_recordings(data):
    ds = dvs_gesture.build(args_for(data, frames="counts"), train=False)
    expected = gesture_counts_expected(data, "test")
    assert len(ds) == len(expected)
    for i, (frames, label) in enumerate(expected):
        x, y = ds[i]
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == dvs_gesture.INPUT_SHAPE
        assert y == label
        torch.testing.assert_close(x, torch.from_numpy(frames), rtol=0, atol=0)


def gesture_counts_expected(root, split):
    """Whole-recording frames [T, 2, 32, 32] of the counts encoding, in file-path order: 4x4 blocks
    summed, 75 ms bins from the first event, the last (shorter) bin kept."""
    out = []
    for path in gesture_paths(root, split):
        x, y, p, t = gesture_events(path)
        x, y, t = x // 4, y // 4, t - t[0]
        n = max(int(math.ceil((t[-1] - 75_000) / 75_000)) + 1, 1)
        b = t // 75_000
        keep = b < n
        frames = np.zeros((n, 2, 32, 32), np.float32)
        np.add.at(frames, (b[keep], p[keep], y[keep], x[keep]), 1)
        out.append((frames, int(os.path.basename(path)[:-4])))
    return out


def test_gesture_counts_train_windows(data):
    ds = dvs_gesture.build(args_for(data, frames="counts"), train=True)
    steps = catalog.DVS_GESTURE.steps["counts"]
    expected = gesture_counts_expected(data, "train")
    windows = []  # 21-frame windows, non-overlapping; a recording shorter than 21 frames: one, padded
    for frames, label in expected:
        if len(frames) < steps:
            frames = np.concatenate([frames, np.zeros((steps - len(frames), *frames.shape[1:]), np.float32)])
        windows += [(frames[s:s + steps], label) for s in range(0, len(frames) - steps + 1, steps)]
    assert {len(f) for f, _ in expected} & set(range(1, steps)), "fixture lacks a short recording"
    assert any(len(f) >= 2 * steps for f, _ in expected), "fixture lacks a multi-window recording"
    assert len(ds) == len(windows)
    ds.transform = None  # the windows themselves
    for i, (frames, label) in enumerate(windows):
        x, y = ds[i]
        assert tuple(x.shape) == (steps, 2, 32, 32) and y == label
        torch.testing.assert_close(x, torch.from_numpy(frames), rtol=0, atol=0)


# --- CIFAR10-DVS --------------------------------------------------------------------------------

def test_la_resize_matches_hand_computed_cases():
    """Pillow resizes an "LA" image premultiplied: L is weighted by A, so L vanishes where A is 0,
    and where A is non-zero a uniform L comes back unchanged."""
    from training.datasets.resample import resize_la_uint8

    image = torch.zeros(2, 4, 4, dtype=torch.uint8)
    image[0] = 255                       # L everywhere
    out = resize_la_uint8(image, 2)      # A nowhere: L is gone
    assert out.tolist() == [[[0, 0], [0, 0]], [[0, 0], [0, 0]]]
    image[1, 0, 0] = 255                 # A at one corner pixel
    out = resize_la_uint8(image, 2)
    # 4 -> 2: output (0, 0) weighs rows/columns 0..2 by 0.75, 0.75, 0.25 (/1.75); corner weight
    # (0.75/1.75)^2 = 0.1837 -> A = round(255 * 0.1837) = 47; L = 255 * L'/A = 255 there
    assert out[1].tolist() == [[47, 0], [0, 0]] and out[0].tolist() == [[255, 0], [0, 0]]
    image[0] = 100  # L' = 100 at the corner; each 8-bit pass rounds: L' 100 -> 43 -> 18, A 255 -> 109 -> 47
    assert resize_la_uint8(image, 2)[:, 0, 0].tolist() == [255 * 18 // 47, 47]  # 97, not 100


def test_la_resize_equals_pillow():
    """Integer for integer, on random and on sparse wrapped-count images (where Pillow is here)."""
    Image = pytest.importorskip("PIL.Image")
    from training.datasets.resample import resize_la_uint8

    rng = np.random.default_rng(0)
    for trial in range(6):
        if trial % 2:
            image = rng.integers(0, 256, (2, 128, 128)).astype(np.uint8)
        else:
            image = ((rng.random((2, 128, 128)) < 0.2) * rng.choice([255, 254, 253], (2, 128, 128))).astype(np.uint8)
        want = np.asarray(Image.fromarray(np.dstack([image[0], image[1]]), mode="LA").resize((48, 48), Image.BILINEAR))
        got = resize_la_uint8(torch.from_numpy(image), 48).numpy()
        np.testing.assert_array_equal(got, want.transpose(2, 0, 1))


def test_counts_wrap_modulo_256_as_the_original():
    from training.datasets.resample import wrap_to_uint8

    assert wrap_to_uint8(torch.tensor([0, 1, 2, 3, 10, 256, 257])).tolist() == [0, 255, 254, 253, 246, 0, 255]


@pytest.mark.parametrize("train", [True, False])
def test_cifar10dvs_original_frames(data, train):
    pytest.importorskip("PIL.Image")
    ds = cifar10dvs.build(args_for(data), train)
    split = cifar_split(data, "train" if train else "test")
    assert len(ds) == len(split) == (90 if train else 10)
    if train:
        ds.transform = cifar10dvs.Compose(ds.transform.steps[0], ds.transform.steps[-1])  # no crop
    masked = 0
    for i in (range(len(ds)) if not train else (0, 8, 9, 45, 89)):
        path, label = split[i]
        x, y = ds[i]
        assert y == label and tuple(x.shape) == (10, 2, 48, 48) and x.dtype == torch.float32
        images = cifar_original_images(path)
        want = (torch.from_numpy(images).float().div(255) - MEAN) / STD  # ToTensor, Normalize
        torch.testing.assert_close(x, want, rtol=0, atol=0)
        masked += int(((images[:, 0] == 0) & (images[:, 1] == 0)).sum())
    assert masked > 0


@pytest.mark.parametrize("train", [True, False])
def test_cifar10dvs_counts_frames(data, train):
    ds = cifar10dvs.build(args_for(data, frames="counts"), train)
    split = cifar_split(data, "train" if train else "test")
    assert len(ds) == len(split) == (90 if train else 10)
    if train:
        ds.transform = ds.transform.steps[-1]  # normalisation only
    for i in (range(len(ds)) if not train else (0, 8, 9, 45, 89)):
        path, label = split[i]
        x, y = ds[i]
        assert y == label and tuple(x.shape) == (10, 2, 48, 48)
        counts = torch.from_numpy(cifar_tonic_counts(path))
        want = (torch.nn.functional.interpolate(counts, size=(48, 48), mode="bilinear",
                                                align_corners=False, antialias=True) - MEAN) / STD
        torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-5)


def test_cifar10dvs_training_crop_pads_with_no_events(data):
    ds = cifar10dvs.build(args_for(data), True)
    torch.manual_seed(1)
    x, _ = ds[3]
    scale, crop, norm = ds.transform.steps
    ds.transform = None
    raw, _ = ds[3]
    candidates = [norm(c) for c in shifts_of(scale(raw), 4)]  # padding is "no events", then normalised
    assert any(torch.equal(c, x) for c in candidates)


def test_cifar10dvs_split_by_file_index(tmp_path):
    """Index 0-899 train, 900-999 test, by number: 91 and 899 train, 900 and 909 test (text order
    would put 909 before 91)."""
    indices = [5, 91, 899, 900, 909, 999]
    fx.write_cifar10dvs(str(tmp_path), classes=("bird", "cat"), indices=indices, counts=(20, 30))
    for train, want in ((True, [5, 91, 899]), (False, [900, 909, 999])):
        source = cifar10dvs._source(str(tmp_path), train)
        names = [os.path.basename(source.dataset.data[i]) for i in source.order]
        assert names == [f"cifar10_{c}_{k}.aedat4" for c in ("bird", "cat") for k in want]
        assert source.labels == [2] * 3 + [3] * 3
    with pytest.raises(DatasetError, match="index"):
        cifar10dvs.file_index("/x/airplane/recording.aedat4")


# --- the cache ----------------------------------------------------------------------------------

@pytest.mark.parametrize("module", [shd, dvs_gesture, cifar10dvs], ids=lambda m: m.NAME)
def test_cache_written_once_then_only_read(data, module, monkeypatch):
    first = module.build(args_for(data), True)
    folder = first.cache.directory
    files = sorted(glob.glob(os.path.join(folder, "*.npy")))
    assert len(files) == len(first.cache) and os.path.isfile(os.path.join(folder, "index.json"))
    stamps = {f: os.stat(f).st_mtime_ns for f in files}
    reference = [first[i] for i in range(min(3, len(first)))]

    def no_events(*_):
        raise AssertionError("the event files were read again")

    monkeypatch.setattr(EventSource, "__getitem__", no_events)
    monkeypatch.setattr(module, "_source", no_events)
    again = module.build(args_for(data), True)
    assert len(again) == len(first)
    if hasattr(again, "transform") and module is not shd:
        again.transform = first.transform = None
        reference = [first[i] for i in range(len(reference))]
    for i, (x, y) in enumerate(reference):
        x2, y2 = again[i]
        assert y2 == y and torch.equal(x2, x)
    assert {f: os.stat(f).st_mtime_ns for f in files} == stamps


def test_cache_resumes_after_interruption(data, monkeypatch):
    ds = shd.build(args_for(data), True)
    folder = ds.cache.directory
    os.remove(os.path.join(folder, "index.json"))
    os.remove(os.path.join(folder, "000002.npy"))
    calls = []
    original = EventSource.__getitem__
    monkeypatch.setattr(EventSource, "__getitem__", lambda self, i: calls.append(i) or original(self, i))
    again = shd.build(args_for(data), True)
    assert calls == [2]
    assert again.cache.labels == ds.cache.labels and again.cache.lengths == ds.cache.lengths


@pytest.mark.parametrize("module", [shd, dvs_gesture, cifar10dvs], ids=lambda m: m.NAME)
def test_cache_is_keyed_by_the_encoding(data, module):
    """--frames original and --frames counts keep separate caches: switching never reads the other's."""
    original = module.build(args_for(data), True)
    counts = module.build(args_for(data, frames="counts"), True)
    assert original.cache.directory != counts.cache.directory
    again = module.build(args_for(data, frames="original"), True)
    assert again.cache.directory == original.cache.directory
    for ds in (original, counts, again):
        ds.transform = None
    assert any(original[i][0].shape != counts[i][0].shape or not torch.equal(original[i][0], counts[i][0])
               for i in range(3))
    for i in range(3):
        assert torch.equal(again[i][0], original[i][0])
    with pytest.raises(ValueError, match="--frames"):
        module.build(args_for(data, frames="bogus"), True)


def test_cache_is_keyed_by_parameters(data):
    a = cache_mod.cache_dir(str(data), "SHD", "train", {"steps": 100})
    assert a == cache_mod.cache_dir(str(data), "SHD", "train", {"steps": 100})
    assert a != cache_mod.cache_dir(str(data), "SHD", "train", {"steps": 50})
    assert a != cache_mod.cache_dir(str(data), "SHD", "test", {"steps": 100})
    assert cache_mod.FrameCache.load(a, {"steps": 100}) is None


def test_cache_stores_counts_compactly():
    assert cache_mod._compact(np.array([0, 3, 255], np.int16)).dtype == np.uint8
    assert cache_mod._compact(np.array([0, 300], np.int64)).dtype == np.int16
    assert cache_mod._compact(np.array([0.5], np.float64)).dtype == np.float32


# --- missing files: one message, no download ----------------------------------------------------

@pytest.mark.parametrize("module", [shd, dvs_gesture, cifar10dvs], ids=lambda m: m.NAME)
@pytest.mark.parametrize("train", [True, False])
def test_missing_files_fail_fast_with_one_message(tmp_path, module, train, monkeypatch):
    import urllib.request

    def no_network(*_, **__):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    start = time.perf_counter()
    with pytest.raises(DatasetFilesMissing) as info:
        module.build(args_for(tmp_path), train)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert str(tmp_path) in message and module.NAME in message
    assert module.EXPECTED_FILES.splitlines()[0] in message and "https://" in message
    assert message.endswith("or pass --download")
    assert isinstance(info.value, DatasetError) and isinstance(info.value, FileNotFoundError)
    assert not os.listdir(tmp_path) or os.listdir(tmp_path) == ["cache"]  # nothing fetched
    assert not glob.glob(os.path.join(tmp_path, "cache", "**", "index.json"), recursive=True)


def test_missing_files_message_points_at_an_unextracted_archive(tmp_path):
    os.makedirs(tmp_path / "SHD")
    (tmp_path / "SHD" / "shd_train.h5.zip").write_bytes(b"PK")
    with pytest.raises(DatasetFilesMissing, match="found shd_train.h5.zip: extract it"):
        shd.build(args_for(tmp_path), True)


@pytest.mark.parametrize("tonic_name", ["SHD", "DVSGesture", "CIFAR10DVS"])
def test_a_download_attempt_raises_the_message(tmp_path, tonic_name):
    import tonic.datasets

    marker = DatasetFilesMissing(tonic_name, str(tmp_path), "somewhere", "https://example.org")
    cls = offline(getattr(tonic.datasets, tonic_name), lambda ds: False, lambda: marker)
    assert cls.__name__ == tonic_name  # same folder under --data-path
    with pytest.raises(DatasetFilesMissing) as info:
        cls(str(tmp_path))
    assert info.value is marker


def test_data_path_required():
    with pytest.raises(ValueError, match="--data-path"):
        shd.build(argparse.Namespace(data_path=None, workers=0), True)


def test_registry():
    assert set(datasets.DATASETS) == {"SHD", "DVSGesture", "CIFAR10DVS"}
    assert {m.NUM_CLASSES for m in datasets.DATASETS.values()} == {20, 11, 10}
    with pytest.raises(ValueError, match="--dataset"):
        datasets.build("MNIST", args_for("/nonexistent"), True)


# --- transforms ---------------------------------------------------------------------------------

def test_resize_keeps_linear_ramps_and_constants():
    ramp = torch.arange(128, dtype=torch.float32).expand(1, 2, 128, 128).clone()
    out = resize(ramp, 48)
    scale = 128 / 48
    centres = (torch.arange(48) + 0.5) * scale - 0.5  # where each output pixel samples the input
    interior = slice(3, 45)  # away from the clamped borders
    # the anti-aliasing filter is a sampled triangle: linear up to a few hundredths of a pixel
    torch.testing.assert_close(out[0, 0, 10, interior], centres[interior], rtol=0, atol=0.05)
    torch.testing.assert_close(resize(torch.full((2, 2, 128, 128), 3.0), 48), torch.full((2, 2, 48, 48), 3.0))


def test_random_crop_and_normalize():
    frames = torch.rand(5, 2, 9, 7)
    torch.manual_seed(0)
    candidates = shifts_of(frames, 2)
    seen = set()
    for _ in range(10):
        out = random_crop(frames, 2)
        assert out.shape == frames.shape
        seen.add(next(k for k, c in enumerate(candidates) if torch.equal(out, c)))
    assert len(seen) > 1
    assert torch.equal(random_crop(frames, 0), frames)
    got = normalize(frames, (1.0, 2.0), (2.0, 4.0))
    torch.testing.assert_close(got[:, 1], (frames[:, 1] - 2.0) / 4.0)
    with pytest.raises(ValueError, match="mean/std"):
        normalize(frames, (1.0,), (1.0,))
    with pytest.raises(ValueError, match="frames"):
        random_crop(frames[0], 2)


def test_datasets_batch_in_loader_workers(data):
    """Items cross into worker processes (picklable views over the cache) and stack into batches."""
    import pickle

    from torch.utils.data import DataLoader

    for module, shape in ((dvs_gesture, (2, 32, 32)), (cifar10dvs, (2, 48, 48))):
        ds = module.build(args_for(data), True)
        assert len(pickle.dumps(ds)) < 100_000  # a view over the cache, not the frames
        x, y = next(iter(DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, collate_fn=pad_collate)))
        assert tuple(x.shape[1:]) == (4, *shape) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and y.shape == (4,)


def test_unwritable_cache_says_so(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder goes")
    with pytest.raises(OSError, match="--data-path must be writable"):
        cache_mod.FrameCache.write(str(blocker / "SHD" / "train-x"), {}, EventSource(None, [], [], None))
