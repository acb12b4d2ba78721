"""registry.fetch against a local HTTP server (no internet needed): zip and tar.gz archives, a
Google-Drive-like confirmation page, header verification, unsafe archives, offline failure."""
import http.server
import io
import socket
import tarfile
import threading
import time
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from xhyp.datasets import registry
from xhyp.datasets.formats import DataFormatError, write_xc
from xhyp.datasets.loading import load_dataset
from xhyp.datasets.registry import DatasetSpec, FetchError, fetch


def _tiny(n, seed):
    rng = np.random.default_rng(seed)
    X = sp.random(n, 10, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    Y = sp.csr_matrix((rng.random((n, 5)) < 0.4).astype(np.float32))
    return X, Y


def _bytes(X, Y, tmp_path, name):
    write_xc(tmp_path / name, X, Y)
    return (tmp_path / name).read_bytes()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files, plus ``/uc?...`` answering with a Drive-style "download anyway" form."""

    def do_GET(self):
        if self.path.startswith("/uc"):
            page = ('<html><body><form id="download-form" action="/files/tiny.zip" method="get">'
                    '<input type="submit" value="Download anyway"/>'
                    '<input type="hidden" name="id" value="XYZ"><input type="hidden" name="export" value="download">'
                    '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1">'
                    "</form></body></html>").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if self.path.startswith("/short/"):  # half the file, no Content-Length, then the connection closes
            data = (Path(self.directory) / "files" / self.path[len("/short/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.path = self.path.split("?", 1)[0]
        super().do_GET()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(base URL, served folder, original (X, Y) of train and test)``."""
    root = tmp_path_factory.mktemp("srv")
    files = root / "files"
    files.mkdir()
    work = tmp_path_factory.mktemp("work")
    train, test = _tiny(20, 0), _tiny(8, 1)
    tr, te = _bytes(*train, work, "tr.txt"), _bytes(*test, work, "te.txt")
    with zipfile.ZipFile(files / "tiny.zip", "w") as z:  # in a subfolder, with a README beside
        z.writestr("Tiny/tiny_train.txt", tr)
        z.writestr("Tiny/tiny_test.txt", te)
        z.writestr("Tiny/README.txt", "tiny")

    def tar(name, members):
        with tarfile.open(files / name, "w:gz") as t:
            for arcname, data in members.items():
                info = tarfile.TarInfo(arcname)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))

    tar("tiny.tar.gz", {"tiny_train.txt": tr, "tiny_test.txt": te})
    wrong = _bytes(*_tiny(19, 2), work, "wrong.txt")  # 19 points instead of 20
    tar("wrong.tar.gz", {"tiny_train.txt": wrong, "tiny_test.txt": te})
    tar("evil.tar.gz", {"tiny_train.txt": tr, "tiny_test.txt": te, "../evil.txt": b"x"})
    (files / "page.html").write_text("<html>quota exceeded</html>")
    # damaged archives: truncated zip / tar.gz, a zip member with a bad CRC
    zbytes = (files / "tiny.zip").read_bytes()
    (files / "trunc.zip").write_bytes(zbytes[: len(zbytes) * 2 // 3])
    tbytes = (files / "tiny.tar.gz").read_bytes()
    (files / "trunc.tar.gz").write_bytes(tbytes[: len(tbytes) // 2])
    with zipfile.ZipFile(files / "stored.zip", "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("tiny_train.txt", tr)
        z.writestr("tiny_test.txt", te)
    crc = bytearray((files / "stored.zip").read_bytes())
    at = crc.find(tr[40:60])  # a byte inside the stored train member's data
    crc[at] = ord("7") if crc[at] != ord("7") else ord("8")
    (files / "badcrc.zip").write_bytes(bytes(crc))
    # right header and line count, but the last line cut mid-token / a garbage row
    cut = tr.rstrip(b"\n")
    cut = cut[: cut.rfind(b":") + 1] + b"\n"
    tar("cut.tar.gz", {"tiny_train.txt": cut, "tiny_test.txt": te})
    lines = tr.split(b"\n")
    lines[5] = b"this is not a data row"
    tar("garbage.tar.gz", {"tiny_train.txt": b"\n".join(lines), "tiny_test.txt": te})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files, (train, test)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def tiny_spec(monkeypatch, server):
    base = server[0]
    spec = DatasetSpec("tiny", "remote", 20, 8, 10, 5, archive_files=("tiny_train.txt", "tiny_test.txt"),
                       url=f"{base}/files/tiny.zip", archive_name="tiny.zip", source="a test server",
                       citation="none")
    monkeypatch.setitem(registry.DATASETS, "tiny", spec)
    return spec


def _closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/tiny.zip"  # nothing listens there any more


def _assert_installed(data_dir, originals):
    assert sorted(p.name for p in data_dir.iterdir()) == ["tiny"]  # no staging folder left
    assert sorted(p.name for p in (data_dir / "tiny").iterdir()) == [".xhyp-verified.json", "test.txt", "train.txt"]
    assert registry.dataset_info("tiny", data_dir)["verified"] is True
    for split, (X, Y) in zip(("train", "test"), originals):
        X2, Y2 = load_dataset("tiny", split, data_dir)
        assert (X2 != X).nnz == 0 and (Y2 != Y).nnz == 0


def test_fetch_zip_then_no_download(tiny_spec, server, tmp_path):
    data_dir = tmp_path / "data"
    assert fetch("tiny", data_dir, progress=False) == data_dir / "tiny"
    _assert_installed(data_dir, server[2])
    # already there and valid: returns at once, without touching the (dead) URL
    assert fetch("tiny", data_dir, url=_closed_port_url(), progress=False) == data_dir / "tiny"


def test_fetch_tar_gz_via_url_override(tiny_spec, server, tmp_path):
    fetch("tiny", tmp_path, url=f"{server[0]}/files/tiny.tar.gz", progress=False)
    _assert_installed(tmp_path, server[2])


def test_fetch_follows_drive_confirmation_form(tiny_spec, server, tmp_path):
    fetch("tiny", tmp_path, url=f"{server[0]}/uc?export=download&id=XYZ", progress=False)
    _assert_installed(tmp_path, server[2])


def test_fetch_from_a_local_file_url(tiny_spec, server, tmp_path):
    fetch("tiny", tmp_path, url=(server[1] / "tiny.zip").as_uri(), progress=False)
    _assert_installed(tmp_path, server[2])


def test_fetch_rejects_wrong_archive_and_installs_nothing(tiny_spec, server, tmp_path):
    with pytest.raises(DataFormatError, match=r"tiny_train\.txt:1: header 'N F L' is 19 10 5 but dataset 'tiny' "
                                              r"\(train\) has 20 10 5; nothing was installed"):
        fetch("tiny", tmp_path, url=f"{server[0]}/files/wrong.tar.gz", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_fetch_rejects_unsafe_paths(tiny_spec, server, tmp_path):
    with pytest.raises(FetchError, match=r"outside its folder: \.\./evil\.txt"):
        fetch("tiny", tmp_path / "d", url=f"{server[0]}/files/evil.tar.gz", progress=False)
    assert list((tmp_path / "d").iterdir()) == [] and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("path,problem", [("page.html", "HTML page instead of the archive"),
                                          ("README.none", r"HTTP error 404 \(File not found\)")])
def test_fetch_bad_responses(tiny_spec, server, tmp_path, path, problem):
    with pytest.raises(FetchError, match=problem):
        fetch("tiny", tmp_path, url=f"{server[0]}/files/{path}", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_fetch_offline_fails_fast_and_says_what_to_do(tiny_spec, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(FetchError) as info:
        fetch("tiny", tmp_path, url=_closed_port_url(), progress=False, timeout=5)
    assert time.perf_counter() - t0 < 3
    msg = str(info.value)
    assert "could not get 'tiny'" in msg and "rerun" in msg
    assert f"put tiny_train.txt as {tmp_path / 'tiny' / 'train.txt'}" in msg
    assert f"tiny_test.txt as {tmp_path / 'tiny' / 'test.txt'}" in msg
    assert list(tmp_path.iterdir()) == []


def test_fetch_real_spec_offline_message_names_official_sources(tmp_path):
    """The registered remote datasets point at the XC repository and their Drive files."""
    with pytest.raises(FetchError) as info:
        fetch("wiki10-31k", tmp_path, url=_closed_port_url(), progress=False)
    msg = str(info.value)
    assert "manikvarma.org/downloads/XC/XMLRepository.html" in msg
    assert "0B3lPMIHmG6vGaDdOeGliWF9EOTA" in msg and "wiki10_train.txt" in msg
    with pytest.raises(FetchError, match="no download link"):
        fetch("bibtex", tmp_path)
    with pytest.raises(ValueError, match="generated in memory"):
        fetch("synthetic-hier", tmp_path)


def test_confirm_url_variants():
    old_style = '<a id="uc-download-link" href="/uc?export=download&amp;confirm=AbC_1&amp;id=ID">Download</a>'
    assert registry._confirm_url(old_style, "https://drive.google.com/uc?id=ID", "ID") == \
        "https://drive.google.com/uc?export=download&confirm=AbC_1&id=ID"
    assert registry._confirm_url("<html>nothing</html>", "https://x/", "ID") == \
        "https://drive.usercontent.google.com/download?id=ID&export=download&confirm=t"
    assert registry._confirm_url("<html>nothing</html>", "https://x/", None) is None


@pytest.mark.parametrize("path,problem", [
    ("files/trunc.zip", r"trunc\.zip|tiny\.zip.*damaged archive"),
    ("files/trunc.tar.gz", "damaged archive"),
    ("files/badcrc.zip", "damaged archive .*CRC"),
    ("short/tiny.zip", "damaged archive"),
])
def test_fetch_damaged_archives_are_one_line_errors(tiny_spec, server, tmp_path, path, problem):
    """Item 3: truncated zip / tar.gz, a bad CRC, a short body without Content-Length."""
    with pytest.raises(FetchError, match=problem) as info:
        fetch("tiny", tmp_path, url=f"{server[0]}/{path}", progress=False)
    assert "\n" not in str(info.value) and "nothing was installed" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("archive,problem", [
    ("cut.tar.gz", r"tiny\.zip/tiny_train\.txt:21: feature '\d+:' is not of the form id:value; nothing was installed"),
    ("garbage.tar.gz", r"tiny\.zip/tiny_train\.txt:6: label id .this. is not a non-negative integer; nothing was installed"),
])
def test_fetch_reads_files_in_full_before_installing(tiny_spec, server, tmp_path, archive, problem):
    """Item 4: correct header and line count but a cut last line / a garbage row: not installed."""
    with pytest.raises(DataFormatError, match=problem):
        fetch("tiny", tmp_path, url=f"{server[0]}/files/{archive}", progress=False)
    assert list(tmp_path.iterdir()) == []
    assert registry.dataset_info("tiny", tmp_path)["present"] is False


def test_fetch_removes_stale_staging_and_marks_only_verified_data(tiny_spec, server, tmp_path):
    """Item 5: a killed fetch's staging folder (dead pid) and partial download are removed."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".tiny.fetch-{dead.pid}-abc123"
    stale.mkdir(parents=True)
    (stale / "tiny.zip.part").write_bytes(b"PK\x03\x04partial")
    fetch("tiny", tmp_path, progress=False)
    _assert_installed(tmp_path, server[2])
    # files changed after verification are no longer "verified" (a later fetch reads them again)
    train = tmp_path / "tiny" / "train.txt"
    train.write_bytes(train.read_bytes()[:-30])
    info = registry.dataset_info("tiny", tmp_path)
    assert info["present"] is True and info["verified"] is False
    fetch("tiny", tmp_path, progress=False)  # damaged in place: downloaded and installed again
    _assert_installed(tmp_path, server[2])


def test_hand_installed_files_are_verified_in_full(tiny_spec, server, tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    for split, (X, Y) in zip(("train", "test"), server[2]):
        write_xc(d / f"{split}.txt", X, Y)
    assert registry.dataset_info("tiny", tmp_path)["verified"] is False
    assert fetch("tiny", tmp_path, url=_closed_port_url(), progress=False) == d  # read in full, no download
    assert registry.dataset_info("tiny", tmp_path)["verified"] is True
