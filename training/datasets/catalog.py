"""The one description of every `--dataset`: name, classes, input shape, steps, expected files and
the archives `--download` fetches. The pipelines, the models, the command line and the tests read
it; nothing else states these facts.

Archive URLs and MD5 checksums are tonic's own (its dataset classes' `url`/`train_url`/`file_md5`
attributes), so `--download` fetches exactly the files tonic would.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

# --frames: how events become frames. "original": the tensors of the original code (docs/rule.md section 7.1);
# "counts": plain event counts at the network's resolution (this package's earlier encoding).
ENCODINGS = ("original", "counts")
DEFAULT_ENCODING = "original"


@dataclass(frozen=True)
class Archive:
    """One downloadable file and what it holds once extracted into the dataset's folder."""

    filename: str                   # saved as <data-path>/<folder>/<filename>
    url: str
    md5: str
    splits: Tuple[str, ...]         # the splits ("train", "test") whose files it holds
    inner: Tuple[str, ...] = ()     # archives inside it that must be extracted too (CIFAR10-DVS)


@dataclass(frozen=True)
class DatasetRecord:
    name: str                       # the --dataset value, and tonic's folder under --data-path
    num_classes: int
    frame_shape: tuple              # one time step of one sample
    steps: Mapping[str, int]        # per --frames encoding: the most time steps of a training sample
    description: str
    module: Optional[str] = None    # training.datasets.<module>; None: embedded, nothing to read
    classes: Tuple[str, ...] = ()
    expected_files: str = ""        # the layout under --data-path, shown when files are missing
    source: str = ""                # where a person gets the files by hand
    archives: Tuple[Archive, ...] = ()

    @property
    def needs_path(self) -> bool:
        return self.module is not None

    @property
    def folder(self) -> str:
        return self.name

    def archives_for(self, split: str) -> Tuple[Archive, ...]:
        return tuple(a for a in self.archives if split in a.splits)


CIFAR10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

SHD = DatasetRecord(
    name="SHD", num_classes=20, frame_shape=(700,), module="shd",
    steps={"original": 99, "counts": 100},  # 10 ms bins: of 1 s from the first spike / of [0, 1 s)
    description="Spiking Heidelberg Digits, 700 channels",
    expected_files="""\
<data-path>/SHD/shd_train.h5
<data-path>/SHD/shd_test.h5
(the .h5 files inside shd_train.h5.zip and shd_test.h5.zip, unzipped)""",
    source="https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/",
    archives=(
        Archive("shd_train.h5.zip", "https://zenkelab.org/datasets/shd_train.h5.zip",
                "f3252aeb598ac776c1b526422d90eecb", ("train",)),
        Archive("shd_test.h5.zip", "https://zenkelab.org/datasets/shd_test.h5.zip",
                "1503a5064faa34311c398fb0a1ed0a6f", ("test",)),
    ),
)

DVS_GESTURE = DatasetRecord(
    name="DVSGesture", num_classes=11, frame_shape=(2, 32, 32), module="dvs_gesture",
    steps={"original": 20, "counts": 21},  # 75 ms frames of a 1.575 s slice (last bin dropped / kept)
    description="DVS128 Gesture, 2x32x32 frames",
    expected_files="""\
<data-path>/DVSGesture/ibmGestureTrain/user01_fluorescent/0.npy ... 10.npy  (one folder per user_lighting)
<data-path>/DVSGesture/ibmGestureTest/user24_fluorescent/0.npy ...
(tonic's preprocessed release: ibmGestureTrain.tar.gz and ibmGestureTest.tar.gz, extracted)""",
    source="http://research.ibm.com/dvsgesture/ (the .npy release tonic reads: "
           "https://figshare.com/ndownloader/files/38022171 = ibmGestureTrain.tar.gz, "
           "https://figshare.com/ndownloader/files/38020584 = ibmGestureTest.tar.gz)",
    archives=(
        Archive("ibmGestureTrain.tar.gz", "https://figshare.com/ndownloader/files/38022171",
                "3a8f0d4120a166bac7591f77409cb105", ("train",)),
        Archive("ibmGestureTest.tar.gz", "https://figshare.com/ndownloader/files/38020584",
                "56070e45dadaa85fff82e0fbfbc06de5", ("test",)),
    ),
)

CIFAR10DVS = DatasetRecord(
    name="CIFAR10DVS", num_classes=10, frame_shape=(2, 48, 48), module="cifar10dvs",
    steps={"original": 10, "counts": 10},  # frames of equal event counts
    description="CIFAR10-DVS, 2x48x48 frames",
    classes=CIFAR10DVS_CLASSES,
    expected_files="""\
<data-path>/CIFAR10DVS/airplane/cifar10_airplane_0.aedat4 ... cifar10_airplane_999.aedat4
<data-path>/CIFAR10DVS/automobile/*.aedat4
... one folder per class: """ + ", ".join(CIFAR10DVS_CLASSES) + """
(1000 recordings per class: index 0-899 train, 900-999 test)""",
    source="https://www.frontiersin.org/articles/10.3389/fnins.2017.00309/full (the .aedat4 release tonic "
           "reads: https://figshare.com/ndownloader/files/38023437 = CIFAR10DVS.zip, whose per-class zips "
           "must be extracted too)",
    archives=(
        Archive("CIFAR10DVS.zip", "https://figshare.com/ndownloader/files/38023437",
                "ce3a4a0682dc0943703bd8f749a7701c", ("train", "test"),
                inner=tuple(f"{name}.zip" for name in CIFAR10DVS_CLASSES)),
    ),
)

DIGITS = DatasetRecord(
    name="Digits", num_classes=10, frame_shape=(64,),
    steps={"original": 20, "counts": 20},
    description="scikit-learn 8x8 digits, Bernoulli rate-coded",
)

# keyed by the --dataset values, in the order --help lists them
CATALOG = {record.name: record for record in (DVS_GESTURE, CIFAR10DVS, SHD, DIGITS)}


def record(name: str) -> DatasetRecord:
    try:
        return CATALOG[name]
    except KeyError:
        raise ValueError(f"--dataset must be one of {sorted(CATALOG)}, got {name!r}") from None


def check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"--frames must be one of {list(ENCODINGS)}, got {encoding!r}")
    return encoding
