"""Readers and writers of multi-label data files.

* :func:`read_xc` / :func:`write_xc`: the Extreme Classification Repository text format
  (a header ``N F L``, then one line per point ``l1,l2,... f:v f:v ...``, 0-based ids, a point
  without labels starts with a space);
* :func:`read_mulan_arff`: Mulan sparse (or dense) ARFF plus its XML label file;
* :func:`read_hmc_arff`: Clus-HMC dense ARFF with a ``hierarchical`` class attribute.

Every reader returns ``X`` as float32 and ``Y`` as a binary float32 CSR matrix with sorted indices.
Malformed input raises :class:`DataFormatError`, whose message names the file, the 1-based line
number and the problem, e.g. ``train.txt:17: label id 205 out of range [0, 159)``.

:func:`read_xc` works on 16 MiB blocks with whole-array NumPy operations: it classifies every run
of digits by its neighbouring bytes, checks that the runs of each line follow the grammar, and
reads them all with one integer ``np.fromstring``; only lines outside the common grammar (very
long mantissas, huge exponents) or failing a check are handled in Python, line by line, which is
also where error messages are phrased.
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from xhyp.utils import atomic_write

__all__ = ["DataFormatError", "read_xc", "read_xc_header", "write_xc", "read_mulan_arff", "read_hmc_arff",
           "topological_order"]


class DataFormatError(ValueError):
    """A malformed data file.

    ``str(exc)`` is ``"{path}:{line}: {problem}"``; the parts are kept as the attributes ``path``,
    ``line`` (1-based, ``None`` for problems of the whole file) and ``problem``.
    """

    def __init__(self, path, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # picklable (e.g. across multiprocessing)
        return type(self), (self.path, self.line, self.problem)


# --------------------------------------------------------------------------------------------
# Extreme Classification Repository text format
# --------------------------------------------------------------------------------------------

_BLOCK = 1 << 22  # bytes parsed at a time by read_xc (4 MiB: faster and a lower peak than 16 MiB)
_DIGITS = re.compile(r"[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf|infinity)", re.I)
_SPACE, _TAB, _CR, _LF, _COMMA, _COLON = (ord(c) for c in " \t\r\n,:")


_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
_SHOWN = 60  # characters of a bad line quoted in a message


def _shown(text: str) -> str:
    """``repr`` of (the start of) a bad line, for messages."""
    return repr(text[:_SHOWN]) + (f" ... ({len(text)} characters)" if len(text) > _SHOWN else "")


class _Decompressed:
    """A binary file object that reads ``path`` transparently decompressed (gzip, bz2, xz, by
    their magic bytes); damaged compressed streams raise :class:`DataFormatError`."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            head = f.read(6)
        self.kind = next((k for m, k in _MAGIC.items() if head.startswith(m)), None)
        if head.startswith(b"PK\x03\x04"):
            raise DataFormatError(path, None, "is a zip archive, not a text file: unpack it first (or use "
                                              "`xhyp data fetch`)")
        if self.kind == "gzip":
            import gzip

            self.f = gzip.open(path, "rb")
        elif self.kind == "bz2":
            import bz2

            self.f = bz2.open(path, "rb")
        elif self.kind == "xz":
            import lzma

            self.f = lzma.open(path, "rb")
        else:
            self.f = open(path, "rb")

    def _guard(self, fn, *a):
        try:
            return fn(*a)
        except DataFormatError:
            raise
        except (EOFError, OSError, ValueError, MemoryError) as exc:
            if self.kind is None or isinstance(exc, MemoryError):
                raise
            what = "ends before its end marker (truncated download?)" if isinstance(exc, EOFError) else str(exc)
            raise DataFormatError(self.path, None, f"damaged {self.kind} stream: {what}") from None
        except Exception as exc:  # zlib.error, lzma.LZMAError...
            if self.kind is None:
                raise
            raise DataFormatError(self.path, None, f"damaged {self.kind} stream: {exc}") from None

    def readline(self):
        return self._guard(self.f.readline)

    def read(self, n=-1):
        return self._guard(self.f.read, n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _parse_header(raw: bytes, path) -> tuple[int, int, int]:
    if raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
        raw = raw[3:]
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFormatError(path, 1, "the file is UTF-16 text; save it as ASCII (or UTF-8)")
    text = raw.decode("ascii", errors="replace").strip()
    if not text:
        raise DataFormatError(path, 1, "missing header: expected 'N_points N_features N_labels'")
    parts = text.split()
    if len(parts) != 3 or not all(_DIGITS.fullmatch(p) for p in parts):
        if b"\x00" in raw or sum(c > 126 or (c < 32 and c not in (9, 10, 13)) for c in raw[:200]) > 4:
            raise DataFormatError(path, 1, f"binary data ({len(raw)} bytes before the first newline, starting "
                                           f"{raw[:16]!r}), not an Extreme Classification Repository text file")
        raise DataFormatError(path, 1, f"bad header {_shown(text)}: expected three non-negative integers "
                                       "'N_points N_features N_labels'")
    n, n_feat, n_lab = (int(p) for p in parts)
    if max(n, n_feat, n_lab) >= 1 << 62:
        raise DataFormatError(path, 1, f"header value {max(n, n_feat, n_lab)} is too large (the limit is 2^62)")
    return n, n_feat, n_lab


def _split_xc_line(text: str) -> tuple[str, list[str]]:
    """``(label field, feature tokens)`` of one data line."""
    if not text or text[0] in " \t\r":
        return "", text.split()
    m = re.search(r"[ \t]", text)
    first, rest = (text, "") if m is None else (text[:m.start()], text[m.end():])
    if ":" in first:  # no label field and no leading space: tolerated, as scikit-learn does
        return "", text.split()
    return first, rest.split()


def _parse_id(tok: str, what: str, n: int, path, line: int) -> int:
    """A label or feature id token as an int in ``[0, n)``; :class:`DataFormatError` otherwise."""
    if tok.startswith("-") and _DIGITS.fullmatch(tok[1:]):
        raise DataFormatError(path, line, f"negative {what} {tok}")
    if not _DIGITS.fullmatch(tok):
        raise DataFormatError(path, line, f"{what} {_shown(tok)} is not a non-negative integer")
    v = int(tok)
    if v >= n:
        raise DataFormatError(path, line, f"{what} {v} out of range [0, {n})")
    return v


def _parse_xc_line(raw: bytes, line: int, n_feat: int, n_lab: int, path) -> tuple[list, list, list]:
    """Parse one data line in Python: ``(label ids, feature ids, values)``.

    Used for the lines that the vectorised path does not take (exponents, signs, long mantissas)
    and to describe errors. Raises :class:`DataFormatError` for the first problem of the line.
    """
    try:
        text = raw.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise DataFormatError(path, line, "non-ASCII byte in line") from None
    field, feats = _split_xc_line(text)
    labels, ids, vals = [], [], []
    if field:
        for tok in field.split(","):
            if not tok:
                raise DataFormatError(path, line, f"empty label id in label field {_shown(field)} (stray comma)")
            labels.append(_parse_id(tok, "label id", n_lab, path, line))
    for tok in feats:
        if "," in tok:
            raise DataFormatError(path, line, f"unexpected ',' in feature {_shown(tok)} (labels come first, without "
                                              "spaces, e.g. '3,7 0:1.5 4:2')")
        fid, colon, val = tok.partition(":")
        if not colon or ":" in val or not fid or not val:
            raise DataFormatError(path, line, f"feature {_shown(tok)} is not of the form id:value")
        f = _parse_id(fid, "feature id", n_feat, path, line)
        if not _FLOAT.fullmatch(val):
            raise DataFormatError(path, line, f"unparsable value {_shown(val)} of feature {f}")
        v = float(val)
        if not math.isfinite(v):
            raise DataFormatError(path, line, f"non-finite value {_shown(val)} of feature {f}")
        if abs(v) > _FLT_MAX:
            raise DataFormatError(path, line, f"value {_shown(val)} of feature {f} overflows float32")
        ids.append(f)
        vals.append(v)
    for what, seq in (("label", labels), ("feature", ids)):
        if len(set(seq)) != len(seq):
            seen = set()
            dup = next(x for x in seq if x in seen or seen.add(x))
            raise DataFormatError(path, line, f"duplicate {what} id {dup}")
    return labels, ids, vals


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Distinct values of a sorted array (``np.unique`` hashes, which is slow on large arrays)."""
    return a[np.append(True, a[1:] != a[:-1])] if len(a) else a


def _repeated_within_rows(rows: np.ndarray, ids: np.ndarray, n_cols: int) -> np.ndarray:
    """Rows (non-decreasing ``rows``, one entry per id) in which some id occurs twice."""
    same_row = rows[1:] == rows[:-1]
    suspects = _sorted_unique(rows[1:][same_row & (ids[1:] <= ids[:-1])])  # not strictly increasing
    if len(suspects) == 0:
        return suspects
    m = np.isin(rows, suspects)
    keys = np.sort(rows[m].astype(np.int64) * n_cols + ids[m])
    return _sorted_unique(keys[1:][keys[1:] == keys[:-1]] // n_cols)


def _in_ranges(n: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Boolean mask of length ``n``, True on the disjoint ranges ``[starts[i], ends[i])``."""
    marks = np.zeros(n + 1, dtype=np.int8)
    marks[starts] = 1
    marks[ends] -= 1
    return np.cumsum(marks[:-1], dtype=np.int8).view(bool)


def _counts_per_line(pos: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Number of (sorted) positions in each line, ``bounds`` = line starts plus the block end."""
    return np.diff(np.searchsorted(pos, bounds))


_IS_DIGIT = bytes(1 if 48 <= i <= 57 else 0 for i in range(256))
_IS_PUNCT = bytes(0 if 48 <= i <= 57 or i in b" \t\r\n" else 1 for i in range(256))
_ONLY_DIGITS = bytes(i if 48 <= i <= 57 else 32 for i in range(256))
_POW10 = 10.0 ** np.arange(23)
_IPOW10 = 10 ** np.arange(19, dtype=np.int64)
_LAB, _ID, _VINT, _VFRAC, _EXP = 1, 2, 3, 4, 5  # kinds of digit runs
_DOT, _E, _UE, _MINUS, _PLUS = (ord(c) for c in ".eE-+")
_FLT_MAX = float(np.finfo(np.float32).max)


def _shift(a: np.ndarray, k: int, fill) -> np.ndarray:
    """``a`` moved ``k`` places right (``k > 0``) or left, padded with ``fill``."""
    out = np.full_like(a, fill)
    if k > 0:
        out[k:] = a[:-k]
    else:
        out[:k] = a[-k:]
    return out


def _parse_xc_block(block: bytes, first_line: int, n_feat: int, n_lab: int, path):
    """Parse whole lines of the XC body (``block`` ends with a newline; its first line is line
    ``first_line`` of the file).

    Vectorised path: every maximal run of digits is classified by the bytes around it as a label
    id (after a line start or ',', before ',' or whitespace), a feature id (after whitespace or a
    line start, before ':'), or a value's integer part (after ':'), fraction (after '.') or
    exponent (after 'e', 'e-', 'e+'); the runs must chain as the grammar says and a line may hold
    no other punctuation. One ``np.fromstring(dtype=int64)`` reads all runs; a value is
    ``±mantissa * 10**e`` with an integer mantissa of at most 15 digits and ``|e| <= 22``, which
    is the correctly rounded double (as ``strtod`` gives). Other lines (longer mantissas, larger
    exponents, 'nan', '.5e3'...) and lines failing a range or duplicate check are parsed in Python by
    :func:`_parse_xc_line`, which also phrases the errors.

    Returns:
        ``(n_lines, y_counts, y_ids, x_counts, x_ids, x_vals)``: per-line counts, ids and values
        in file order.

    Raises:
        DataFormatError: for the first malformed line of the block.
    """
    buf = np.frombuffer(block, dtype=np.uint8)
    n = len(buf)
    ends = np.flatnonzero(buf == _LF)  # each line's newline
    n_lines = len(ends)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    bounds = np.append(starts, n)

    # digit runs and the bytes around them
    edges = np.flatnonzero(np.diff(np.frombuffer(block.translate(_IS_DIGIT), dtype=np.int8), prepend=np.int8(0)))
    p_start, p_end = edges[0::2], edges[1::2]  # the block ends with '\n', so every run closes
    del edges
    n_p = len(p_start)
    p_len = p_end - p_start
    prev = buf[np.maximum(p_start - 1, 0)]
    if n_p and p_start[0] == 0:
        prev[0] = _LF
    prev2 = buf[np.maximum(p_start - 2, 0)]
    nxt = buf[p_end]
    ws_next = (nxt == _SPACE) | (nxt == _TAB) | (nxt == _CR) | (nxt == _LF)
    e_next = (nxt == _E) | (nxt == _UE)
    kind = np.zeros(n_p, dtype=np.int8)
    kind[((prev == _LF) | (prev == _COMMA)) & (ws_next | (nxt == _COMMA))] = _LAB
    kind[((prev == _SPACE) | (prev == _TAB) | (prev == _LF)) & (nxt == _COLON)] = _ID
    sign_prev = (prev == _MINUS) | (prev == _PLUS)
    v_signed = sign_prev & (prev2 == _COLON)  # '-3.5': a signed value
    kind[((prev == _COLON) | v_signed) & (ws_next | (nxt == _DOT) | e_next)] = _VINT
    kind[(prev == _DOT) & (ws_next | e_next)] = _VFRAC
    e_prev = (prev == _E) | (prev == _UE)
    signed = sign_prev & ((prev2 == _E) | (prev2 == _UE))
    kind[(e_prev | signed) & ws_next] = _EXP
    del ws_next, e_next, prev2, sign_prev

    # chaining: labels joined by single commas from the line start; an id right before its value
    # (':' between); a fraction right after its integer part ('.') or its id (':.'); an exponent
    # right after its mantissa ('e' or 'e-'/'e+')
    k_prev, k_next = _shift(kind, 1, 0), _shift(kind, -1, 0)
    gap_prev = p_start - _shift(p_end, 1, -10)  # 1 + number of bytes since the previous run
    gap_next = _shift(p_start, -1, n + 10) - p_end
    is_lab, is_id = kind == _LAB, kind == _ID
    is_mant = (k_prev == _VINT) | (k_prev == _VFRAC)
    ok = (kind != 0) & (p_len <= 18)
    ok &= ~is_lab | (prev == _LF) | ((k_prev == _LAB) & (gap_prev == 1))
    ok &= ~is_lab | (nxt != _COMMA) | ((k_next == _LAB) & (gap_next == 1))
    ok &= ~is_id | ((k_next == _VINT) & (gap_next == 1 + _shift(v_signed, -1, False))) | \
        ((k_next == _VFRAC) & (gap_next == 2))
    ok &= (kind != _VINT) | ((k_prev == _ID) & (gap_prev == 1 + v_signed))
    ok &= (kind != _VFRAC) | ((k_prev == _VINT) & (gap_prev == 1)) | ((k_prev == _ID) & (gap_prev == 2))
    ok &= (kind != _EXP) | (is_mant & (gap_prev == 1 + signed)) & (p_len <= 3)
    ok &= ~(((kind == _VINT) | (kind == _VFRAC)) & ((nxt == _E) | (nxt == _UE))) | (k_next == _EXP)
    del k_next, gap_next, is_mant

    # per line: no punctuation but the implied (n_labels - 1 commas, one ':' per feature, one
    # '.' per decimal point, 'e' and its sign per exponent)
    y_counts = _counts_per_line(p_start[is_lab], bounds)
    x_counts = _counts_per_line(p_start[is_id], bounds)
    n_sep = ((kind == _VINT) & (nxt == _DOT)) | ((kind == _VFRAC) & (k_prev == _ID))  # each has one '.'
    n_sep = n_sep.astype(np.int8) + (kind == _EXP) + ((kind == _EXP) & signed) + ((kind == _VINT) & v_signed)
    sep_cum = np.append(0, np.cumsum(n_sep, dtype=np.int64))
    implied = np.maximum(y_counts - 1, 0) + x_counts + np.diff(sep_cum[np.searchsorted(p_start, bounds)])
    punct = np.flatnonzero(np.frombuffer(block.translate(_IS_PUNCT), dtype=bool))
    special = _counts_per_line(punct, bounds) != implied
    del punct, implied, n_sep, sep_cum, k_prev, gap_prev
    if not ok.all():
        special[np.searchsorted(ends, p_start[~ok])] = True

    # every run as an integer (runs over 18 digits would overflow: blanked; their lines are special)
    digits = np.frombuffer(block.translate(_ONLY_DIGITS), dtype=np.uint8)
    long_runs = p_len > 18
    if long_runs.any():
        digits = np.where(_in_ranges(n, p_start[long_runs], p_end[long_runs]), np.uint8(_SPACE), digits)
    ints = np.fromstring(digits.tobytes(), dtype=np.int64, sep=" ")
    del digits
    if long_runs.any():
        full = np.zeros(n_p, dtype=np.int64)
        full[~long_runs] = ints
        ints = full
    if len(ints) != n_p:  # pragma: no cover - the run mask and numpy disagree
        raise DataFormatError(path, first_line, "internal error: digit run count mismatch in this block")

    # values: the runs after each id (on lines that chain correctly)
    y_ids = ints[is_lab]
    id_idx = np.flatnonzero(is_id)
    x_ids = ints[id_idx]
    last = max(n_p - 1, 0)
    k = np.minimum(id_idx + 1, last)
    has_int = kind[k] == _VINT
    negative = has_int & v_signed[k] & (prev[k] == _MINUS)
    mant = np.where(has_int, ints[k], 0)
    n_dig = np.where(has_int, p_len[k], 0)
    k = np.where(has_int, np.minimum(k + 1, last), k)
    has_frac = kind[k] == _VFRAC
    flen = np.where(has_frac, p_len[k], 0)
    n_dig += flen
    big = n_dig > 15
    mant = mant * _IPOW10[np.where(big, 0, flen)] + np.where(has_frac, ints[k], 0)
    k = np.where(has_frac, np.minimum(k + 1, last), k)
    has_exp = (kind[k] == _EXP) & (has_int | has_frac)
    expo = np.where(has_exp, np.where(signed[k] & (buf[p_start[k] - 1] == _MINUS), -ints[k], ints[k]), 0) - flen
    big |= np.abs(expo) > 22
    expo = np.where(big, 0, expo)
    x_vals = np.where(expo >= 0, mant * _POW10[np.abs(expo)], mant / _POW10[np.abs(expo)])
    big |= x_vals > _FLT_MAX
    x_vals = np.where(negative, -x_vals, x_vals)
    del ints, mant, k, has_int, has_frac, flen, n_dig, expo, has_exp, kind, nxt, signed, v_signed, prev, negative

    y_rows = np.repeat(np.arange(n_lines), y_counts)
    x_rows = np.repeat(np.arange(n_lines), x_counts)
    special[x_rows[big]] = True
    special[y_rows[y_ids >= n_lab]] = True
    special[x_rows[x_ids >= n_feat]] = True
    special[_repeated_within_rows(y_rows, y_ids, max(n_lab, 1))] = True
    special[_repeated_within_rows(x_rows, x_ids, max(n_feat, 1))] = True

    if special.any():  # parse those lines in Python (raises on the first bad one)
        lines = np.flatnonzero(special)
        parsed = [_parse_xc_line(block[int(starts[i]):int(ends[i])], first_line + int(i), n_feat, n_lab, path)
                  for i in lines]
        keep_y, keep_x = ~special[y_rows], ~special[x_rows]
        s_y = np.array([len(p[0]) for p in parsed], dtype=np.int64)
        s_x = np.array([len(p[1]) for p in parsed], dtype=np.int64)

        def flat(j, dtype, count):
            return np.fromiter((v for p in parsed for v in p[j]), dtype, int(count))

        y_rows = np.concatenate([y_rows[keep_y], np.repeat(lines, s_y)])
        x_rows = np.concatenate([x_rows[keep_x], np.repeat(lines, s_x)])
        y_ids = np.concatenate([y_ids[keep_y], flat(0, np.int64, s_y.sum())])
        x_ids = np.concatenate([x_ids[keep_x], flat(1, np.int64, s_x.sum())])
        x_vals = np.concatenate([x_vals[keep_x], flat(2, np.float64, s_x.sum())])
        y_order, x_order = np.argsort(y_rows, kind="stable"), np.argsort(x_rows, kind="stable")
        y_ids, x_ids, x_vals = y_ids[y_order], x_ids[x_order], x_vals[x_order]
        y_counts = np.bincount(y_rows, minlength=n_lines)
        x_counts = np.bincount(x_rows, minlength=n_lines)
    index_dtype = np.int32 if max(n_feat, n_lab) < 2**31 else np.int64
    return (n_lines, y_counts, y_ids.astype(index_dtype), x_counts, x_ids.astype(index_dtype),
            x_vals.astype(np.float32))


class _Column:
    """A 1-D array filled by appending, grown in place with ``ndarray.resize`` (``realloc``: a
    large array is moved by remapping its pages, so growing never holds two copies of it, and
    the capacity not yet written takes no memory)."""

    FIRST = 1 << 16  # initial capacity (entries)

    def __init__(self, dtype):
        self.a = np.empty(self.FIRST, dtype)
        self.n = 0

    def extend(self, x: np.ndarray) -> None:
        end = self.n + len(x)
        if end > len(self.a):
            self.a.resize(max(end, 2 * len(self.a)), refcheck=False)
        self.a[self.n:end] = x
        self.n = end

    def take(self) -> np.ndarray:
        """The filled part (the array itself, shrunk in place; the column must not be used after)."""
        self.a.resize(self.n, refcheck=False)
        return self.a


def read_xc_header(path) -> tuple[int, int, int]:
    """``(N, F, L)`` from the first line of an Extreme Classification Repository text file.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: the first line is not three non-negative integers.
    """
    with _Decompressed(path) as f:
        return _parse_header(f.readline(), path)


def read_xc(path) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Read a file in the Extreme Classification Repository text format.

    Line 1 is ``N F L``; then one line per point: comma-separated 0-based label ids, a space, and
    space-separated ``feature_id:value`` pairs (a point without labels starts with a space; a line
    whose first field contains ``:`` is also read as a point without labels). Blank lines after
    the ``N`` declared points are ignored; a blank line among them is a point with no labels and
    no features.

    A gzip, bz2 or xz compressed file (recognised by its first bytes, whatever its name) is
    read transparently; a UTF-8 byte order mark before the header is skipped.

    Args:
        path: file path.

    Returns:
        ``(X, Y)``: ``X`` a ``(N, F)`` float32 CSR matrix, ``Y`` a ``(N, L)`` binary float32 CSR
        matrix, both canonical (sorted indices, no duplicates). Explicitly written zero values are
        kept as stored entries of ``X``.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: malformed header, a damaged compressed stream, fewer or more rows than
            declared, a label or feature id
            that is not a non-negative integer or is out of range, an unparsable or non-finite
            value, a duplicate label or feature id within a line; the message names the file and
            the line.
    """
    path = Path(path)
    # per-line counts, then ids and values in file order, appended block by block
    cols = [_Column(np.int64), _Column(np.int32), _Column(np.int64), _Column(np.int32), _Column(np.float32)]
    n_rows = 0
    with _Decompressed(path) as f:
        n, n_feat, n_lab = _parse_header(f.readline(), path)
        carry = b""
        while True:
            chunk = f.read(_BLOCK)
            if chunk:
                data = carry + chunk
                cut = data.rfind(b"\n") + 1
                body, carry = data[:cut], data[cut:]
            else:  # end of file: an unterminated last line, unless it is blank
                body, carry = (carry + b"\n" if carry.strip(b" \t\r") else b""), b""
            if body:
                n_lines, *fields = _parse_xc_block(body, n_rows + 2, n_feat, n_lab, path)
                for col, a in zip(cols, fields):
                    col.extend(a)
                n_rows += n_lines
                del fields
            if not chunk:
                break

    y_counts, x_counts = cols[0].take(), cols[2].take()
    if n_rows > n:  # only blank lines may follow the declared points
        extra = np.flatnonzero((y_counts[n:] > 0) | (x_counts[n:] > 0))
        if len(extra):
            raise DataFormatError(path, n + 2 + int(extra[0]),
                                  f"more rows than the {n} points declared in the header (line 1)")
        y_counts, x_counts = y_counts[:n], x_counts[:n]
    elif n_rows < n:
        raise DataFormatError(path, n_rows + 2, f"unexpected end of file: the header (line 1) declares "
                                                f"{n} points, found {n_rows}")
    y_ids, x_ids, x_vals = cols[1].take(), cols[3].take(), cols[4].take()
    del cols
    X = _csr(x_counts, x_ids, x_vals, n_feat)
    Y = _csr(y_counts, y_ids, np.ones(len(y_ids), np.float32), n_lab)
    return X, Y


def _csr(counts: np.ndarray, ids: np.ndarray, vals: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """CSR matrix from per-row counts and row-major ``ids``/``vals``, indices sorted per row."""
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    if indptr[-1] < 2**31 and n_cols < 2**31:
        indptr = indptr.astype(np.int32)
        ids = ids.astype(np.int32, copy=False)
    M = sp.csr_matrix((vals, ids, indptr), shape=(len(counts), n_cols))
    M.sort_indices()
    return M


def _digit_matrix(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """ASCII digits of non-negative ints, each written with exactly ``widths[i]`` digits (leading
    zeros; width 0 writes nothing), left-aligned in an ``(n, max width)`` uint8 matrix padded
    with 0 bytes."""
    w = int(widths.max()) if len(widths) else 0
    if w == 0:
        return np.zeros((len(values), 0), dtype=np.uint8)
    col = np.arange(w)
    power = np.maximum(widths[:, None] - 1 - col, 0)
    digits = (values[:, None] // _IPOW10[power]) % 10 + ord("0")
    return np.where(col < widths[:, None], digits, 0).astype(np.uint8)


def _n_digits(values: np.ndarray) -> np.ndarray:
    """Number of decimal digits of non-negative ints (1 for 0)."""
    return 1 + np.searchsorted(_IPOW10[1:], values, side="right")


def _column(mask: np.ndarray, byte: int) -> np.ndarray:
    return np.where(mask, np.uint8(byte), np.uint8(0))[:, None]


def _value_matrix(v: np.ndarray) -> np.ndarray:
    """Shortest decimal forms of float32 values that :func:`read_xc` reads back bit for bit, as
    an ``(n, width)`` uint8 matrix of ASCII padded with 0 bytes.

    For each value the fewest significant digits ``p`` (1..9) whose rounding ``m * 10**-q`` gives
    the value back through the reader's own arithmetic (``m / 10**q`` in float64, then float32);
    written positionally (``0.0416``, ``1500``) for decimal exponents in [-5, 15], else as
    ``1.5e-07``. Values needing powers of ten beyond 1e22 fall back to NumPy's shortest repr.
    """
    v = np.asarray(v, dtype=np.float32)
    n = len(v)
    a = np.abs(v.astype(np.float64))
    neg = np.signbit(v)
    m = np.zeros(n, dtype=np.int64)
    q = np.zeros(n, dtype=np.int64)
    todo = a > 0
    with np.errstate(divide="ignore"):
        e10 = np.where(todo, np.floor(np.log10(np.where(todo, a, 1.0))), 0).astype(np.int64)
    for p in range(1, 10):
        idx = np.flatnonzero(todo)
        if len(idx) == 0:
            break
        qq = p - 1 - e10[idx]
        ok_range = np.abs(qq) <= 22
        qc = np.clip(qq, -22, 22)
        scaled = np.where(qc >= 0, a[idx] * _POW10[np.abs(qc)], a[idx] / _POW10[np.abs(qc)])
        mm = np.rint(scaled).astype(np.int64)
        back = np.where(qc >= 0, mm / _POW10[np.abs(qc)], mm * _POW10[np.abs(qc)]).astype(np.float32)
        hit = ok_range & (back == np.abs(v[idx]))
        m[idx[hit]], q[idx[hit]] = mm[hit], qc[hit]
        todo[idx[hit]] = False
    fallback = np.flatnonzero(todo)  # extreme exponents: NumPy's repr, read back by strtod
    while True:  # strip trailing zeros of the mantissa
        z = (m % 10 == 0) & (m > 0)
        if not z.any():
            break
        m = np.where(z, m // 10, m)
        q = np.where(z, q - 1, q)
    nd = _n_digits(m)
    exp10 = nd - 1 - q  # decimal exponent of the leading digit
    sci = (exp10 < -5) | (exp10 > 15)
    # fixed: int part and q fraction digits; scientific: one digit, nd - 1 fraction digits
    frac_w = np.where(sci, nd - 1, np.maximum(q, 0))
    int_part = np.where(sci, m // _IPOW10[np.where(sci, nd - 1, 0)],
                        np.where(q > 0, m // _IPOW10[np.clip(q, 0, 18)], m * _IPOW10[np.clip(-q, 0, 18)]))
    frac = m % _IPOW10[frac_w]
    exp_abs = np.abs(exp10)
    parts = [_column(neg, ord("-")), _digit_matrix(int_part, _n_digits(int_part)), _column(frac_w > 0, ord(".")),
             _digit_matrix(frac, frac_w)]
    if sci.any():
        parts += [_column(sci, ord("e")), _column(sci & (exp10 < 0), ord("-")),
                  _digit_matrix(exp_abs, np.where(sci, _n_digits(exp_abs), 0))]
    out = np.hstack(parts)
    if len(fallback):
        text = np.char.encode(v[fallback].astype(str), "ascii")
        width = max(out.shape[1], text.dtype.itemsize)
        out = np.pad(out, ((0, 0), (0, width - out.shape[1])))
        out[fallback] = 0
        out[fallback, :text.dtype.itemsize] = np.frombuffer(text.tobytes(), np.uint8).reshape(len(fallback), -1)
    return out


def _joined(mat: np.ndarray, sep: int) -> tuple[bytes, np.ndarray]:
    """Rows of a 0-padded byte matrix, each followed by ``sep``, as one bytes object, and the
    end offset of each row (its separator excluded)."""
    mat = np.hstack([mat, np.full((len(mat), 1), sep, dtype=np.uint8)])
    flat = mat.ravel()
    keep = flat != 0
    lengths = keep.reshape(mat.shape).sum(axis=1)
    return flat[keep].tobytes(), np.cumsum(lengths) - 1


def write_xc(path, X, Y, chunk_nnz: int = 1 << 20) -> None:
    """Write ``(X, Y)`` in the Extreme Classification Repository text format, atomically.

    Each value is written with the fewest significant digits that :func:`read_xc` turns back
    into the same float32 (``0.25``, ``1``, ``1.5e-07``), so ``read_xc(path)`` returns exactly
    ``X`` (as float32, sorted indices, stored zeros kept) and ``Y``. Formatting is vectorised
    with NumPy, about ``chunk_nnz`` values at a time. The text goes to a temporary file in the
    same folder, which is fsync'ed and then renamed over ``path``.

    Args:
        path: destination file.
        X: ``(N, F)`` sparse or dense features (finite values).
        Y: ``(N, L)`` sparse or dense binary labels (stored zeros are dropped).
        chunk_nnz: values formatted at a time (bounds the memory used).

    Raises:
        ValueError: ``X`` and ``Y`` have different numbers of rows, ``Y`` is not binary, or ``X``
            has a NaN or infinite value.
    """
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    Y = sp.csr_matrix(Y, copy=True)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
    Y.eliminate_zeros()
    Y.sum_duplicates()
    if not np.all(Y.data == 1):
        raise ValueError("Y must be binary (all stored values 1)")
    X.sum_duplicates()
    if not np.all(np.isfinite(X.data)):
        raise ValueError("X has NaN or infinite values, which the text format cannot hold")
    n = X.shape[0]
    # row chunks of about chunk_nnz stored values (a longer row is a chunk of its own)
    cuts = np.searchsorted(X.indptr, np.arange(0, X.nnz, max(chunk_nnz, 1)), side="right") - 1
    cuts = np.unique(np.concatenate([[0], cuts, [n]]))

    def write(f):
        f.write(f"{n} {X.shape[1]} {Y.shape[1]}\n".encode("ascii"))
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            xs, xe = X.indptr[a], X.indptr[b]
            ids = X.indices[xs:xe].astype(np.int64)
            feats, f_end = _joined(np.hstack([_digit_matrix(ids, _n_digits(ids)),
                                              np.full((xe - xs, 1), _COLON, np.uint8),
                                              _value_matrix(X.data[xs:xe])]), _SPACE)
            ys, ye = Y.indptr[a], Y.indptr[b]
            labs = Y.indices[ys:ye].astype(np.int64)
            labels, l_end = _joined(_digit_matrix(labs, _n_digits(labs)), _COMMA)
            x_cut = np.concatenate([[0], f_end + 1])[X.indptr[a:b + 1] - xs]  # row starts in feats
            y_cut = np.concatenate([[0], l_end + 1])[Y.indptr[a:b + 1] - ys]
            pieces = []
            for i in range(b - a):
                pieces += [labels[y_cut[i]:max(y_cut[i + 1] - 1, y_cut[i])], b" ",
                           feats[x_cut[i]:max(x_cut[i + 1] - 1, x_cut[i])], b"\n"]
            f.write(b"".join(pieces))

    atomic_write(path, write)
# --------------------------------------------------------------------------------------------
# ARFF (Mulan multi-label, Clus-HMC hierarchical)
# --------------------------------------------------------------------------------------------

_ATTRIBUTE = re.compile(r"""@attribute\s+('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)\s*(.*)$""", re.I)


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


def _read_arff(path) -> tuple[list[tuple[str, str, int]], list[str], list[int]]:
    """Split an ARFF file into ``([(attribute name, type, line)], data lines, their line numbers)``.

    Comments (``%``) and blank lines are dropped; names are unquoted; types keep their case.
    """
    attrs, rows, row_lines = [], [], []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("%"):
                continue
            if in_data:
                rows.append(line)
                row_lines.append(i)
            elif line[:1] == "@":
                key = line.split(None, 1)[0].lower()
                if key == "@attribute":
                    m = _ATTRIBUTE.match(line)
                    if m is None or not m.group(2):
                        raise DataFormatError(path, i, f"malformed attribute declaration {line[:80]!r}")
                    attrs.append((_unquote(m.group(1)), m.group(2).strip(), i))
                elif key == "@data":
                    in_data = True
                elif key not in ("@relation",):
                    raise DataFormatError(path, i, f"unknown ARFF declaration {key!r}")
            else:
                raise DataFormatError(path, i, f"unexpected text before @data: {line[:80]!r}")
    if not in_data:
        raise DataFormatError(path, None, "no @data section")
    if not attrs:
        raise DataFormatError(path, None, "no @attribute declarations")
    return attrs, rows, row_lines


def _numeric_arff_type(path, name: str, typ: str, line: int) -> None:
    t = typ.lower()
    if t in ("numeric", "real", "integer"):
        return
    if t.startswith("{") and t.endswith("}"):
        values = [v.strip().strip("'\"") for v in typ[1:-1].split(",")]
        if all(_FLOAT.fullmatch(v) for v in values):
            return
    raise DataFormatError(path, line, f"attribute {name!r} has type {typ!r}; only numeric attributes and "
                                      "nominal ones with numeric values (such as {0,1}) are supported")


def _mulan_label_names(xml_path) -> list[str]:
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DataFormatError(xml_path, exc.position[0], f"malformed XML: {exc}") from None
    names = [el.get("name") for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "label"]
    if not names or any(n is None for n in names):
        raise DataFormatError(xml_path, None, "no <label name=...> elements")
    if len(set(names)) != len(names):
        raise DataFormatError(xml_path, None, "repeated label names")
    return names


def _check_finite(path, line: int, v: str, j: int) -> None:
    """Refuse ``nan``/``inf`` and values beyond float32 (the XC reader refuses them too)."""
    x = float(v)
    if not math.isfinite(x):
        raise DataFormatError(path, line, f"non-finite value {v!r} of attribute {j}")
    if abs(x) > _FLT_MAX:
        raise DataFormatError(path, line, f"value {v!r} of attribute {j} overflows float32")


def _parse_arff_row(path, line: int, text: str, n_attr: int) -> tuple[list[int], list[float]]:
    """``(attribute indices, values)`` of the non-zero entries of one sparse or dense ARFF row."""
    if text.startswith("{"):
        if not text.endswith("}"):
            raise DataFormatError(path, line, "sparse row without closing '}'")
        body = text[1:-1].strip()
        idx, vals, seen = [], [], set()
        for entry in filter(None, (e.strip() for e in body.split(","))) if body else ():
            parts = entry.split()
            if len(parts) != 2 or not _DIGITS.fullmatch(parts[0]):
                raise DataFormatError(path, line, f"sparse entry {entry!r} is not 'index value'")
            j, v = int(parts[0]), parts[1].strip("'\"")
            if j >= n_attr:
                raise DataFormatError(path, line, f"attribute index {j} out of range [0, {n_attr})")
            if j in seen:
                raise DataFormatError(path, line, f"duplicate attribute index {j}")
            if not _FLOAT.fullmatch(v):
                raise DataFormatError(path, line, f"non-numeric value {v!r} of attribute {j}")
            _check_finite(path, line, v, j)
            seen.add(j)
            idx.append(j)
            vals.append(float(v))
        return idx, vals
    fields = [v.strip().strip("'\"") for v in text.split(",")]
    if len(fields) != n_attr:
        raise DataFormatError(path, line, f"dense row has {len(fields)} values, expected {n_attr}")
    idx, vals = [], []
    for j, v in enumerate(fields):
        if not _FLOAT.fullmatch(v):
            raise DataFormatError(path, line, f"non-numeric value {v!r} of attribute {j}")
        _check_finite(path, line, v, j)
        if float(v) != 0:
            idx.append(j)
            vals.append(float(v))
    return idx, vals


def _arff_rows_to_coo(path, rows: list[str], row_lines: list[int], n_attr: int):
    """Row, column and value arrays of the non-zero entries of ARFF data rows."""
    sparse = all(r.startswith("{") for r in rows)
    if sparse and rows:  # vectorised: all '{i v, i v}' bodies in one np.fromstring
        bodies = [r[1:-1] if r.endswith("}") else None for r in rows]
        if None not in bodies and not any("'" in b or '"' in b for b in bodies):
            counts = np.array([b.count(",") + 1 if b.strip() else 0 for b in bodies], dtype=np.int64)
            try:
                nums = np.fromstring(" ".join(bodies).replace(",", " "), dtype=np.float64, sep=" ")
            except ValueError:
                nums = None
            if nums is not None and len(nums) == 2 * counts.sum():
                cols, vals = nums[0::2], nums[1::2]
                rows_idx = np.repeat(np.arange(len(rows)), counts)
                bad = (cols != np.floor(cols)) | (cols < 0) | (cols >= n_attr) | ~np.isfinite(cols) | \
                    ~(np.abs(vals) <= _FLT_MAX)  # NaN fails the comparison too
                keys = rows_idx * n_attr + np.where(bad, 0, cols).astype(np.int64)
                bad_rows = set(rows_idx[bad].tolist())
                uk, cnt = np.unique(keys, return_counts=True)
                bad_rows |= set((uk[cnt > 1] // n_attr).tolist())
                if not bad_rows:
                    return rows_idx, cols.astype(np.int64), vals
                i = min(bad_rows)
                _parse_arff_row(path, row_lines[i], rows[i], n_attr)  # raises the precise error
    r_idx, c_idx, v_all = [], [], []
    for i, (text, line) in enumerate(zip(rows, row_lines)):
        idx, vals = _parse_arff_row(path, line, text, n_attr)
        r_idx.extend([i] * len(idx))
        c_idx.extend(idx)
        v_all.extend(vals)
    return np.asarray(r_idx, np.int64), np.asarray(c_idx, np.int64), np.asarray(v_all, np.float64)


def _common_prefix(names: list[str]) -> str:
    lo, hi = min(names), max(names)
    k = next((i for i, (a, b) in enumerate(zip(lo, hi)) if a != b), min(len(lo), len(hi)))
    return lo[:k]


def _check_no_unlisted_label(arff_path, xml_path, feature_attrs, names: list[str]) -> None:
    """Refuse a feature attribute right before the label block that looks like a label the XML
    omits: every label name shares a prefix of 3+ characters (Mulan's ``TAG_``...) and that
    attribute has it too (an omitted first label would otherwise silently become a feature)."""
    prefix = _common_prefix(names) if len(names) > 1 else ""
    if len(prefix) < 3 or not feature_attrs:
        return
    unlisted = []
    for a_name, _, a_line in reversed(feature_attrs):  # the attributes just before the labels
        if not a_name.startswith(prefix):
            break
        unlisted.append((a_name, a_line))
    if unlisted:
        a_name, a_line = unlisted[-1]
        raise DataFormatError(arff_path, a_line, f"attribute {a_name!r} looks like a label (every label of "
                                                 f"{xml_path} starts with {prefix!r}) but the XML label list "
                                                 f"does not name it ({len(unlisted)} such attribute(s) before the "
                                                 "labels); add it to the XML file or rename it")


def read_mulan_arff(arff_path, xml_path) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Read a Mulan multi-label dataset: an ARFF file (sparse ``{index value, ...}`` or dense
    rows) and the XML file naming its labels.

    The labels are the last ``L`` attributes, ``L`` being the number of labels in the XML file;
    their names must be exactly the XML names. Omitted sparse entries are 0; stored zeros are
    dropped.

    Args:
        arff_path: the ``.arff`` file.
        xml_path: the Mulan ``.xml`` label file.

    Returns:
        ``(X, Y)``: ``(N, F)`` float32 CSR features (the first ``F`` attributes) and ``(N, L)``
        binary float32 CSR labels, sorted indices.

    Raises:
        FileNotFoundError: a missing file.
        DataFormatError: malformed ARFF or XML, label names that are not the last attributes,
            an XML label that is not an ARFF attribute, an attribute just before the labels
            that carries the labels' common name prefix (3+ characters, e.g. ``TAG_``) but is
            not in the XML list (an omitted label), a non-numeric attribute, a non-finite
            (``nan``, ``inf``) or float32-overflowing value, an index out of range, a duplicate
            index, or a label value other than 0/1.
    """
    names = _mulan_label_names(xml_path)
    attrs, rows, row_lines = _read_arff(arff_path)
    n_attr, n_lab = len(attrs), len(names)
    n_feat = n_attr - n_lab
    if n_feat < 0:
        raise DataFormatError(arff_path, None, f"{n_lab} labels in {xml_path} but only {n_attr} attributes")
    tail = [a[0] for a in attrs[n_feat:]]
    attr_line = {a[0]: a[2] for a in attrs}
    absent = [nm for nm in names if nm not in attr_line]
    if absent:
        raise DataFormatError(xml_path, None, f"label {absent[0]!r} of the XML label list is not an attribute of "
                                              f"{arff_path}" + (f" ({len(absent)} such labels)" if len(absent) > 1
                                                                else ""))
    _check_no_unlisted_label(arff_path, xml_path, attrs[:n_feat], names)
    if set(tail) != set(names):
        missing = next((nm for nm in names if nm not in set(tail)), None)
        where = next((a for a in attrs[n_feat:] if a[0] not in set(names)), attrs[n_feat])
        raise DataFormatError(arff_path, where[2], f"the last {n_lab} attributes must be the labels named in "
                                                   f"{xml_path}: attribute {where[0]!r} is not a label"
                                                   + (f" and label {missing!r} is not among them" if missing else ""))
    for name, typ, line in attrs:
        _numeric_arff_type(arff_path, name, typ, line)
    r, c, v = _arff_rows_to_coo(arff_path, rows, row_lines, n_attr)
    nz = v != 0
    r, c, v = r[nz], c[nz], v[nz]
    is_lab = c >= n_feat
    if not np.all(v[is_lab] == 1):
        i = int(r[is_lab][np.argmax(v[is_lab] != 1)])
        raise DataFormatError(arff_path, row_lines[i], "label values must be 0 or 1")
    n = len(rows)
    X = sp.csr_matrix((v[~is_lab].astype(np.float32), (r[~is_lab], c[~is_lab])), shape=(n, n_feat))
    Y = sp.csr_matrix((np.ones(int(is_lab.sum()), np.float32), (r[is_lab], c[is_lab] - n_feat)), shape=(n, n_lab))
    X.sort_indices()
    Y.sort_indices()
    return X, Y


def _hierarchy(path, spec: str, line: int) -> tuple[list[str], list[list[int]], bool]:
    """``(node names, parents, is_dag)`` of a Clus-HMC ``hierarchical`` attribute declaration.

    Tree form: every entry is a path (``01/01/03``) whose prefixes are its ancestors; DAG form
    (every entry ``parent/child``, e.g. Gene Ontology): an edge list, ``root`` being implicit.
    """
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    if not entries:
        raise DataFormatError(path, line, "empty class hierarchy")
    is_dag = all(e.count("/") == 1 for e in entries)
    index: dict[str, int] = {}
    parents: list[list[int]] = []

    def node(name: str) -> int:
        if name not in index:
            index[name] = len(parents)
            parents.append([])
        return index[name]

    if is_dag:
        for e in entries:
            p, c = e.split("/")
            if not p or not c:
                raise DataFormatError(path, line, f"malformed hierarchy edge {e!r}")
            if c == "root":
                raise DataFormatError(path, line, f"edge {e!r} makes 'root' a child")
            ci = node(c)
            if p != "root" and (pi := node(p)) not in parents[ci]:
                parents[ci].append(pi)
    else:
        for e in entries:
            parts = e.split("/")
            if not all(parts):
                raise DataFormatError(path, line, f"malformed hierarchy path {e!r}")
            for d in range(1, len(parts) + 1):
                ci = node("/".join(parts[:d]))
                if d > 1 and not parents[ci]:
                    parents[ci].append(index["/".join(parts[:d - 1])])
    return list(index), parents, is_dag


def topological_order(parents: list[list[int]]) -> list[int]:
    """Kahn's topological order of a DAG given by parent lists (every node after its parents).

    Args:
        parents: ``parents[i]``: the parent ids of node ``i``.

    Returns:
        the node ids, parents first; nodes on (or below) a cycle are missing, so a result
        shorter than ``len(parents)`` means the graph has a cycle.
    """
    children: list[list[int]] = [[] for _ in parents]
    indeg = [len(p) for p in parents]
    for c, ps in enumerate(parents):
        for p in ps:
            children[p].append(c)
    order = [v for v, d in enumerate(indeg) if d == 0]
    for v in order:  # the list grows while we walk it (Kahn)
        for c in children[v]:
            indeg[c] -= 1
            if indeg[c] == 0:
                order.append(c)
    return order


def _topological_order(path, line: int, names: list[str], parents: list[list[int]]) -> list[int]:
    order = topological_order(parents)
    if len(order) != len(parents):
        ordered = set(order)
        stuck = next(v for v in range(len(parents)) if v not in ordered)
        raise DataFormatError(path, line, f"the class hierarchy has a cycle through {names[stuck]!r}")
    return order


def _nominal_values(typ: str) -> list[str] | None:
    """The values of a nominal ARFF type ``{a, b, 'c d'}`` (unquoted), or None for other types."""
    t = typ.strip()
    if not (t.startswith("{") and t.endswith("}")):
        return None
    return [v.strip().strip("'\"") for v in t[1:-1].split(",")]


def _hmc_feature_layout(path, attrs) -> list[tuple[str, list[str] | None]]:
    """``[(attribute name, None for numeric | its nominal values)]`` of the feature attributes."""
    layout = []
    for a_name, a_typ, a_line in attrs:
        if a_typ.lower() in ("numeric", "real", "integer"):
            layout.append((a_name, None))
            continue
        values = _nominal_values(a_typ)
        if values is None or not all(values) or len(set(values)) != len(values):
            raise DataFormatError(path, a_line, f"attribute {a_name!r} has type {a_typ!r}; only numeric and "
                                                "nominal ({a,b,...}, distinct non-empty values) features are "
                                                "supported")
        layout.append((a_name, values))
    return layout


def _hmc_row_features(path, line: int, text: str, layout, width: int) -> list[float]:
    """One row's feature values, nominal ones one-hot (``?``: NaN if numeric, all zeros if nominal)."""
    vals = text.split(",") if layout else []
    if len(vals) != len(layout):
        raise DataFormatError(path, line, f"row has {len(vals) + 1} values, expected {len(layout) + 1}")
    out: list[float] = []
    for (a_name, values), v in zip(layout, vals):
        v = v.strip()
        if values is None:
            if v == "?":
                out.append(math.nan)
                continue
            if not _FLOAT.fullmatch(v):
                raise DataFormatError(path, line, f"unparsable value {v!r} of attribute {a_name!r}")
            x = float(v)
            if not math.isfinite(x):
                raise DataFormatError(path, line, f"non-finite value {v!r} of attribute {a_name!r} (write a "
                                                  "missing value as '?')")
            if abs(x) > _FLT_MAX:
                raise DataFormatError(path, line, f"value {v!r} of attribute {a_name!r} overflows float32")
            out.append(x)
        else:
            v = v.strip("'\"")
            hot = [0.0] * len(values)
            if v != "?":
                try:
                    hot[values.index(v)] = 1.0
                except ValueError:
                    raise DataFormatError(path, line, f"value {v!r} of nominal attribute {a_name!r} is not one "
                                                      f"of its declared values {{{','.join(values)}}}") from None
            out.extend(hot)
    return out


def read_hmc_arff(path) -> tuple[np.ndarray, sp.csr_matrix, list[str], list[list[int]]]:
    """Read a Clus-HMC hierarchical multi-label ARFF file (Vens et al. 2008; the collection used
    by C-HMCNN: the FunCat and GO yeast sets, Diatoms, Enron, ImCLEF07A/D).

    The features are numeric or nominal attributes; a nominal attribute with ``K`` declared
    values becomes ``K`` one-hot columns (in declaration order, as C-HMCNN's ``parse_arff``
    does; a missing nominal value ``?`` is all zeros). The last attribute is declared
    ``hierarchical`` with the hierarchy: either paths (FunCat trees: ``01/01/03`` is a child of
    ``01/01``) or ``parent/child`` edges (Gene Ontology DAGs; the pseudo-node ``root`` is
    dropped). Each data row ends with its classes separated by ``@``; a ``%`` starts a comment.
    The returned label sets are closed under ancestors (a class implies all its ancestors), as
    in C-HMCNN. Labels are numbered in order of first appearance in the declaration.

    Args:
        path: the ``.arff`` file.

    Returns:
        ``(X, Y, label_names, parents)``: ``X`` ``(N, F)`` float32 ndarray (``F`` counts the
        one-hot columns) with NaN for missing numeric values (``?``; impute before use), ``Y``
        ``(N, L)`` binary float32 CSR (sorted indices), the ``L`` node names, and for each label
        the list of its parents' label ids (empty for top-level nodes).

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: no hierarchical last attribute, a feature attribute that is neither
            numeric nor nominal, a cyclic hierarchy, a row with the wrong number of values, an
            unparsable, non-finite (``nan``, ``inf``: write missing values as ``?``) or
            float32-overflowing value, a nominal value not declared, or a class that is not in
            the hierarchy.
    """
    attrs, rows, row_lines = _read_arff(path)
    name, typ, hline = attrs[-1]
    if not typ.lower().startswith("hierarchical"):
        raise DataFormatError(path, hline, f"the last attribute ({name!r}) must be declared 'hierarchical'")
    layout = _hmc_feature_layout(path, attrs[:-1])
    labels, parents, is_dag = _hierarchy(path, typ.split(None, 1)[1] if " " in typ else "", hline)
    order = _topological_order(path, hline, labels, parents)
    closure: list[set[int]] = [set() for _ in labels]  # ancestors-or-self
    for v in order:
        closure[v].add(v)
        for p in parents[v]:
            closure[v] |= closure[p]
    index = {nm: i for i, nm in enumerate(labels)}

    n_attr = len(layout)
    width = sum(1 if vals is None else len(vals) for _, vals in layout)
    feats, y_rows, y_cols = [], [], []
    for i, (text, line) in enumerate(zip(rows, row_lines)):
        text = text.split("%", 1)[0].strip()
        head, sep, classes = text.rpartition(",")
        if not sep and n_attr:
            raise DataFormatError(path, line, f"row has 1 value, expected {n_attr + 1}")
        feats.append(head)
        labs = set()
        for c in classes.strip().strip("'\"").split("@"):
            c = c.strip()
            if not c or c == "?":
                continue
            if c not in index:
                raise DataFormatError(path, line, f"class {c!r} is not in the hierarchy (line {hline})")
            labs |= closure[index[c]]
        y_rows.extend([i] * len(labs))
        y_cols.extend(sorted(labs))
    n = len(rows)
    X = None
    numeric = all(vals is None for _, vals in layout)
    if numeric and n_attr:  # fast path: one np.fromstring; any doubt -> the row-by-row parser below
        joined = ",".join(feats)
        if not re.search(r"[a-df-zA-DF-Z]", joined):  # no 'nan', 'inf' or other words ('e' = exponent)
            try:
                flat = np.fromstring(joined.replace("?", "nan"), dtype=np.float64, sep=",")
            except ValueError:
                flat = None
            if flat is not None and flat.size == n * n_attr and np.all(np.abs(flat[~np.isnan(flat)]) <= _FLT_MAX):
                X = flat.reshape(n, n_attr).astype(np.float32)
    if X is None:
        X = np.asarray([_hmc_row_features(path, line, text, layout, width) for text, line in zip(feats, row_lines)],
                       dtype=np.float64).reshape(n, width).astype(np.float32)
    Y = sp.csr_matrix((np.ones(len(y_rows), np.float32), (y_rows, y_cols)), shape=(n, len(labels)))
    Y.sort_indices()
    return X, Y, labels, parents
