"""Output safety: the one layer every writer of NeARSlicer goes through (CLI, batch, study, Slicer).

Guarantees (the README states them): an input is never modified, and an output appears whole or
not at all.

* :func:`check_outputs` is called **before** any computation. It refuses an output that is one of
  the inputs (same file after resolving ``..``, symlinks and hard links), two outputs that are the
  same file, an existing output unless ``overwrite``, and a missing or unwritable output folder.
* :func:`atomic_path` / :func:`atomic_write` write to a unique temporary file in the target's
  folder (``tempfile.mkstemp``: concurrent writers never share a name), fsync it, then rename it
  onto the target. On any error the temporary file is removed and the target is unchanged.
* :func:`atomic_paths` commits a group of outputs (e.g. mask + probability + report): every file
  is written first; only then are they renamed, and a failure part-way restores the targets.
* :class:`SummaryWriter` adds one CSV row per finished case without truncating earlier rows.
* :func:`locked` serialises the read-modify-write of a file shared by several writers (a running
  batch appending its rows, a reviewer recording decisions in the same ``summary.csv``), so that
  neither rewrite drops what the other has just written.

Temporary names are ``.<name>.<random>.tmp<ext>`` with the target's real extension (``.nii.gz``,
``.seg.nrrd``...), because SimpleITK, pynrrd and Slicer pick the file format from it.
"""
from __future__ import annotations

import contextlib
import csv
import io as _io
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from .errors import InputError

__all__ = ["OutputError", "check_outputs", "check_output_folder", "same_file", "atomic_path", "atomic_paths",
           "atomic_write", "atomic_write_text", "atomic_write_bytes", "SummaryWriter", "summary_columns", "temp_suffix", "locked",
           "remove_temporaries"]

PathLike = Union[str, "os.PathLike[str]"]

# extensions made of several suffixes; anything else keeps its last suffix
_MULTI_EXTS = (".seg.nrrd", ".nii.gz", ".tar.gz", ".csv.gz")


class OutputError(InputError):
    """An output path cannot be written safely (it is an input, exists, or its folder is missing or
    read-only). A subclass of InputError: callers that report bad input report it the same way."""


# ------------------------------------------------------------------------------------ checks
def _key(path: PathLike) -> str:
    """A comparable form of ``path``: absolute, ``..`` and symlinks resolved, case-normalised."""
    return os.path.normcase(os.path.realpath(os.path.abspath(os.fspath(path))))


def same_file(a: PathLike, b: PathLike) -> bool:
    """True if ``a`` and ``b`` name the same file: same resolved path, or (both existing) the same
    inode, which also catches hard links and case-insensitive file systems."""
    if _key(a) == _key(b):
        return True
    try:
        return os.path.samefile(os.fspath(a), os.fspath(b))
    except OSError:  # one of them does not exist
        return False


def _probe_folder(folder: Path) -> None:
    """Create and remove a unique file in ``folder``: the only reliable test that we may write
    there (os.access ignores ACLs, read-only mounts and quotas on some systems)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".nearslicer-probe-", suffix=".tmp", dir=str(folder))
    except OSError as exc:
        raise OutputError(f"cannot write to output folder {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.remove(probe)


def check_output_folder(folder: PathLike, create: bool = False) -> Path:
    """The absolute ``folder``, checked to exist (or created when ``create``) and be writable."""
    folder = Path(os.path.abspath(os.fspath(folder)))
    if create and not folder.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {folder} ({exc.strerror or exc})") from None
    if not folder.exists():
        raise OutputError(f"output folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} is not a folder")
    _probe_folder(folder)
    return folder


def check_outputs(outputs: Sequence[Optional[PathLike]], inputs: Iterable[Optional[PathLike]] = (),
                  overwrite: bool = False, may_exist: Iterable[Optional[PathLike]] = ()) -> List[Path]:
    """Refuse outputs that cannot be written safely; call it before computing anything.

    ``outputs``: files to be written (``None`` entries are skipped). ``inputs``: files that must not
    be touched. An existing output is refused unless ``overwrite`` (or it is listed in
    ``may_exist``: e.g. a checkpoint to resume or a summary to append to). Returns the outputs as
    absolute paths, in order, without the ``None`` entries. Raises :class:`OutputError`.
    """
    outs = [Path(os.path.abspath(os.fspath(o))) for o in outputs if o is not None]
    ins = [os.fspath(i) for i in inputs if i is not None]
    appendable = {_key(p) for p in may_exist if p is not None}
    folders_ok: set = set()
    for n, out in enumerate(outs):
        for inp in ins:
            if same_file(out, inp):
                raise OutputError(f"output {out} is the input {inp}; choose another output path "
                                  "(NeARSlicer never modifies an input)")
        for other in outs[:n]:
            if same_file(out, other):
                raise OutputError(f"two outputs are the same file: {other} and {out}")
        if out.is_dir():
            raise OutputError(f"output {out} is a folder; give a file name")
        if (out.exists() or out.is_symlink()) and not overwrite and _key(out) not in appendable:
            raise OutputError(f"output {out} exists; pass --overwrite to replace it")
        folder = out.parent
        if folder not in folders_ok:
            if not folder.exists():
                raise OutputError(f"output folder {folder} does not exist (for {out.name}); create it first")
            if not folder.is_dir():
                raise OutputError(f"output folder {folder} is not a folder (for {out.name})")
            _probe_folder(folder)
            folders_ok.add(folder)
    return outs


# ----------------------------------------------------------------------------- atomic writes
def temp_suffix(path: PathLike) -> str:
    """The extension a temporary file for ``path`` keeps: ``.nii.gz``, ``.seg.nrrd``, ``.png``..., in
    lower case: ITK's NIfTI writer refuses ``CASE.NII.GZ``, and the rename gives the file its own name."""
    name = os.path.basename(os.fspath(path)).lower()
    for ext in _MULTI_EXTS:
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    return os.path.splitext(name)[1]


def _temp_stem(target: Path) -> tuple:
    """(stem, extension) of the temporary names ``.<stem>.<random>.<tag><ext>`` made for ``target``."""
    ext = temp_suffix(target)
    return (target.name[: len(target.name) - len(ext)] if ext else target.name), ext


def remove_temporaries(path: PathLike) -> int:
    """Remove the temporary files that writes of ``path`` left beside it when their process was
    killed before the rename (a cancelled batch's workers); returns how many. Call it only where no
    other writer of ``path`` runs: its temporary files would go too."""
    target = Path(path)
    stem, ext = _temp_stem(target)
    name = re.compile(rf"\.{re.escape(stem)}\.[A-Za-z0-9_]+\.tmp{re.escape(ext)}")
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(target.parent):
            if name.fullmatch(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)
                    removed += 1
    return removed


def _new_temp(target: Path, tag: str = "tmp") -> str:
    stem, ext = _temp_stem(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".{tag}{ext}", dir=str(target.parent))
    os.close(fd)
    return tmp


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); not possible (nor needed) on every platform."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(str(folder), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _plain_permissions(tmp: str, target: Path) -> None:
    """mkstemp makes 0600 files: give the result the mode of the file it replaces, or what a
    plain open() would give (0666 less the umask)."""
    try:
        mode = stat.S_IMODE(os.stat(str(target)).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    with contextlib.suppress(OSError):
        os.chmod(tmp, mode)


def _umask() -> int:
    """The process umask, read without changing it where possible (setting it, even briefly, would
    affect files other threads create meanwhile, e.g. in Slicer)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _remove(path: Optional[str]) -> None:
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _targets(paths: Sequence[Optional[PathLike]]) -> List[Optional[Path]]:
    out = []
    for p in paths:
        if p is None:
            out.append(None)
            continue
        target = Path(os.path.abspath(os.fspath(p)))
        if not target.parent.is_dir():
            raise OutputError(f"output folder {target.parent} does not exist (for {target.name}); create it first")
        if target.is_dir():
            raise OutputError(f"output {target} is a folder; give a file name")
        out.append(target)
    return out


def _backup(target: Path) -> Optional[str]:
    """A hidden copy of an existing target (a hard link when possible), to restore on failure."""
    if not target.exists():
        return None
    bak = _new_temp(target, "bak")
    try:
        os.remove(bak)
        os.link(str(target), bak)
    except OSError:  # no hard links here (FAT, some network shares): copy instead
        shutil.copy2(str(target), bak)
    return bak


@contextlib.contextmanager
def atomic_paths(paths: Sequence[Optional[PathLike]]) -> Iterator[List[Optional[str]]]:
    """Write a group of files all-or-nothing.

    Yields one temporary path (a ``str`` in the target's folder, with its extension) per entry of
    ``paths`` (``None`` for a ``None`` entry). Write each file to its temporary path inside the
    ``with`` block. On normal exit every temporary file is fsynced and renamed onto its target; if
    the block raises, or a rename fails part-way, no target is created or changed (the renamed
    ones are rolled back) and no temporary file is left behind.
    """
    targets = _targets(paths)
    temps: List[Optional[str]] = []
    for t in targets:
        try:
            temps.append(_new_temp(t) if t is not None else None)
        except OSError as exc:
            for tmp in temps:
                _remove(tmp)
            raise OutputError(f"cannot write to output folder {t.parent} ({exc.strerror or exc})") from None
    try:
        yield list(temps)
        for tmp, t in zip(temps, targets):
            if tmp is not None:
                if not os.path.exists(tmp):
                    raise OutputError(f"nothing was written for {t}")
                _fsync_file(tmp)
                _plain_permissions(tmp, t)
    except BaseException:
        for tmp in temps:
            _remove(tmp)
        raise
    # commit: rename one by one, keeping a backup of each replaced file until all are in place
    done: List[tuple] = []  # (target, backup or None)
    try:
        for tmp, t in zip(temps, targets):
            if tmp is None:
                continue
            bak = _backup(t) if len(temps) > 1 else None  # a lone rename is atomic by itself
            os.replace(tmp, str(t))
            done.append((t, bak))
    except BaseException:
        for t, bak in reversed(done):
            with contextlib.suppress(OSError):
                if bak is not None:
                    os.replace(bak, str(t))
                else:
                    os.remove(str(t))
        for tmp in temps:
            _remove(tmp)
        for _, bak in done:
            _remove(bak)
        raise
    for _, bak in done:
        _remove(bak)
    for folder in {t.parent for t in targets if t is not None}:
        _fsync_folder(folder)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a unique temporary path beside ``path`` (same extension); on normal exit it is fsynced
    and renamed onto ``path``; on an exception it is removed and ``path`` is unchanged."""
    with atomic_paths([path]) as (tmp,):
        yield tmp


def atomic_write(path: PathLike, writer: Callable[[str], None]) -> Path:
    """Run ``writer(tmp)`` (``tmp``: a ``str`` path beside ``path`` with the same extension), then
    rename it onto ``path``. Returns ``path`` as an absolute Path."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(os.path.abspath(os.fspath(path)))


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, write)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (``\\n`` line ends on every platform)."""
    return atomic_write_bytes(path, text.encode(encoding))


# ----------------------------------------------------------------------------- shared files
LOCK_SUFFIX = ".lock"
LOCK_STALE_S = 120.0  # a lock older than this was left by a writer that died (a commit takes milliseconds)


@contextlib.contextmanager
def locked(path: PathLike, timeout_s: float = 30.0) -> Iterator[None]:
    """Hold ``<path>.lock`` while reading, changing and rewriting ``path``.

    The lock is a file created exclusively (``O_CREAT | O_EXCL``: atomic on every platform and on
    network shares, unlike ``fcntl``) that names its holder (``pid@host``). It is taken over when it is
    older than ``LOCK_STALE_S`` or its holder, on this host, is no longer running (a batch killed
    mid-write, as Cancel does, must not block the next run for minutes); a lock that replaced the one
    judged meanwhile is left in place (``_take_over``). Raises :class:`OutputError` after
    ``timeout_s`` seconds of waiting, naming the lock file.
    """
    lock = os.fspath(path) + LOCK_SUFFIX
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                judged = os.stat(lock)
                if time.time() - judged.st_mtime > LOCK_STALE_S or _holder_is_gone(lock):
                    _take_over(lock, judged)
                    continue
            except OSError:  # released meanwhile
                continue
            if time.monotonic() > deadline:
                raise OutputError(f"{path} is being written by another NeARSlicer process (lock file {lock}); "
                                  "if none is running, delete the lock file") from None
            time.sleep(0.02)
    try:
        os.write(fd, f"{os.getpid()}@{socket.gethostname()}".encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock)


def _take_over(lock: str, judged: os.stat_result) -> None:
    """Remove ``lock``, judged stale when its status was ``judged``, unless another process has replaced
    it since (two runs that both found the same dead holder's lock: the first takes it over and creates
    its own, which the second must not remove). The lock is renamed aside (atomic) and put back when it
    is not the file judged."""
    aside = f"{lock}.{os.getpid()}.{time.monotonic_ns()}.stale"
    try:
        os.rename(lock, aside)
    except OSError:  # released, or taken over by another run
        return
    try:
        now = os.stat(aside)
        if (now.st_ino, now.st_dev, now.st_mtime_ns) != (judged.st_ino, judged.st_dev, judged.st_mtime_ns):
            # a fresh lock: its holder keeps it (put back unless yet another lock was created meanwhile)
            try:
                os.link(aside, lock)
            except FileExistsError:
                pass
            except OSError:  # no hard links here (FAT, some network shares)
                if not os.path.exists(lock):
                    os.rename(aside, lock)
    finally:
        with contextlib.suppress(OSError):
            os.remove(aside)


def _holder_is_gone(lock: str) -> bool:
    """True when ``lock`` names a process of this host that no longer runs; False when its holder
    runs, is on another host, or is not written yet (a lock is created, then written)."""
    with open(lock, "rb") as f:
        pid, _, host = f.read(256).decode("utf-8", "replace").partition("@")
    if os.name == "nt" or not pid.strip().isdigit() or host.strip() != socket.gethostname():
        return False  # on Windows os.kill(pid, 0) would signal the process: the age rule stands
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it runs, as another user
        return False
    return False


# ----------------------------------------------------------------------------- summary CSV
def summary_columns(header: Sequence[str], fieldnames: Sequence[str],
                    earlier: Sequence[Sequence[str]] = ()) -> Optional[List[str]]:
    """The columns to rewrite a summary whose file has ``header`` with: ``fieldnames``, then the
    columns others added (a reviewer's ``review``). None when ``header`` starts neither with
    ``fieldnames`` nor with one of the ``earlier`` versions' column lists (not such a summary)."""
    header, fieldnames = list(header), list(fieldnames)
    if not any(header[: len(cols)] == list(cols) for cols in (fieldnames, *earlier)):
        return None
    known = set(fieldnames).union(*map(set, earlier))
    return fieldnames + [c for c in header if c not in known]


class SummaryWriter:
    """A CSV that gets one row per finished case, so an interrupted batch keeps the rows it made.

    * A new file is created at the first row (header + row).
    * An existing file with the same columns is appended to: earlier rows are kept. Columns that
      others added after ours (a reviewer's ``review`` column) are kept, empty in new rows.
    * An existing file with other columns is refused (:class:`OutputError`) unless ``overwrite``.
      One that starts with the columns of an earlier version (``earlier``: column lists whose
      extension ``fieldnames`` is) is appended to: its header gains today's columns at the first row,
      empty in its rows.
    * ``overwrite=True``: the old file stays untouched until the first row, which replaces it.

    Every row is committed by an atomic rewrite of the (small) file, so a crash never leaves a
    half-written row that the next run would append to.
    """

    def __init__(self, path: PathLike, fieldnames: Sequence[str], overwrite: bool = False,
                 earlier: Sequence[Sequence[str]] = ()) -> None:
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.fieldnames = [str(f) for f in fieldnames]
        if not self.fieldnames:
            raise ValueError("SummaryWriter needs at least one column")
        if not self.path.parent.is_dir():
            raise OutputError(f"output folder {self.path.parent} does not exist (for {self.path.name}); create it first")
        self._replace = overwrite
        self._existing: Optional[List[str]] = None  # header of the file we append to
        self._earlier = [[str(f) for f in cols] for cols in earlier]
        if not overwrite and self.path.exists():
            header = self._read_header()
            if header is not None and summary_columns(header, self.fieldnames, self._earlier) is None:
                raise OutputError(f"summary {self.path} has the columns {header}, not {self.fieldnames}; "
                                  "pass --overwrite to replace it or choose another file")
            self._existing = header

    def _read_header(self) -> Optional[List[str]]:
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                return next(csv.reader(f), None)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise OutputError(f"summary {self.path} cannot be read to append to it ({exc})") from None

    def rows(self) -> List[dict]:
        """The rows the file holds now (earlier runs' rows included)."""
        if not self.path.exists() or self._replace:
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def add(self, row: Mapping[str, object]) -> None:
        """Commit one row (keys: the columns; missing keys are written empty)."""
        extra = [k for k in row if k not in self.fieldnames]
        if extra:
            raise ValueError(f"summary row has unknown columns {extra} (columns: {self.fieldnames})")
        with locked(self.path):  # a reviewer may be rewriting the same file
            buf = _io.StringIO()
            old = b""
            columns = self.fieldnames
            if not self._replace and self.path.exists():
                old = self.path.read_bytes()
                if old and not old.endswith(b"\n"):
                    old += b"\n"
                header = self._read_header() if old.strip() else None
                merged = summary_columns(header, columns, self._earlier) if header else None
                if merged is not None and merged != header:
                    # a summary of an earlier version: rewritten once with today's columns first
                    with open(self.path, newline="", encoding="utf-8") as f:
                        rows = list(csv.DictReader(f))
                    upgraded = _io.StringIO()
                    w = csv.DictWriter(upgraded, fieldnames=merged, lineterminator="\n")
                    w.writeheader()
                    for r in rows:
                        w.writerow({k: r.get(k) or "" for k in merged})
                    old = upgraded.getvalue().encode("utf-8")
                if merged is not None:
                    columns = merged  # keep the columns added after ours (e.g. review decisions)
            w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
            if not old.strip():
                old = b""
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in columns})
            atomic_write_bytes(self.path, old + buf.getvalue().encode("utf-8"))
            self._replace = False
