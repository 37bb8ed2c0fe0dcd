"""The errors raised when a dataset's files are not where tonic reads them, or cannot be fetched."""
from __future__ import annotations

import os

from ..errors import DatasetError


class DatasetFilesMissing(DatasetError, FileNotFoundError):
    """A dataset's files are missing under --data-path.

    The message alone says what to do (which files, where, where to get them, or --download), so
    the command line prints it without a traceback. Raised instead of letting tonic try a download,
    which on an offline machine would hang or fail deep inside urllib.
    """

    def __init__(self, dataset: str, root: str, expected: str, url: str, detail: str = ""):
        self.dataset = dataset
        self.root = root
        lines = [
            f"{dataset}: dataset files not found under {root}" + (f" ({detail})" if detail else "") + ".",
            "Expected layout:",
            *("  " + line for line in expected.strip("\n").splitlines()),
            f"Get them from {url} and place them as above (--data-path {root}), or pass --download",
        ]
        super().__init__("\n".join(lines))

    @classmethod
    def of(cls, record, root: str, detail: str = "") -> "DatasetFilesMissing":
        """The message for catalog record `record` (training.datasets.catalog)."""
        return cls(record.name, root, record.expected_files, record.source, detail)

    def __str__(self) -> str:  # FileNotFoundError would otherwise format errno/filename
        return self.args[0]


class DatasetDownloadFailed(DatasetError):
    """--download could not fetch, verify or extract an archive; the message says what was
    removed, what (if anything) to delete, and that running again retries."""


def archive_hint(folder: str, archives) -> str:
    """' (found X: extract it in FOLDER)' when a downloaded archive sits there unextracted."""
    found = [name for name in archives if os.path.isfile(os.path.join(folder, name))]
    return f"; found {', '.join(found)}: extract it in {folder}" if found else ""
