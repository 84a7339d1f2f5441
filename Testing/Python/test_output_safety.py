"""Output safety layer: inputs never modified, outputs whole or absent, no temp files left behind."""
from __future__ import annotations

import csv
import errno
import os
import sys
import threading
import time

import numpy as np
import pytest

from NeARSlicerLib.errors import InputError
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.output_safety import (OutputError, SummaryWriter, atomic_path, atomic_paths, atomic_write,
                                         atomic_write_bytes, atomic_write_text, check_output_folder, check_outputs,
                                         same_file, temp_suffix)

needs_posix_perms = pytest.mark.skipif(sys.platform == "win32" or (hasattr(os, "geteuid") and os.geteuid() == 0),
                                       reason="root (or Windows) ignores folder permissions")


def _files(folder):
    return sorted(os.listdir(folder))


def test_output_equal_to_input_is_refused_in_every_spelling(tmp_path):
    (tmp_path / "sub").mkdir()
    inp = tmp_path / "mask.nii.gz"
    inp.write_bytes(b"original")
    link = tmp_path / "link.nii.gz"
    link.symlink_to(inp)
    hard = tmp_path / "hard.nii.gz"
    os.link(inp, hard)
    for spelling in (inp, str(inp), tmp_path / "sub" / ".." / "mask.nii.gz", link, hard):
        with pytest.raises(OutputError, match="is the input"):
            check_outputs([spelling], [inp], overwrite=True)
    # relative to the current folder, too
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path / "sub")
        with pytest.raises(OutputError, match="is the input"):
            check_outputs(["../mask.nii.gz"], [str(inp)], overwrite=True)
    finally:
        os.chdir(cwd)
    assert inp.read_bytes() == b"original"
    assert same_file(link, inp) and same_file(hard, inp) and not same_file(tmp_path / "other", inp)


def test_two_outputs_that_are_one_file_are_refused(tmp_path):
    with pytest.raises(OutputError, match="two outputs are the same file"):
        check_outputs([tmp_path / "a.nii.gz", tmp_path / "sub" / ".." / "a.nii.gz"], [])


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"previous")
    with pytest.raises(OutputError, match=r"out\.nii\.gz exists; pass --overwrite to replace it"):
        check_outputs([out], [])
    assert check_outputs([out], [], overwrite=True) == [out]
    assert check_outputs([out], [], may_exist=[out]) == [out]
    assert isinstance(OutputError("x"), InputError)  # reported like any bad input (exit code 2)


def test_missing_or_unwritable_folder_is_refused(tmp_path):
    with pytest.raises(OutputError, match=r"output folder .*missing.* does not exist"):
        check_outputs([tmp_path / "missing" / "dir" / "r.png"], [])
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        check_outputs([tmp_path / "file" / "r.png"], [])
    with pytest.raises(OutputError, match="is a folder"):
        check_outputs([tmp_path], [])
    assert check_output_folder(tmp_path / "new" / "deep", create=True).is_dir()
    with pytest.raises(OutputError, match="does not exist"):
        check_output_folder(tmp_path / "absent")
    assert _files(tmp_path) == ["file", "new"]  # the write probe left nothing


@needs_posix_perms
def test_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=r"cannot write to output folder .*ro"):
            check_outputs([ro / "out.nii.gz"], [])
        with pytest.raises(OutputError, match="cannot write"):
            atomic_write_text(ro / "x.txt", "x")
    finally:
        ro.chmod(0o755)
    assert _files(ro) == []


def test_temp_names_keep_the_real_extension():
    assert temp_suffix("a/case.nii.gz") == ".nii.gz"
    assert temp_suffix("case.SEG.NRRD") == ".seg.nrrd"
    assert temp_suffix("r.png") == ".png"
    assert temp_suffix("noext") == ""


def test_an_output_named_in_capitals_is_written_under_its_own_name(tmp_path):
    """ITK writes no NIfTI named CASE.NII.GZ: the temporary file has the lower-case extension and the
    rename gives the output the name asked for. A mixed-case one (Case.Nii.gz), which ITK can neither
    write nor read, is refused with the reason, and nothing is written."""
    from NeARSlicerLib.io import check_output_type, read_mask, write_image, write_mask

    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 2:4, 1:5] = 1
    grid = Grid((4, 5, 6), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    for name in ("CASE.NII.GZ", "case.NII", "CASE.SEG.NRRD", "Case.Nrrd"):
        write_mask(tmp_path / name, mask, grid)
        assert np.array_equal(read_mask(str(tmp_path / name))[0], mask), name
    write_image(tmp_path / "P.NII.GZ", mask.astype(np.float32), grid)
    for call in (lambda: write_mask(tmp_path / "Case.Nii.gz", mask, grid),
                 lambda: check_output_type(tmp_path / "Case.nii.GZ", what="--out")):
        with pytest.raises(InputError, match=r"extension in lower or upper case \(.nii.gz or .NII.GZ\); rename"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CASE.NII.GZ", "CASE.SEG.NRRD", "Case.Nrrd", "P.NII.GZ",
                                                          "case.NII"]


def test_write_failing_half_way_leaves_target_unchanged_and_no_temp(tmp_path):
    out = tmp_path / "out.bin"

    def disk_full(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of it")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(out, disk_full)
    assert _files(tmp_path) == []  # target absent, no temp
    atomic_write_bytes(out, b"complete v1")
    with pytest.raises(OSError, match="No space left"):
        atomic_write(out, disk_full)
    assert out.read_bytes() == b"complete v1"
    assert _files(tmp_path) == ["out.bin"]


def test_atomic_write_keeps_mode_of_replaced_file(tmp_path):
    out = tmp_path / "t.txt"
    atomic_write_text(out, "a")
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o666 & ~umask  # not mkstemp's 0600
    out.chmod(0o640)
    atomic_write_text(out, "b")
    assert out.read_text() == "b" and (out.stat().st_mode & 0o777) == 0o640


def test_concurrent_writers_never_share_a_temp_name(tmp_path):
    seen, lock, barrier = [], threading.Lock(), threading.Barrier(8)
    errors = []

    def work(n):
        try:
            with atomic_path(tmp_path / "same.nii.gz") as tmp:
                with lock:
                    seen.append(tmp)
                barrier.wait(timeout=10)  # all eight temps exist at once
                with open(tmp, "wb") as f:
                    f.write(bytes([n]) * 1000)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(seen)) == 8 and all(s.endswith(".nii.gz") for s in seen)
    data = (tmp_path / "same.nii.gz").read_bytes()
    assert len(data) == 1000 and len(set(data)) == 1  # one writer's whole file, not a mix
    assert _files(tmp_path) == ["same.nii.gz"]


def test_group_commit_is_all_or_nothing(tmp_path):
    a, b, c = tmp_path / "a.nii.gz", tmp_path / "b.nrrd", tmp_path / "c.png"
    b.write_bytes(b"old b")
    # a writer failing after the first file was written: no target created or changed
    with pytest.raises(OSError):
        with atomic_paths([a, None, b, c]) as (ta, tnone, tb, tc):
            assert tnone is None and ta.endswith(".nii.gz") and tb.endswith(".nrrd") and tc.endswith(".png")
            open(ta, "wb").write(b"new a")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert _files(tmp_path) == ["b.nrrd"] and b.read_bytes() == b"old b"

    # a rename failing part-way: the renamed ones are rolled back
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if str(dst).endswith("c.png"):
            raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst)

    import NeARSlicerLib.output_safety as osafe

    osafe.os.replace = flaky_replace
    try:
        with pytest.raises(OSError, match="I/O error"):
            with atomic_paths([a, b, c]) as temps:
                for t, data in zip(temps, (b"A", b"B", b"C")):
                    open(t, "wb").write(data)
    finally:
        osafe.os.replace = real_replace
    assert len(calls) >= 3
    assert _files(tmp_path) == ["b.nrrd"] and b.read_bytes() == b"old b"

    with atomic_paths([a, b, c]) as temps:
        for t, data in zip(temps, (b"A", b"B", b"C")):
            open(t, "wb").write(data)
    assert [p.read_bytes() for p in (a, b, c)] == [b"A", b"B", b"C"]
    assert _files(tmp_path) == ["a.nii.gz", "b.nrrd", "c.png"]


def test_group_commit_refuses_a_temp_the_writer_never_made(tmp_path):
    with pytest.raises(OutputError, match="nothing was written"):
        with atomic_paths([tmp_path / "a.txt"]) as (t,):
            os.remove(t)
    assert _files(tmp_path) == []


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_appends_rows_as_cases_finish(tmp_path):
    path = tmp_path / "summary.csv"
    w = SummaryWriter(path, ["case", "dice"])
    assert not path.exists()  # nothing written before the first case finishes
    w.add({"case": "a", "dice": 0.9})
    assert _read(path) == [{"case": "a", "dice": "0.9"}]
    w.add({"case": "b"})
    assert _read(path) == [{"case": "a", "dice": "0.9"}, {"case": "b", "dice": ""}]

    # a second run keeps the earlier rows
    w2 = SummaryWriter(path, ["case", "dice"])
    assert [r["case"] for r in w2.rows()] == ["a", "b"]
    w2.add({"case": "c", "dice": 0.5})
    assert [r["case"] for r in _read(path)] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="unknown columns"):
        w2.add({"case": "d", "nsd": 1})
    assert [r["case"] for r in _read(path)] == ["a", "b", "c"]
    assert _files(tmp_path) == ["summary.csv"]


def test_summary_with_other_columns_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("name,score\nx,1\n")
    before = path.read_bytes()
    with pytest.raises(OutputError, match=r"has the columns \['name', 'score'\].*--overwrite"):
        SummaryWriter(path, ["case", "dice"])
    w = SummaryWriter(path, ["case", "dice"], overwrite=True)
    assert path.read_bytes() == before  # not truncated up front
    w.add({"case": "a", "dice": 1})
    w.add({"case": "b", "dice": 0})
    assert _read(path) == [{"case": "a", "dice": "1"}, {"case": "b", "dice": "0"}]


def test_summary_appends_after_a_file_without_final_newline(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("case,dice\na,1")
    SummaryWriter(path, ["case", "dice"]).add({"case": "b", "dice": 2})
    assert _read(path) == [{"case": "a", "dice": "1"}, {"case": "b", "dice": "2"}]


def test_unwritable_folder_refused_even_as_root(tmp_path, monkeypatch):
    """Root ignores folder modes; a refused file creation (read-only mount, ACL) is what the probe sees."""
    import NeARSlicerLib.output_safety as osafe

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(osafe.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match=r"cannot write to output folder .* \(Permission denied\)"):
        check_outputs([tmp_path / "out.nii.gz"], [])
    with pytest.raises(OutputError, match=rf"cannot write to output folder {tmp_path} \(Permission denied\)"):
        atomic_write_text(tmp_path / "x.txt", "x")
    assert _files(tmp_path) == []


def test_summary_keeps_a_review_column_added_after_its_own(tmp_path):
    """A reviewer's decisions (a trailing ``review`` column) survive a resumed batch appending rows."""
    path = tmp_path / "summary.csv"
    path.write_text("case,dice,review\na,0.9,accepted\n")
    w = SummaryWriter(path, ["case", "dice"])
    w.add({"case": "b", "dice": 0.8})
    assert path.read_text() == "case,dice,review\na,0.9,accepted\nb,0.8,\n"
    assert [r["review"] for r in w.rows()] == ["accepted", ""]


def test_a_locked_file_waits_for_its_writer_and_a_dead_writers_lock_is_taken_over(tmp_path):
    from NeARSlicerLib.output_safety import LOCK_STALE_S, locked

    path = tmp_path / "summary.csv"
    lock = tmp_path / "summary.csv.lock"
    order = []

    def second_writer():
        with locked(path, timeout_s=10):
            order.append("second")

    with locked(path):
        assert lock.is_file()
        with pytest.raises(OutputError, match=r"being written by another NeARSlicer process \(lock file .*summary.csv.lock\)"):
            with locked(path, timeout_s=0.1):
                pass
        t = threading.Thread(target=second_writer)
        t.start()
        time.sleep(0.2)
        order.append("first")
    t.join(10)
    assert order == ["first", "second"] and not lock.exists()
    # a writer that died left its lock: after LOCK_STALE_S it is taken over
    lock.write_text("12345")
    old = time.time() - LOCK_STALE_S - 1
    os.utime(lock, (old, old))
    with locked(path, timeout_s=0.5):
        pass
    assert not lock.exists()


@pytest.mark.skipif(os.name == "nt", reason="on Windows a lock is only taken over by its age")
def test_a_fresh_lock_of_a_killed_writer_on_this_host_is_taken_over_at_once(tmp_path):
    """A batch killed while it wrote a row (Cancel kills the engine) leaves a fresh lock: the next run
    takes it over at once when its holder no longer runs here, and still waits for a live holder or
    one on another host."""
    import socket
    import subprocess
    import sys

    from NeARSlicerLib.output_safety import locked

    path = tmp_path / "summary.csv"
    lock = tmp_path / "summary.csv.lock"
    with locked(path):
        assert lock.read_text() == f"{os.getpid()}@{socket.gethostname()}"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs
    host = socket.gethostname()
    for holder, taken in ((f"{gone.pid}@{host}", True), (f"{os.getpid()}@{host}", False),
                          (f"{gone.pid}@another-host.example", False), ("", False)):
        lock.write_text(holder)
        if taken:
            with locked(path, timeout_s=0.5):
                pass
            assert not lock.exists()
        else:
            with pytest.raises(OutputError, match="being written by another NeARSlicer process"):
                with locked(path, timeout_s=0.2):
                    pass
            assert lock.read_text() == holder


def test_a_summary_of_an_earlier_version_is_appended_to_with_todays_columns(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("case,dice,review\na,0.9,accepted\n")  # an earlier version's columns, a reviewer's column
    with pytest.raises(OutputError, match="has the columns"):
        SummaryWriter(path, ["case", "dice", "nsd"])
    w = SummaryWriter(path, ["case", "dice", "nsd"], earlier=[["case", "dice"]])
    assert path.read_text() == "case,dice,review\na,0.9,accepted\n"  # nothing changes before the first row
    w.add({"case": "b", "dice": 0.8, "nsd": 0.7})
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == ["case", "dice", "nsd", "review"]
    assert _read(path) == [{"case": "a", "dice": "0.9", "nsd": "", "review": "accepted"},
                           {"case": "b", "dice": "0.8", "nsd": "0.7", "review": ""}]
    w.add({"case": "c"})
    assert [r["case"] for r in _read(path)] == ["a", "b", "c"]


@pytest.mark.skipif(os.name == "nt", reason="on Windows a lock is only taken over by its age")
def test_a_lock_that_replaced_the_dead_writers_one_is_not_removed(tmp_path, monkeypatch):
    """Two runs find the same dead writer's lock; the first takes it over and creates its own. The
    second, which judged the old lock stale, must not remove the first one's: it waits for it."""
    import socket
    import subprocess
    import sys

    import NeARSlicerLib.output_safety as output_safety

    path = tmp_path / "summary.csv"
    lock = tmp_path / "summary.csv.lock"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs
    dead, first_run = f"{gone.pid}@{socket.gethostname()}", f"{os.getpid()}@{socket.gethostname()}"
    lock.write_text(dead)
    judge = output_safety._holder_is_gone

    def meanwhile(name):
        verdict = judge(name)
        if lock.read_text() == dead:
            # between this run's judgement and its takeover, another run took the lock over and holds it
            lock.unlink()
            lock.write_text(first_run)
        return verdict

    monkeypatch.setattr(output_safety, "_holder_is_gone", meanwhile)
    with pytest.raises(OutputError, match="being written by another NeARSlicer process"):
        with output_safety.locked(path, timeout_s=0.3):
            pass
    assert lock.read_text() == first_run
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv.lock"]  # nothing left aside


def test_remove_temporaries_takes_only_the_killed_writes_of_that_output(tmp_path):
    """What a killed worker leaves: ``.<name>.<random>.tmp<ext>`` beside its output. Only those go;
    the output itself, another output's temporaries and a user's hidden files stay."""
    import tempfile

    from NeARSlicerLib.output_safety import remove_temporaries

    left = [tempfile.mkstemp(prefix=".c1.", suffix=".tmp.nii.gz", dir=tmp_path)[1] for _ in range(2)]
    kept = ["c1.nii.gz", ".c10.abcd1234.tmp.nii.gz", ".c1.abcd1234.tmp.seg.nrrd", ".c1.notes", "c1.abcd1234.tmp.nii.gz"]
    for name in kept:
        (tmp_path / name).write_text("x")
    assert remove_temporaries(tmp_path / "c1.nii.gz") == 2
    assert not any(os.path.exists(p) for p in left)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
