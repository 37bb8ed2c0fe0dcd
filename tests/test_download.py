"""`--download` against a local HTTP server (a thread on 127.0.0.1) serving tiny archives in the
real formats: tonic's downloader and MD5 check, extraction, then the pipeline proceeds. Broken,
truncated, refused and interrupted downloads leave nothing a later run takes as complete.

The catalog records are replaced for the test (their archive URLs point at the local server, their
MD5s are the tiny archives'); no other network traffic is allowed.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.server
import io
import os
import tarfile
import threading
import urllib.parse
import urllib.request
import zipfile

import pytest
import torch

pytest.importorskip("tonic")
pytest.importorskip("aedat")
pytest.importorskip("flatbuffers")

import dataset_fixtures as fx  # noqa: E402

from training.datasets import cifar10dvs, download, dvs_gesture, shd  # noqa: E402
from training.datasets.errors import DatasetDownloadFailed, DatasetFilesMissing  # noqa: E402
from training.errors import DatasetError  # noqa: E402


@pytest.fixture(autouse=True)
def only_localhost(monkeypatch):
    real = urllib.request.urlopen

    def urlopen(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        assert urllib.parse.urlparse(url).hostname == "127.0.0.1", f"network access to {url}"
        return real(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


class Server:
    """Serves `files[name]` at /name; `truncate[name] = n` sends only n bytes of it (with the full
    Content-Length), as a connection cut mid-download."""

    def __init__(self):
        self.files, self.truncate, self.requests = {}, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append(name)
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:server.truncate.get(name, len(body))])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def zip_bytes(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def tar_gz_bytes(folder: str, arcname: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return buffer.getvalue()


def read_tree(folder: str) -> dict:
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def tiny_archives(module, src) -> dict:
    """{archive filename: bytes} of the dataset written under `src`, laid out as the real archives."""
    if module is shd:
        fx.write_shd(str(src), n_train=3, n_test=2)
        return {f"{name}.zip": zip_bytes({name: (src / "SHD" / name).read_bytes()})
                for name in ("shd_train.h5", "shd_test.h5")}
    if module is dvs_gesture:
        fx.write_dvs_gesture(str(src), labels=(1, 2), durations_ms=(1700, 300))
        return {f"{folder}.tar.gz": tar_gz_bytes(str(src / "DVSGesture" / folder), folder)
                for folder in ("ibmGestureTrain", "ibmGestureTest")}
    fx.write_cifar10dvs(str(src), per_class=2, counts=(30, 60))
    inner = {f"{name}.zip": zip_bytes({f"{name}/{k}": v for k, v in read_tree(str(src / "CIFAR10DVS" / name)).items()})
             for name in fx.CIFAR10DVS_CLASSES}
    return {"CIFAR10DVS.zip": zip_bytes(inner)}


def serve(monkeypatch, server, module, archives: dict, md5_of=None):
    """Point the module's catalog record at the server, with the archives' own MD5s (or md5_of's)."""
    server.files.update(archives)
    md5 = md5_of or {name: hashlib.md5(data).hexdigest() for name, data in archives.items()}
    record = dataclasses.replace(module.RECORD, archives=tuple(
        dataclasses.replace(a, url=f"{server.url}/{a.filename}", md5=md5[a.filename]) for a in module.RECORD.archives))
    monkeypatch.setattr(module, "RECORD", record)
    return record


def args_for(root, download=False):
    return argparse.Namespace(data_path=str(root), workers=0, download=download)


def same_items(a, b):
    assert len(a) == len(b) > 0
    a.transform = b.transform = None
    for i in range(len(a)):
        assert a[i][1] == b[i][1] and torch.equal(a[i][0], b[i][0])


def leftovers(folder) -> list:
    """Files that must not survive a failed or finished download."""
    return [name for name in read_tree(str(folder)) if name.endswith(".part") or download.INCOMPLETE in name
            or ".extracting-" in name]


@pytest.mark.parametrize("module", [shd, dvs_gesture, cifar10dvs], ids=lambda m: m.NAME)
def test_download_fetches_extracts_and_proceeds(module, server, monkeypatch, tmp_path):
    src, data = tmp_path / "src", tmp_path / "data"
    data.mkdir()
    record = serve(monkeypatch, server, module, tiny_archives(module, src))
    for train in (True, False):
        got = module.build(args_for(data, download=True), train)
        same_items(got, module.build(args_for(src), train))
    folder = data / record.folder
    assert {a.filename for a in record.archives} <= set(os.listdir(folder))  # kept, verified
    assert not leftovers(folder)
    served = len(server.requests)
    module.build(args_for(data, download=True), True)  # complete: nothing fetched again
    assert len(server.requests) == served


def test_corrupt_download_is_deleted_and_retried(server, monkeypatch, tmp_path):
    src, data = tmp_path / "src", tmp_path / "data"
    data.mkdir()
    archives = tiny_archives(shd, src)
    good_md5 = {name: hashlib.md5(body).hexdigest() for name, body in archives.items()}
    serve(monkeypatch, server, shd, {name: b"not a zip" + body[9:] for name, body in archives.items()}, good_md5)
    with pytest.raises(DatasetDownloadFailed, match="MD5") as info:
        shd.build(args_for(data, download=True), True)
    assert "--download again" in str(info.value) and isinstance(info.value, DatasetError)
    assert os.listdir(data / "SHD") == []  # nothing kept
    with pytest.raises(DatasetFilesMissing, match="or pass --download"):
        shd.build(args_for(data), True)
    server.files.update(archives)  # the mirror is fixed: the next --download works
    same_items(shd.build(args_for(data, download=True), True), shd.build(args_for(src), True))


def test_truncated_download_leaves_nothing_complete(server, monkeypatch, tmp_path):
    src, data = tmp_path / "src", tmp_path / "data"
    data.mkdir()
    archives = tiny_archives(dvs_gesture, src)
    serve(monkeypatch, server, dvs_gesture, archives)
    server.truncate["ibmGestureTrain.tar.gz"] = 100  # the connection drops after 100 bytes
    with pytest.raises(DatasetDownloadFailed, match="truncated or corrupt"):
        dvs_gesture.build(args_for(data, download=True), True)
    assert os.listdir(data / "DVSGesture") == []
    server.truncate.clear()
    same_items(dvs_gesture.build(args_for(data, download=True), True), dvs_gesture.build(args_for(src), True))


def test_unreachable_server_says_what_to_do(server, monkeypatch, tmp_path):
    serve(monkeypatch, server, shd, {}, {"shd_train.h5.zip": "0" * 32, "shd_test.h5.zip": "0" * 32})  # all 404
    with pytest.raises(DatasetDownloadFailed, match="downloading .* failed .*nothing was kept") as info:
        shd.build(args_for(tmp_path, download=True), False)
    assert "--download again" in str(info.value)
    assert not leftovers(tmp_path)


def test_a_left_partial_download_is_not_taken_as_complete(server, monkeypatch, tmp_path):
    """A .part left by a killed download is neither used nor trusted: it is fetched again."""
    src, data = tmp_path / "src", tmp_path / "data"
    (data / "SHD").mkdir(parents=True)
    serve(monkeypatch, server, shd, tiny_archives(shd, src))
    (data / "SHD" / "shd_train.h5.zip.part").write_bytes(b"PK\x03\x04 half")
    with pytest.raises(DatasetFilesMissing):
        shd.build(args_for(data), True)
    same_items(shd.build(args_for(data, download=True), True), shd.build(args_for(src), True))
    assert not leftovers(data)


def test_interrupted_extraction_is_not_taken_as_complete(server, monkeypatch, tmp_path):
    """Killed while moving the extracted classes into place: some class folders are there, but the
    marker makes the folder incomplete until --download finishes it."""
    src, data = tmp_path / "src", tmp_path / "data"
    data.mkdir()
    serve(monkeypatch, server, cifar10dvs, tiny_archives(cifar10dvs, src))
    real_move, moved = download._move_into, []

    def move_then_die(source, target):
        if len(moved) == 3:
            raise KeyboardInterrupt
        moved.append(target)
        real_move(source, target)

    monkeypatch.setattr(download, "_move_into", move_then_die)
    with pytest.raises(KeyboardInterrupt):
        cifar10dvs.build(args_for(data, download=True), True)
    folder = data / "CIFAR10DVS"
    assert download.interrupted(str(folder)) and len([d for d in os.listdir(folder) if not d.startswith(".")]) >= 3
    with pytest.raises(DatasetFilesMissing, match="interrupted --download") as info:
        cifar10dvs.build(args_for(data), True)
    assert f"delete {folder}" in str(info.value) and "pass --download to finish" in str(info.value)
    monkeypatch.setattr(download, "_move_into", real_move)
    served = len(server.requests)
    same_items(cifar10dvs.build(args_for(data, download=True), True), cifar10dvs.build(args_for(src), True))
    assert len(server.requests) == served  # the verified archive was reused, not fetched again
    assert not leftovers(data / "CIFAR10DVS")


def test_command_line_download_then_train(server, monkeypatch, tmp_path, capsys):
    """`python -m training ... --download` on an empty --data-path: fetched, then one epoch runs;
    `--frames counts` on the same files then trains from its own cache."""
    from training.cli import main

    src, data = tmp_path / "src", tmp_path / "data"
    data.mkdir()
    serve(monkeypatch, server, shd, tiny_archives(shd, src))
    argv = ["--arch", "stllr_shd_net", "--dataset", "SHD", "--data-path", str(data), "--epochs", "1",
            "--batch-size", "2", "--val-batch-size", "2", "--delay-ls", "5", "--cpu", "--workers", "0"]
    assert main(argv + ["--save-path", str(tmp_path / "a")]) == 2  # no --download: the message
    assert capsys.readouterr().err.rstrip().endswith("or pass --download")
    assert main(argv + ["--save-path", str(tmp_path / "b"), "--download"]) == 0
    assert main(argv + ["--save-path", str(tmp_path / "c"), "--frames", "counts"]) == 0
    caches = os.listdir(data / "cache" / "SHD")
    assert len(caches) == 4  # train and test, for each encoding


def test_catalog_archives_are_tonics_own():
    """--download fetches exactly what tonic's dataset classes would (URL and MD5)."""
    import tonic.datasets

    from training.datasets import catalog

    def pairs(record):
        return {(a.filename, a.url, a.md5) for a in record.archives}

    g, c, s = tonic.datasets.DVSGesture, tonic.datasets.CIFAR10DVS, tonic.datasets.SHD
    assert pairs(catalog.DVS_GESTURE) == {(g.train_filename, g.train_url, g.train_md5),
                                          (g.test_filename, g.test_url, g.test_md5)}
    assert pairs(catalog.CIFAR10DVS) == {(c.filename, c.url, c.file_md5)}
    assert list(catalog.CIFAR10DVS.archives[0].inner) == list(c.data_filename)
    assert pairs(catalog.SHD) == {(s.train_zip, s.base_url + s.train_zip, s.train_md5),
                                  (s.test_zip, s.base_url + s.test_zip, s.test_md5)}
    for record in (catalog.DVS_GESTURE, catalog.CIFAR10DVS, catalog.SHD):
        assert {split for a in record.archives for split in a.splits} == {"train", "test"}
