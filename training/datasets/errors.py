"""The one error raised when a dataset's files are not where tonic reads them."""
from __future__ import annotations


class DatasetFilesMissing(FileNotFoundError):
    """A dataset's files are missing under --data-path.

    The message alone says what to do (which files, where, where to get them), so the command line
    prints it without a traceback. Raised instead of letting tonic try a download, which on an
    offline machine would hang or fail deep inside urllib.
    """

    def __init__(self, dataset: str, root: str, expected: str, url: str, detail: str = ""):
        self.dataset = dataset
        self.root = root
        lines = [
            f"{dataset}: dataset files not found under {root}" + (f" ({detail})" if detail else "") + ".",
            "Expected layout:",
            *("  " + line for line in expected.strip("\n").splitlines()),
            f"Get them from {url} and place them as above (--data-path {root}); nothing is downloaded.",
        ]
        super().__init__("\n".join(lines))

    def __str__(self) -> str:  # FileNotFoundError would otherwise format errno/filename
        return self.args[0]
