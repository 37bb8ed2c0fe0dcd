"""The three dataset pipelines on tiny datasets written in the real on-disk formats.

Expected frames are recomputed here from the written files with plain numpy (no tonic), so a wrong
unit, axis, polarity, bin edge, window or split in the pipeline shows up as a mismatch.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import shutil
import time

import numpy as np
import pytest
import torch

pytest.importorskip("tonic")
pytest.importorskip("aedat")
pytest.importorskip("flatbuffers")

import dataset_fixtures as fx  # noqa: E402
from conftest import assert_close_policy, tol  # noqa: E402

from training import datasets  # noqa: E402
from training.datasets import cache as cache_mod  # noqa: E402
from training.datasets import cifar10dvs, dvs_gesture, shd  # noqa: E402
from training.datasets.errors import DatasetFilesMissing  # noqa: E402
from training.datasets.sources import EventSource, offline  # noqa: E402
from training.datasets.transforms import normalize, random_crop, resize  # noqa: E402


def args_for(root, workers=0):
    return argparse.Namespace(data_path=str(root), workers=workers)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The three tiny datasets, written once; tests that write caches work on copies."""
    root = tmp_path_factory.mktemp("raw")
    fx.write_shd(str(root))
    fx.write_dvs_gesture(str(root))
    fx.write_cifar10dvs(str(root), per_class=10)
    return root


@pytest.fixture
def data(raw, tmp_path):
    """A fresh --data-path (raw files, no cache)."""
    target = tmp_path / "data"
    shutil.copytree(raw, target)
    return target


# --- expected frames, from the files, in numpy ---------------------------------------------------

def shd_expected(root, split):
    import h5py

    with h5py.File(os.path.join(root, "SHD", f"shd_{split}.h5"), "r") as f:
        times, units, labels = f["spikes/times"][()], f["spikes/units"][()], f["labels"][()]
    out = []
    for t_s, u, label in zip(times, units, labels):
        t_us = (t_s.astype(np.float64) * 1e6).astype(np.int64)
        keep = t_us < 1_000_000
        frames = np.zeros((100, 700), np.float32)
        np.add.at(frames, (t_us[keep] // 10_000, u[keep].astype(np.int64)), 1)
        out.append((frames, int(label), bool((~keep).any())))
    return out


def gesture_expected(root, split):
    """Whole-recording frames [T, 2, 32, 32], in file-path order: 75 ms bins from the first event,
    the last (shorter) bin kept, as many bins as tonic's time slicer makes."""
    paths = sorted(glob.glob(os.path.join(root, "DVSGesture", "ibmGesture" + split.capitalize(), "*", "*.npy")))
    out = []
    for path in paths:
        ev = np.load(path)
        x, y, p, t = ev[:, 0] // 4, ev[:, 1] // 4, ev[:, 2], ev[:, 3] * 1000
        t = t - t[0]
        n = max(int(math.ceil((t[-1] - 75_000) / 75_000)) + 1, 1)
        b = t // 75_000
        keep = b < n
        frames = np.zeros((n, 2, 32, 32), np.float32)
        np.add.at(frames, (b[keep], p[keep], y[keep], x[keep]), 1)
        out.append((frames, int(os.path.basename(path)[:-4])))
    return out


def cifar_counts(path):
    import aedat

    ev = np.concatenate([pkt["events"] for pkt in aedat.Decoder(path)])
    n = len(ev) // 10
    frames = np.zeros((10, 2, 128, 128), np.float32)
    np.add.at(frames, (np.arange(10 * n) // n, ev["on"][:10 * n].astype(int),
                       ev["y"][:10 * n].astype(int), ev["x"][:10 * n].astype(int)), 1)
    return frames


def cifar_split(root, split):
    """(path, label) per class: first 9 of 10 files by name train, the last one test."""
    out = []
    for label, name in enumerate(cifar10dvs.CLASSES):
        paths = sorted(glob.glob(os.path.join(root, "CIFAR10DVS", name, "*.aedat4")))
        out += [(p, label) for p in (paths[:9] if split == "train" else paths[9:])]
    return out


def shifts_of(window, padding):
    """Every crop of `window` [T, C, H, W] zero-padded by `padding`."""
    h, w = window.shape[-2:]
    padded = torch.nn.functional.pad(window, (padding,) * 4)
    return [padded[..., i:i + h, j:j + w] for i in range(2 * padding + 1) for j in range(2 * padding + 1)]


# --- SHD ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("train", [True, False])
def test_shd_frames_and_labels(data, train):
    ds = shd.build(args_for(data), train)
    expected = shd_expected(data, "train" if train else "test")
    assert len(ds) == len(expected)
    assert any(cut for _, _, cut in expected) or not train  # the fixture has spikes after 1 s
    for i, (frames, label, _) in enumerate(expected):
        x, y = ds[i]
        assert x.dtype == torch.float32 and tuple(x.shape) == (shd.STEPS, *shd.INPUT_SHAPE)
        assert type(y) is int and y == label
        torch.testing.assert_close(x, torch.from_numpy(frames), rtol=0, atol=0)


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

def test_gesture_test_items_are_whole_recordings(data):
    ds = dvs_gesture.build(args_for(data), train=False)
    expected = gesture_expected(data, "test")
    assert len(ds) == len(expected)
    lengths = set()
    for i, (frames, label) in enumerate(expected):
        x, y = ds[i]
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == dvs_gesture.INPUT_SHAPE
        assert y == label
        torch.testing.assert_close(x, torch.from_numpy(frames), rtol=0, atol=0)
        lengths.add(x.shape[0])
    assert len(lengths) > 1  # T varies with the recording


@pytest.mark.slow  # the Gesture pipeline end to end on its files
def test_gesture_train_windows(data):
    ds = dvs_gesture.build(args_for(data), train=True)
    expected = gesture_expected(data, "train")
    windows = []  # 21-frame windows, non-overlapping; a recording shorter than 21 frames: one, padded
    for frames, label in expected:
        if len(frames) < 21:
            frames = np.concatenate([frames, np.zeros((21 - len(frames), *frames.shape[1:]), np.float32)])
        windows += [(frames[s:s + 21], label) for s in range(0, len(frames) - 21 + 1, 21)]
    assert {len(f) for f, _ in expected} & set(range(1, 21)), "fixture lacks a short recording"
    assert any(len(f) >= 42 for f, _ in expected), "fixture lacks a multi-window recording"
    assert len(ds) == len(windows)

    crop = ds.transform
    ds.transform = None  # the windows themselves
    for i, (frames, label) in enumerate(windows):
        x, y = ds[i]
        assert tuple(x.shape) == (21, 2, 32, 32) and y == label
        torch.testing.assert_close(x, torch.from_numpy(frames), rtol=0, atol=0)

    ds.transform = crop  # training items: the window moved by a random crop (padding 4)
    torch.manual_seed(0)
    offsets = set()
    candidates = shifts_of(torch.from_numpy(windows[0][0]), 4)
    for _ in range(12):
        x, _ = ds[0]
        hits = [k for k, c in enumerate(candidates) if torch.equal(c, x)]
        assert hits, "a training item is not a padded crop of its window"
        offsets.add(hits[0])
    assert len(offsets) > 1


# --- CIFAR10-DVS --------------------------------------------------------------------------------

@pytest.mark.parametrize("train", [True, False])
def test_cifar10dvs_split_frames_normalisation(data, train):
    ds = cifar10dvs.build(args_for(data), train)
    split = cifar_split(data, "train" if train else "test")
    assert len(ds) == len(split) == (90 if train else 10)
    if train:
        ds.transform = ds.transform.steps[-1]  # normalisation only: compare exactly
    mean = torch.tensor([0.2728, 0.1295]).view(1, 2, 1, 1)  # the original's values (SPEC section 7)
    std = torch.tensor([0.2225, 0.1290]).view(1, 2, 1, 1)
    for i in (range(len(ds)) if not train else (0, 8, 9, 45, 89)):
        path, label = split[i]
        x, y = ds[i]
        assert y == label and tuple(x.shape) == (10, 2, 48, 48) and x.dtype == torch.float32
        counts = torch.from_numpy(cifar_counts(path))
        want = (torch.nn.functional.interpolate(counts, size=(48, 48), mode="bilinear",
                                                align_corners=False, antialias=True) - mean) / std
        assert_close_policy(x, want, reduction=36)  # the anti-aliasing filter sums ~6 x 6 taps


@pytest.mark.slow  # the CIFAR10-DVS pipeline end to end on its files
def test_cifar10dvs_training_crop_pads_with_no_events(data):
    ds = cifar10dvs.build(args_for(data), True)
    torch.manual_seed(1)
    x, _ = ds[3]
    crop, norm = ds.transform.steps
    ds.transform = None
    raw, _ = ds[3]
    candidates = [norm(c) for c in shifts_of(raw, 4)]  # padding is "no events", then normalised
    assert any(torch.allclose(c, x, **tol(torch.float32)) for c in candidates)


def test_cifar10dvs_split_is_fixed_per_class():
    paths = [f"c{k % 3}/f{k:02d}" for k in range(30)][::-1]
    labels = [k % 3 for k in range(30)][::-1]
    train = cifar10dvs.split_indices(paths, labels, True)
    test = cifar10dvs.split_indices(paths, labels, False)
    assert sorted(train + test) == list(range(30)) and not set(train) & set(test)
    for c in range(3):
        members = sorted(paths[i] for i in range(30) if labels[i] == c)
        assert sorted(paths[i] for i in train if labels[i] == c) == members[:9]
        assert [paths[i] for i in test if labels[i] == c] == members[9:]


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
    assert_close_policy(resize(torch.full((2, 2, 128, 128), 3.0), 48), torch.full((2, 2, 48, 48), 3.0), reduction=36)


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
    assert_close_policy(got[:, 1], (frames[:, 1] - 2.0) / 4.0)
    with pytest.raises(ValueError, match="mean/std"):
        normalize(frames, (1.0,), (1.0,))
    with pytest.raises(ValueError, match="frames"):
        random_crop(frames[0], 2)


def test_datasets_batch_in_loader_workers(data):
    """Items cross into worker processes (picklable views over the cache) and stack into batches."""
    import pickle

    from torch.utils.data import DataLoader

    for module, shape in ((dvs_gesture, (21, 2, 32, 32)), (cifar10dvs, (10, 2, 48, 48))):
        ds = module.build(args_for(data), True)
        assert len(pickle.dumps(ds)) < 100_000  # a view over the cache, not the frames
        x, y = next(iter(DataLoader(ds, batch_size=4, shuffle=True, num_workers=2)))
        assert tuple(x.shape) == (4, *shape) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and y.shape == (4,)


def test_unwritable_cache_says_so(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder goes")
    with pytest.raises(OSError, match="--data-path must be writable"):
        cache_mod.FrameCache.write(str(blocker / "SHD" / "train-x"), {}, EventSource(None, [], [], None))
