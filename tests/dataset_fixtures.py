"""Tiny datasets written in the on-disk formats tonic reads, for tests (and end-to-end runs).

Each writer takes a folder, writes the dataset's own folder inside it exactly where tonic looks
(<root>/SHD, <root>/DVSGesture, <root>/CIFAR10DVS) and returns the folder to pass as --data-path.
Recordings are random but seeded; tests read the written files back to know what to expect.
"""
from __future__ import annotations

import os

import numpy as np

CIFAR10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                      "dog", "frog", "horse", "ship", "truck")


# --- SHD: one .h5 per split; spikes/times (s) and spikes/units as variable-length arrays ---------

def write_shd(root: str, n_train: int = 6, n_test: int = 3, seed: int = 0) -> str:
    import h5py

    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "SHD")
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        times, units = [], []
        for i in range(n):
            onset = rng.uniform(0.0, 0.15)    # the first spike comes after t = 0, as in real SHD
            duration = rng.uniform(0.4, 1.3)  # some recordings end before 1 s, some after
            count = int(rng.integers(50, 400))
            times.append(np.sort(onset + rng.uniform(0.0, duration, count)).astype(np.float32))
            units.append(rng.integers(0, 700, count).astype(np.uint16))
        with h5py.File(os.path.join(folder, f"shd_{split}.h5"), "w") as f:
            f.create_dataset("spikes/times", data=np.array(times, dtype=object),
                             dtype=h5py.vlen_dtype(np.float32))
            f.create_dataset("spikes/units", data=np.array(units, dtype=object),
                             dtype=h5py.vlen_dtype(np.uint16))
            f.create_dataset("labels", data=rng.integers(0, 20, n).astype(np.uint16))
            f.create_dataset("extra/keys", data=[f"digit-{k}".encode() for k in range(20)])
            f.create_dataset("extra/speaker", data=rng.integers(0, 12, n).astype(np.uint16))
    return root


# --- DVS Gesture: tonic's preprocessed release, ibmGesture{Train,Test}/userNN_<light>/<label>.npy
# each file an int array [N, 4] of (x, y, polarity, t in ms)

GESTURE_FOLDERS = {"train": ("user01_fluorescent", "user02_led"), "test": ("user24_natural",)}


def _pixels(rng, count: int, blob: float, size: int = 128, patch: int = 16):
    """x, y of `count` events: a fraction `blob` inside one random patch x patch square (dense
    enough to survive the original's rounded resize), the rest anywhere on the sensor."""
    x, y = rng.integers(0, size, count), rng.integers(0, size, count)
    inside = rng.random(count) < blob
    corner = rng.integers(0, size - patch, 2)
    x[inside] = corner[0] + rng.integers(0, patch, int(inside.sum()))
    y[inside] = corner[1] + rng.integers(0, patch, int(inside.sum()))
    return x, y


def write_dvs_gesture(root: str, labels=(0, 3, 10), durations_ms=(5000, 1200, 2400), seed: int = 0,
                      counts=(300, 800), blob: float = 0.0, folders=GESTURE_FOLDERS) -> str:
    """Per user folder (`folders`: split -> user folders), one recording per label; durations cycle
    over `durations_ms` (the default gives a recording with 3 slices of 1.575 s, one shorter than a
    slice, one with 1). Each has `counts` events (a range), a fraction `blob` of them in one dense
    patch."""
    rng = np.random.default_rng(seed)
    k = 0
    for split, users in folders.items():
        base = os.path.join(root, "DVSGesture", "ibmGesture" + split.capitalize())
        for user in users:
            os.makedirs(os.path.join(base, user), exist_ok=True)
            for label in labels:
                duration = durations_ms[k % len(durations_ms)]
                k += 1
                count = int(rng.integers(*counts))
                events = np.empty((count, 4), dtype=np.int64)
                events[:, 0], events[:, 1] = _pixels(rng, count, blob)
                events[:, 2] = rng.integers(0, 2, count)
                events[:, 3] = np.sort(rng.integers(0, duration, count))
                np.save(os.path.join(base, user, f"{label}.npy"), events)
    return root


# --- CIFAR10-DVS: tonic's release, <class>/<name>.aedat4; AEDAT 4 files with one polarity stream -

_AEDAT4_MAGIC = b"#!AER-DAT4.0\r\n"
_AEDAT4_DESCRIPTION = """<dv version="2.0">
    <node name="outInfo" path="/mainloop/output_file/outInfo/">
        <node name="0" path="/mainloop/output_file/outInfo/0/">
            <attr key="compression" type="string">NONE</attr>
            <attr key="originalModuleName" type="string">converter</attr>
            <attr key="originalOutputName" type="string">events</attr>
            <attr key="typeDescription" type="string">Array of events (polarity ON/OFF).</attr>
            <attr key="typeIdentifier" type="string">EVTS</attr>
            <node name="info" path="/mainloop/output_file/outInfo/0/info/">
                <attr key="sizeX" type="int">128</attr>
                <attr key="sizeY" type="int">128</attr>
                <attr key="source" type="string">DVS128</attr>
            </node>
        </node>
    </node>
</dv>
"""


def _aedat4_header() -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    description = builder.CreateString(_AEDAT4_DESCRIPTION)
    builder.StartObject(3)  # Ioheader {compression = None, file_data_position = -1, description}
    builder.PrependUOffsetTRelativeSlot(2, description, 0)
    builder.FinishSizePrefixed(builder.EndObject(), b"IOHE")
    return bytes(builder.Output())


# struct Event {t: int64; x: int16; y: int16; on: bool} of the AEDAT 4 schema: 16 bytes, little-endian
_AEDAT4_EVENT = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "u1"), ("pad", "V3")])


def _aedat4_event_packet(t, x, y, on, stream_id: int = 0) -> bytes:
    import flatbuffers

    events = np.zeros(len(t), _AEDAT4_EVENT)
    events["t"], events["x"], events["y"], events["on"] = t, x, y, np.asarray(on, bool)
    raw = events.tobytes()
    builder = flatbuffers.Builder(len(raw) + 64)
    builder.StartVector(16, len(t), 8)
    # the vector's bytes in one copy (as Builder.CreateByteVector does), not one Prepend per field
    builder.head -= len(raw)
    builder.Bytes[builder.head:builder.head + len(raw)] = raw
    elements = builder.EndVector()
    builder.StartObject(1)  # EventPacket {elements}
    builder.PrependUOffsetTRelativeSlot(0, elements, 0)
    builder.FinishSizePrefixed(builder.EndObject(), b"EVTS")
    payload = bytes(builder.Output())
    return stream_id.to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


def write_aedat4(path: str, t, x, y, on, packets: int = 2) -> None:
    """An uncompressed AEDAT 4 file of polarity events (t in us), split into `packets` packets."""
    bounds = np.linspace(0, len(t), packets + 1).astype(int)
    body = b"".join(_aedat4_event_packet(t[a:b], x[a:b], y[a:b], on[a:b])
                    for a, b in zip(bounds[:-1], bounds[1:]) if b > a)
    with open(path, "wb") as f:
        f.write(_AEDAT4_MAGIC + _aedat4_header() + body)


def cifar10dvs_indices(per_class: int) -> list:
    """File indices for `per_class` recordings: the last tenth (at least one) from 900 on, so that
    the original's split (index 0-899 train, 900-999 test) gives both splits."""
    n_test = max(1, per_class // 10)
    return list(range(per_class - n_test)) + list(range(900, 900 + n_test))


def write_cifar10dvs(root: str, per_class: int = 10, classes=CIFAR10DVS_CLASSES, seed: int = 0,
                     counts=(200, 500), blob: float = 0.0, indices=None) -> str:
    """cifar10_<class>_<index>.aedat4 per class, indices `indices` (default cifar10dvs_indices)."""
    rng = np.random.default_rng(seed)
    indices = cifar10dvs_indices(per_class) if indices is None else list(indices)
    for name in classes:
        folder = os.path.join(root, "CIFAR10DVS", name)
        os.makedirs(folder, exist_ok=True)
        for k in indices:
            count = int(rng.integers(*counts))
            t = np.sort(rng.integers(0, 1_300_000, count))
            x, y = _pixels(rng, count, blob)
            write_aedat4(os.path.join(folder, f"cifar10_{name}_{k}.aedat4"), t, x, y, rng.integers(0, 2, count))
    return root
