"""Named datasets: where their files live, how to get them, what their headers must say.

A dataset's files are Extreme Classification Repository text files (see
:func:`xhyp.datasets.formats.read_xc`) in a data directory: the ``data_dir`` argument, else the
``XHYP_DATA`` environment variable, else ``./data``. ``bibtex`` and ``delicious`` are read from
``DATA_DIR/<name>/{train,test}.txt`` (the shared checkout data has them); ``wiki10-31k`` and
``delicious-200k`` are downloaded by :func:`fetch` (``xhyp data fetch NAME``) into the same
layout; ``synthetic-hier`` is generated in memory.
"""
from __future__ import annotations

import html.parser
import json
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import asdict, dataclass
from http.client import HTTPException
from pathlib import Path

from .formats import DataFormatError, read_xc, read_xc_header

__all__ = ["DatasetSpec", "DATASETS", "DatasetNotFoundError", "FetchError", "get_spec", "resolve_data_dir",
           "dataset_paths", "locate_split", "rcv1_splits", "fetch", "dataset_info", "is_verified",
           "propensity_params", "PROPENSITY_AB"]

#: (A, B) of the Jain et al. (KDD 2016) inverse-propensity model used by the Extreme Classification
#: Repository for each family of data sets; every other data set (and data outside the registry)
#: uses the default. The only place these numbers are written: a :class:`DatasetSpec` takes its
#: family's values, :func:`propensity_params` and :func:`xhyp.metrics.inv_propensity` the default.
PROPENSITY_AB = {
    "default": (0.55, 1.5),
    "amazon": (0.6, 2.6),  # Amazon-670K, Amazon-3M
    "wikipedia": (0.5, 0.4),  # Wiki10-31K, WikiLSHTC-325K, WikipediaLarge-500K
}

XC_REPOSITORY = "http://manikvarma.org/downloads/XC/XMLRepository.html"
MULAN_DATASETS = "https://mulan.sourceforge.net/datasets-mlc.html"
_GDRIVE_URL = "https://drive.google.com/uc?export=download&id={id}"
_GDRIVE_CONFIRMED_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
_MULAN_OR_XC = (f"Mulan, {MULAN_DATASETS}, or the Extreme Classification Repository, {XC_REPOSITORY} "
                "(Mulan's ARFF + XML files convert with xhyp.datasets.formats.read_mulan_arff and write_xc)")
_XC_CITATION = ("K. Bhatia, K. Dahiya, H. Jain, P. Kar, A. Mittal, Y. Prabhu, M. Varma. The Extreme "
                "Classification Repository: multi-label datasets and code, 2016. " + XC_REPOSITORY)


_CLUS_HMC = ("the Clus-HMC benchmark collection (Vens et al. 2008), https://dtai.cs.kuleuven.be/clus/hmcdatasets/, "
             "as the .arff files C-HMCNN uses (put them in DATA_DIR/hmc/, e.g. ../shared/data/hmc)")
_YEAST = ("C. Vens, J. Struyf, L. Schietgat, S. Dzeroski, H. Blockeel. Decision trees for hierarchical multi-label "
          "classification. Machine Learning 73(2), 2008.")


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about a dataset.

    Attributes:
        name: registry name (also the dataset's folder under the data directory).
        kind: ``"local"`` (files placed by hand, e.g. the shared data), ``"remote"`` (downloadable
            by :func:`fetch`) or ``"synthetic"`` (generated in memory).
        n_train, n_test, n_features, n_labels: the expected header values; ``n_labels`` and
            ``n_features`` are those of both splits.
        files: train and test file paths relative to the data directory.
        archive_files: the train and test file names inside the downloaded archive.
        url: direct download URL of the archive (``fetch(url=...)`` overrides it).
        gdrive_id: Google Drive file id of the archive (used when ``url`` is empty).
        archive_name: file name the archive is saved under while it is unpacked.
        propensity_a, propensity_b: Jain et al. (2016) inverse-propensity parameters.
        avg_features, avg_labels: published mean features and labels per training point.
        source: where to get the data by hand.
        citation: reference to cite.
        fmt: file format: ``"xc"`` (XC text), ``"hmc-arff"`` (Clus-HMC ARFF, read with
            :func:`~xhyp.datasets.formats.read_hmc_arff`; hierarchy in the file) or
            ``"sklearn-rcv1"`` (scikit-learn's ``fetch_rcv1`` cache under ``DATA_DIR/rcv1``).
        valid_file: validation file of an HMC dataset that has one ("" otherwise).
        n_valid: its number of rows.
    """

    name: str
    kind: str
    n_train: int
    n_test: int
    n_features: int
    n_labels: int
    files: tuple[str, str] = ("", "")
    archive_files: tuple[str, str] | None = None
    url: str | None = None
    gdrive_id: str | None = None
    archive_name: str | None = None
    propensity_a: float = PROPENSITY_AB["default"][0]
    propensity_b: float = PROPENSITY_AB["default"][1]
    avg_features: float | None = None
    avg_labels: float | None = None
    source: str = ""
    citation: str = ""
    fmt: str = "xc"
    valid_file: str = ""
    n_valid: int = 0

    def __post_init__(self):
        if self.kind not in ("local", "remote", "synthetic"):
            raise ValueError(f"kind must be 'local', 'remote' or 'synthetic', got {self.kind!r}")
        if self.kind != "synthetic" and not all(self.files):
            object.__setattr__(self, "files", (f"{self.name}/train.txt", f"{self.name}/test.txt"))

    @property
    def download_url(self) -> str | None:
        """The archive's URL (``url``, else the Google Drive link), or None for local data."""
        if self.url:
            return self.url
        return _GDRIVE_URL.format(id=self.gdrive_id) if self.gdrive_id else None

    def expected_header(self, split: str) -> tuple[int, int, int]:
        """``(N, F, L)`` the ``split`` file's header must have."""
        return (self.n_train if split == "train" else self.n_test), self.n_features, self.n_labels


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec(
            "bibtex", "local", 4880, 2515, 1836, 159, avg_features=68.74, avg_labels=2.40,
            source=_MULAN_OR_XC,
            citation="I. Katakis, G. Tsoumakas, I. Vlahavas. Multilabel text classification for automated "
                     "tag suggestion. ECML/PKDD 2008 Discovery Challenge."),
        DatasetSpec(
            "delicious", "local", 12920, 3185, 500, 983, avg_features=18.17, avg_labels=19.02,
            source=_MULAN_OR_XC,
            citation="G. Tsoumakas, I. Katakis, I. Vlahavas. Effective and efficient multilabel "
                     "classification in domains with large number of labels. ECML/PKDD 2008 Workshop on "
                     "Mining Multidimensional Data (MMD'08)."),
        DatasetSpec(
            "wiki10-31k", "remote", 14146, 6616, 101938, 30938,
            archive_files=("wiki10_train.txt", "wiki10_test.txt"), gdrive_id="0B3lPMIHmG6vGaDdOeGliWF9EOTA",
            archive_name="wiki10.zip", propensity_a=PROPENSITY_AB["wikipedia"][0],
            propensity_b=PROPENSITY_AB["wikipedia"][1], avg_features=673.45, avg_labels=18.64,
            source=f"the Extreme Classification Repository, {XC_REPOSITORY} (Wiki10-31K, BoW features)",
            citation="A. Zubiaga. Enhancing navigation on Wikipedia with social tags. Wikimania 2009. " + _XC_CITATION),
        DatasetSpec(
            "delicious-200k", "remote", 196606, 100095, 782585, 205443,
            archive_files=("deliciousLarge_train.txt", "deliciousLarge_test.txt"),
            gdrive_id="0B3lPMIHmG6vGR3lBWWYyVlhDLWM", archive_name="deliciousLarge.zip",
            avg_features=301.17, avg_labels=75.54,
            source=f"the Extreme Classification Repository, {XC_REPOSITORY} (Delicious-200K, BoW features)",
            citation="R. Wetzker, C. Zimmermann, C. Bauckhage. Analyzing social bookmarking systems: a "
                     "del.icio.us cookbook. ECAI 2008 Mining Social Data Workshop. " + _XC_CITATION),
        # hierarchical multi-label (Clus-HMC ARFF; Vens et al. 2008, as used by C-HMCNN)
        *[DatasetSpec(name, "local", n_tr, n_te, n_f, n_l, files=(f"hmc/{tr}", f"hmc/{te}"), fmt="hmc-arff",
                      valid_file=f"hmc/{va}" if va else "", n_valid=n_va, source=_CLUS_HMC, citation=cite)
          for name, tr, va, te, n_tr, n_va, n_te, n_f, n_l, cite in [
              ("cellcycle_FUN", "cellcycle_FUN.train.arff", "cellcycle_FUN.valid.arff", "cellcycle_FUN.test.arff",
               1628, 848, 1281, 77, 499, _YEAST),
              ("derisi_GO", "derisi_GO.train.arff", "derisi_GO.valid.arff", "derisi_GO.test.arff",
               1605, 842, 1272, 63, 4119, _YEAST),
              ("Enron_corr", "Enron_corr_trainvalid.arff", "", "Enron_corr_test.arff", 988, 0, 660, 1001, 56,
               "B. Klimt, Y. Yang. The Enron corpus: a new dataset for email classification research. ECML 2004."),
              ("ImCLEF07D", "ImCLEF07D_Train.arff", "", "ImCLEF07D_Test.arff", 10000, 0, 1006, 80, 46,
               "I. Dimitrovski, D. Kocev, S. Loskovska, S. Dzeroski. Hierarchical annotation of medical images. "
               "IMIS 2008 (ImageCLEF 2007 medical annotation, axis D)."),
          ]],
        DatasetSpec(
            "rcv1", "remote", 23149, 781265, 47236, 103, fmt="sklearn-rcv1", files=("rcv1/", "rcv1/"),
            source="scikit-learn's sklearn.datasets.fetch_rcv1 (downloads RCV1-v2 from "
                   "http://jmlr.csail.mit.edu/papers/volume5/lewis04a/ into DATA_DIR/rcv1)",
            citation="D. D. Lewis, Y. Yang, T. G. Rose, F. Li. RCV1: a new benchmark collection for text "
                     "categorization research. JMLR 5, 2004."),
        DatasetSpec(
            "synthetic-hier", "synthetic", 3000, 1000, 500, 100,
            source="generated by xhyp.datasets.synthetic.make_hierarchical (seed 0)",
            citation="xhyp synthetic hierarchical benchmark (no external source)"),
    ]
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not in the data directory; the message says what to put where."""


class FetchError(RuntimeError):
    """A download failed or gave something unusable; the message says how to install by hand."""


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a registry name.

    Raises:
        KeyError: unknown name (``args[0]`` is a message listing the known names).
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$XHYP_DATA``, else ``./data`` (``~`` expanded)."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get("XHYP_DATA") or "data"
    return Path(data_dir).expanduser()


def dataset_paths(name: str, data_dir=None) -> tuple[Path, Path]:
    """Where :func:`xhyp.datasets.loading.load_dataset` reads the train and test files of a file-based dataset.

    Raises:
        KeyError: unknown name. ValueError: a synthetic dataset (no files).
    """
    spec = get_spec(name)
    if spec.kind == "synthetic":
        raise ValueError(f"dataset {name!r} is generated in memory and has no files")
    root = resolve_data_dir(data_dir)
    return root / spec.files[0], root / spec.files[1]


def _existing_file(spec: DatasetSpec, root: Path, split: str) -> Path | None:
    """The split's file: the registry path, else the archive's file name in the dataset folder."""
    i = 0 if split == "train" else 1
    candidates = [root / spec.files[i]]
    if spec.archive_files:
        candidates.append((root / spec.files[i]).parent / spec.archive_files[i])
    return next((p for p in candidates if p.is_file()), None)


def _manual_instructions(spec: DatasetSpec, root: Path) -> str:
    """How to install a dataset's files by hand (one paragraph, ends with 'then rerun.')."""
    train, test = root / spec.files[0], root / spec.files[1]
    if spec.archive_files:
        link = f" (Google Drive: {_GDRIVE_URL.format(id=spec.gdrive_id)})" if spec.gdrive_id else ""
        return (f"By hand: download {spec.archive_name or 'the archive'} from {spec.source}{link}, unpack it, "
                f"put {spec.archive_files[0]} as {train} and {spec.archive_files[1]} as {test} (or run "
                f"`xhyp data fetch {spec.name} --data-dir {root} --url file:///path/to/{spec.archive_name}`), "
                "then rerun.")
    return (f"Get them from {spec.source}, in the Extreme Classification Repository text format, as {train} "
            f"and {test}, or point --data-dir / XHYP_DATA at a folder that has them (e.g. ../shared/data), "
            "then rerun.")


def _check_header(path: Path, spec: DatasetSpec, split: str, shown=None) -> None:
    got = read_xc_header(path)
    want = spec.expected_header(split)
    if got != want:
        raise DataFormatError(shown or path, 1, f"header 'N F L' is {' '.join(map(str, got))} but dataset "
                                                f"{spec.name!r} ({split}) has {' '.join(map(str, want))}")


def locate_split(name: str, split: str = "train", data_dir=None) -> Path:
    """The file of one split of a file-based Extreme Classification Repository dataset, its header
    checked against the spec (the file itself is not read further).

    Args:
        name: registry name (see :data:`DATASETS`) of a dataset in the XC text format.
        split: ``"train"`` or ``"test"``.
        data_dir: data directory (see :func:`resolve_data_dir`).

    Raises:
        KeyError: unknown name. ValueError: bad split, or a dataset without files in that format.
        DatasetNotFoundError: the split's file is missing (the message says which files are
            expected where and how to get them).
        DataFormatError: the file's header disagrees with the spec.
    """
    spec = get_spec(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if spec.fmt != "xc" or spec.kind == "synthetic":
        raise ValueError(f"dataset {name!r} has no Extreme Classification Repository text files")
    root = resolve_data_dir(data_dir)
    path = _existing_file(spec, root, split)
    if path is None:
        how = f"Download it with `xhyp data fetch {name} --data-dir {root}`.\n" if spec.kind == "remote" else ""
        raise DatasetNotFoundError(
            f"dataset {name!r} ({split} split) not found: expected {root / spec.files[0]} and "
            f"{root / spec.files[1]} (data directory: --data-dir, else $XHYP_DATA, else ./data).\n"
            + how + _manual_instructions(spec, root))
    _check_header(path, spec, split)
    return path


def rcv1_splits(root: Path) -> dict:
    """RCV1-v2's train and test splits through scikit-learn's ``fetch_rcv1`` (downloaded once,
    then cached under ``root/rcv1``): ``{"train": (X, Y), "test": (X, Y)}``, ``X`` float32 CSR
    tf-idf (``N x 47,236``), ``Y`` binary float32 CSR (``N x 103``).

    Raises:
        DatasetNotFoundError: not cached and the download fails (offline); the message says how
            to get it on a machine that is online.
    """
    from sklearn.datasets import fetch_rcv1

    home = root / "rcv1"
    out = {}
    for split, subset in (("train", "train"), ("test", "test")):
        try:
            b = fetch_rcv1(data_home=str(home), subset=subset, download_if_missing=True)
        except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException) as exc:
            raise DatasetNotFoundError(
                f"dataset 'rcv1' is not in {home} and could not be downloaded ({getattr(exc, 'reason', exc)}): "
                "scikit-learn's fetch_rcv1 needs the network once (about 650 MB). On a machine that is online run "
                f"`python -c \"from sklearn.datasets import fetch_rcv1; fetch_rcv1(data_home='{home}')\"` and copy "
                f"{home} here (or point --data-dir / XHYP_DATA at a folder holding rcv1/), then rerun.") from exc
        out[split] = (b.data.astype("float32").tocsr(), b.target.astype("float32").tocsr())
    return out


def propensity_params(dataset: str | None = None) -> tuple[float, float]:
    """Jain et al. (KDD 2016) propensity parameters ``(A, B)`` of a data set: its registry spec's,
    or :data:`PROPENSITY_AB` ``["default"]`` (0.55, 1.5) for ``None`` and names outside the registry."""
    if dataset is None or dataset not in DATASETS:
        return PROPENSITY_AB["default"]
    spec = get_spec(dataset)
    return spec.propensity_a, spec.propensity_b


def dataset_info(name: str, data_dir=None) -> dict:
    """The spec of a dataset as a dict, plus ``data_dir``, ``train_path``, ``test_path``,
    ``download_url``, ``present`` (both files there, or synthetic) and ``verified`` (both files
    were read in full by :func:`fetch` and have not changed since: :func:`is_verified`).
    Nothing is read here.

    Raises:
        KeyError: unknown name.
    """
    spec = get_spec(name)
    info = asdict(spec)
    info["download_url"] = spec.download_url
    if spec.kind == "synthetic":
        info.update(data_dir=None, train_path=None, test_path=None, present=True, verified=True)
        return info
    root = resolve_data_dir(data_dir)
    paths = [_existing_file(spec, root, s) for s in ("train", "test")]
    info.update(data_dir=str(root), train_path=str(paths[0] or root / spec.files[0]),
                test_path=str(paths[1] or root / spec.files[1]), present=all(paths),
                verified=all(paths) and is_verified(spec, root))
    return info


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------

class _FormFinder(html.parser.HTMLParser):
    """Forms of an HTML page: ``[(action, {hidden input name: value})]``."""

    def __init__(self):
        super().__init__()
        self.forms = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append((a.get("action") or "", {}))
        elif tag == "input" and self.forms and a.get("name") and a.get("type", "").lower() == "hidden":
            self.forms[-1][1][a["name"]] = a.get("value") or ""


def _confirm_url(page: str, page_url: str, gdrive_id: str | None) -> str | None:
    """The follow-up URL of a Google Drive "can't scan this file for viruses" page, or None."""
    finder = _FormFinder()
    finder.feed(page)
    for action, fields in finder.forms:
        if "confirm" in fields or "uuid" in fields:
            return urllib.parse.urljoin(page_url, action) + "?" + urllib.parse.urlencode(fields)
    m = re.search(r'href="([^"]*[?&](?:amp;)?confirm=[^"]*)"', page)
    if m:
        return urllib.parse.urljoin(page_url, m.group(1).replace("&amp;", "&"))
    m = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if m and gdrive_id:
        return _GDRIVE_URL.format(id=gdrive_id) + f"&confirm={m.group(1)}"
    if gdrive_id:
        return _GDRIVE_CONFIRMED_URL.format(id=gdrive_id)
    return None


def _download(url: str, dest: Path, gdrive_id: str | None, progress: bool, timeout: float, what: str) -> None:
    """Stream ``url`` to ``dest`` (through ``dest.part``), following a Drive confirm page."""
    from tqdm.auto import tqdm

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    tried = {url}
    resp = opener.open(urllib.request.Request(url, headers={"User-Agent": "xhyp"}), timeout=timeout)
    while "text/html" in resp.headers.get("Content-Type", ""):
        page = resp.read(4 << 20).decode("utf-8", errors="replace")
        resp.close()
        nxt = _confirm_url(page, resp.geturl(), gdrive_id)
        if nxt is None or nxt in tried:
            raise FetchError("the server returned an HTML page instead of the archive (download quota exceeded, "
                             "access denied or a moved link)")
        tried.add(nxt)
        resp = opener.open(urllib.request.Request(nxt, headers={"User-Agent": "xhyp"}), timeout=timeout)
    part = dest.with_name(dest.name + ".part")
    total = int(resp.headers.get("Content-Length") or 0) or None
    with resp, open(part, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                           desc=what, disable=not progress) as bar:
        while chunk := resp.read(1 << 20):
            f.write(chunk)
            bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise FetchError(f"download of {url} stopped after {part.stat().st_size} of {total} bytes")
    os.replace(part, dest)


def _archive_kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" or head[257:262] == b"ustar":
        return "tar"
    raise FetchError(f"the downloaded file is not a zip or tar archive (it starts with {head[:24]!r}); "
                     "the link may have returned an error page")


def _safe_name(name: str, dest: Path) -> bool:
    """True if the archive member ``name`` stays inside ``dest`` once extracted."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return False
    full = os.path.normpath(os.path.join(dest, name))
    return os.path.commonpath([str(dest), full]) == str(dest)


def _pick(members: list[str], spec: DatasetSpec, split: str, archive: str) -> str:
    """The archive member holding the split (exact name, then ``split.txt``, then ``*split*.txt``)."""
    i = 0 if split == "train" else 1
    base = {m: m.replace("\\", "/").rsplit("/", 1)[-1] for m in members}
    tests = [lambda b: b == Path(spec.files[i]).name, lambda b: split in b.lower() and b.lower().endswith(".txt")]
    if spec.archive_files:
        tests.insert(0, lambda b: b == spec.archive_files[i])
    for test in tests:
        found = [m for m in members if test(base[m])]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise FetchError(f"{archive}: several candidate {split} files: {', '.join(found)}")
    listing = ", ".join(members[:20]) + (" ..." if len(members) > 20 else "")
    raise FetchError(f"{archive}: no {split} file found (members: {listing or 'none'})")


def _extract(archive: Path, spec: DatasetSpec, out_dir: Path) -> dict[str, tuple[str, Path]]:
    """Extract the train and test files of ``archive`` into ``out_dir`` as ``{split}.txt``.

    Returns ``{split: (member name, extracted path)}``. Raises FetchError if a member's path
    would escape the folder, or if the files are not found.
    """
    kind = _archive_kind(archive)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir.resolve()
    with (zipfile.ZipFile(archive) if kind == "zip" else tarfile.open(archive, "r:*")) as ar:
        if kind == "zip":
            infos = {i.filename: i for i in ar.infolist()}
            files = [n for n, i in infos.items() if not i.is_dir()]
        else:
            infos = {m.name: m for m in ar.getmembers()}
            files = [n for n, m in infos.items() if m.isfile()]
        unsafe = [n for n in infos if not _safe_name(n, dest)]
        if unsafe:
            raise FetchError(f"{archive.name}: refusing an archive with paths outside its folder: {unsafe[0]}")
        files = [n for n in files if not n.startswith("__MACOSX/") and not n.rsplit("/", 1)[-1].startswith("._")]
        out = {}
        for split in ("train", "test"):
            member = _pick(files, spec, split, archive.name)
            target = out_dir / f"{split}.txt"
            with (ar.open(infos[member]) if kind == "zip" else ar.extractfile(infos[member])) as src, \
                    open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            out[split] = (member, target)
    return out


VERIFIED = ".xhyp-verified.json"
"""Marker written beside a dataset's files once both were read in full without error."""


def _file_stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _marker_path(spec: DatasetSpec, root: Path) -> Path:
    return (root / spec.files[0]).parent / VERIFIED


def is_verified(spec: DatasetSpec, root: Path) -> bool:
    """Whether both split files carry a verification marker that still matches them (same
    files, sizes and modification times as when they were read in full)."""
    marker = _marker_path(spec, root)
    try:
        m = json.loads(marker.read_text())
        for split in ("train", "test"):
            path = _existing_file(spec, root, split)
            if path is None or m.get(split, {}).get("file") != path.name or \
                    {k: m[split].get(k) for k in ("size", "mtime_ns")} != _file_stamp(path):
                return False
    except (OSError, ValueError, AttributeError, TypeError):
        return False
    return True


def _read_in_full(path: Path, spec: DatasetSpec, split: str, shown: str) -> None:
    """Parse a whole split file with the training reader and check its shape against the spec.

    Raises:
        DataFormatError: the first problem, named ``shown:line``.
    """
    try:
        _check_header(path, spec, split, shown)
        X, _ = read_xc(path)
    except DataFormatError as exc:
        raise DataFormatError(shown, exc.line, f"{exc.problem}; nothing was installed") from None
    want = spec.expected_header(split)
    if X.shape != want[:2]:  # pragma: no cover - read_xc enforces the header
        raise DataFormatError(shown, None, f"has {X.shape[0]} x {X.shape[1]} features, expected {want[0]} x {want[1]}")


def _write_marker(spec: DatasetSpec, root: Path) -> None:
    from xhyp.utils import atomic_save_json

    marker = {split: dict(_file_stamp(p), file=p.name)
              for split in ("train", "test") if (p := _existing_file(spec, root, split)) is not None}
    atomic_save_json(marker, _marker_path(spec, root))


def _verify_in_place(spec: DatasetSpec, root: Path) -> bool:
    """Both split files present and readable in full (a marker is then written); False otherwise."""
    if is_verified(spec, root):
        return True
    for split in ("train", "test"):
        path = _existing_file(spec, root, split)
        if path is None:
            return False
        try:
            _read_in_full(path, spec, split, str(path))
        except (OSError, DataFormatError):
            return False
    try:
        _write_marker(spec, root)
    except OSError:
        pass
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(root: Path, name: str) -> None:
    """Remove the staging folders (and their partial downloads) of fetches whose process died."""
    pat = re.compile(rf"^\.{re.escape(name)}\.fetch-(\d+)-")
    for p in root.glob(f".{name}.fetch-*"):
        m = pat.match(p.name)
        if p.is_dir() and m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


_ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError,
                   NotImplementedError, ValueError)


def fetch(name: str, data_dir=None, url: str | None = None, progress: bool = True, timeout: float = 30) -> Path:
    """Download, unpack and verify a dataset into ``DATA_DIR/<name>/{train,test}.txt``.

    Nothing is downloaded when both files are already there and verified (read in full once:
    see :func:`is_verified`; files installed by hand are read in full here, and marked). The
    archive (zip, tar, tar.gz/bz2/xz, recognised by its first bytes) is streamed into a staging
    folder inside the data directory (``.NAME.fetch-<pid>-*``; those of dead processes, with
    their partial downloads, are removed by the next fetch), the train and test files are found
    in it (in any subfolder), read in full with the training reader (:func:`read_xc`) and
    checked against the spec, and only then installed: the complete dataset folder is renamed
    into place (or, if the folder exists, each file is), then the verification marker is
    written. The staging folder is always removed.

    Args:
        name: registry name.
        data_dir: data directory (see :func:`resolve_data_dir`).
        url: archive URL overriding the registry's (a mirror, or ``file:///...`` for an archive
            downloaded by hand); lets local datasets be fetched too.
        progress: show a tqdm progress bar.
        timeout: seconds of network inactivity before giving up.

    Returns:
        the dataset folder ``DATA_DIR/<name>``.

    Raises:
        KeyError: unknown name. ValueError: a synthetic dataset.
        FetchError: no URL for the dataset, network failure (offline, DNS, timeout, HTTP error),
            an HTML page or a non-archive instead of the archive, a damaged archive (truncated,
            bad CRC), unsafe member paths, or missing train/test files.
        DataFormatError: a file is malformed or disagrees with the spec (named ``archive/member:line``);
            nothing is installed.
    """
    spec = get_spec(name)
    if spec.kind == "synthetic":
        raise ValueError(f"dataset {name!r} is generated in memory; there is nothing to fetch")
    root = resolve_data_dir(data_dir)
    if spec.fmt == "sklearn-rcv1":  # scikit-learn downloads and caches it
        rcv1_splits(root)
        return root / "rcv1"
    target = root / name
    if _verify_in_place(spec, root):
        return target
    src = url or spec.download_url
    if src is None:
        raise FetchError(f"dataset {name!r} has no download link; its files are installed by hand.\n"
                         + _manual_instructions(spec, root))
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(root, name)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.fetch-{os.getpid()}-", dir=root))
    try:
        archive = staging / (spec.archive_name or "archive")
        try:
            _download(src, archive, None if url else spec.gdrive_id, progress, timeout, name)
        except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException, FetchError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                reason = f"HTTP error {exc.code} ({exc.reason})"
            elif isinstance(exc, FetchError):
                reason = str(exc)
            else:
                reason = getattr(exc, "reason", None) or exc
            raise FetchError(f"could not get {name!r} from {src}: {reason}.\n"
                             + _manual_instructions(spec, root)) from exc
        try:
            extracted = _extract(archive, spec, staging / "files")
        except FetchError:
            raise
        except _ARCHIVE_ERRORS as exc:
            msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise FetchError(f"{archive.name} (from {src}): damaged archive ({type(exc).__name__}: {msg}); "
                             "nothing was installed; download it again") from None
        archive.unlink()
        for split, (member, path) in extracted.items():
            _read_in_full(path, spec, split, f"{archive.name}/{member}")
        # the complete folder, then one rename
        new = staging / "install"
        for split, rel in zip(("train", "test"), spec.files):
            dst = new / Path(rel).relative_to(name) if Path(rel).parts[0] == name else new / Path(rel).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(extracted[split][1], dst)
        if not target.exists():
            os.replace(new, target)
        else:  # keep whatever else the user has there; replace our files one by one
            _marker_path(spec, root).unlink(missing_ok=True)
            for split, rel in zip(("train", "test"), spec.files):
                dst = root / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                src_file = new / Path(rel).relative_to(name) if Path(rel).parts[0] == name else new / Path(rel).name
                os.replace(src_file, dst)
        _write_marker(spec, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
