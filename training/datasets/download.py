"""`--download`: fetch a dataset's archives (the catalog's URLs and MD5s, tonic's downloader),
extract them into the dataset's folder, and leave nothing half-done that a later run could take
as complete.

- An archive is downloaded to `<name>.part` and renamed only once its MD5 matches, so a file under
  the archive's own name is always whole; a failed or corrupt download deletes the `.part` (an
  interrupted one leaves it, and the next --download starts it again).
- Extraction goes to a temporary folder inside the dataset's folder, then its contents are moved
  into place. From the start of the extraction to the last move a marker file (INCOMPLETE) says
  the folder is half-updated; the pipelines treat a folder with that marker as missing (the
  message says: pass --download to finish, or delete it).
"""
from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import zipfile

from .errors import DatasetDownloadFailed

INCOMPLETE = ".download-incomplete"
_STAGING = ".extracting-"


def interrupted(folder: str) -> bool:
    """True when an extraction into `folder` started and did not finish."""
    return os.path.exists(os.path.join(folder, INCOMPLETE))


def fetch(record, root: str, split: str) -> None:
    """Download (if not already there and verified) and extract every archive of `split`."""
    folder = os.path.join(root, record.folder)
    os.makedirs(folder, exist_ok=True)
    for archive in record.archives_for(split):
        _extract(record, archive, _download(record, archive, folder), folder)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _download(record, archive, folder: str) -> str:
    from tonic.download_utils import check_integrity, download_url

    path = os.path.join(folder, archive.filename)
    if check_integrity(path, archive.md5):
        return path
    part = path + ".part"
    try:
        download_url(archive.url, folder, filename=os.path.basename(part), md5=archive.md5)
    except RuntimeError:  # tonic: "File not found or corrupted." (the MD5 did not match)
        _remove(part)
        raise DatasetDownloadFailed(
            f"{record.name}: {archive.url} gave a file whose MD5 is not {archive.md5} (truncated or "
            f"corrupt); it was deleted. Pass --download again to retry.") from None
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as error:
        _remove(part)
        raise DatasetDownloadFailed(
            f"{record.name}: downloading {archive.url} failed ({error}); nothing was kept. Pass "
            f"--download again to retry, or place the files by hand (see {record.source}).") from None
    os.replace(part, path)
    return path


def _move_into(source: str, target: str) -> None:
    """Move `source` to `target`, merging into an existing folder (files are replaced)."""
    if os.path.isdir(source) and os.path.isdir(target):
        for entry in os.listdir(source):
            _move_into(os.path.join(source, entry), os.path.join(target, entry))
        os.rmdir(source)
    else:
        os.replace(source, target)


def _extract(record, archive, path: str, folder: str) -> None:
    from tonic.download_utils import extract_archive

    marker = os.path.join(folder, INCOMPLETE)
    with open(marker, "w") as f:  # from here until the last file is in place, the folder is incomplete
        f.write(f"extracting {archive.filename}: pass --download to finish, or delete this folder\n")
    for stale in os.listdir(folder):  # left by a run that was killed while extracting
        if stale.startswith(_STAGING):
            shutil.rmtree(os.path.join(folder, stale), ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=_STAGING, dir=folder)
    try:
        extract_archive(path, staging)
        for inner in archive.inner:  # archives inside the archive (CIFAR10-DVS: one zip per class)
            inner_path = os.path.join(staging, inner)
            if not os.path.isfile(inner_path):
                raise DatasetDownloadFailed(f"{record.name}: {path} does not hold {inner}; delete {path} "
                                            "and pass --download again")
            extract_archive(inner_path, staging, remove_finished=True)
        for entry in os.listdir(staging):
            _move_into(os.path.join(staging, entry), os.path.join(folder, entry))
        os.remove(marker)
    except (OSError, zipfile.BadZipFile, tarfile.TarError, RuntimeError, EOFError) as error:
        raise DatasetDownloadFailed(
            f"{record.name}: extracting {path} failed ({error}). Pass --download again to retry; if it "
            f"fails again, delete {path} (and {folder} if it holds nothing else of yours).") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
