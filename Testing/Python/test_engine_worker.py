"""The engine in a worker process (``engine_worker`` + ``worker_client``): same results as in-process,
kept warm, cancel and crash within bounds, clear one-line errors, idle exit."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from NeARSlicerLib.bench import identity_grid
from NeARSlicerLib.distort import distort
from NeARSlicerLib.errors import Cancelled, InputError
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.refine import RefineOptions, refine_mask
from NeARSlicerLib.worker_client import PACKAGE_PARENT, EngineError, EngineProcess, EngineStopped

# long enough to be stopped mid-run on any device: 8 mirrored views x 400 fitting steps
LONG_JOB = {"preset": "quality", "steps": 400}


@pytest.fixture(scope="module")
def case():
    mask = distort(adrenal_phantom(0), seed=1)
    return mask, identity_grid(mask.shape)


@pytest.fixture(scope="module")
def engine():
    process = EngineProcess(idle_timeout_s=600)
    yield process
    process.close()


def _wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _start_long_job(engine: EngineProcess, case) -> None:
    """Submit LONG_JOB and return once the worker reports that fitting has begun."""
    engine.submit_refine(*case, options=LONG_JOB)
    _wait_until(lambda: engine.poll().fraction > 0.05 or engine.poll().done, 240, "the fitting to start")
    assert not engine.poll().done, engine.poll().error


def _job_folders(engine: EngineProcess) -> list:
    return sorted(p.name for p in engine.log_path.parent.glob("job-*"))


def test_worker_result_equals_in_process_refinement(engine, case):
    mask, grid = case
    options = {"preset": "default", "seed": 3}
    expected = refine_mask(mask, grid, None, RefineOptions(**options))
    got = engine.refine(mask, grid, options=options)
    assert np.array_equal(got.mask, expected.mask), "same seed, same device: the same refined mask"
    np.testing.assert_allclose(got.probability, expected.probability, atol=1e-6)
    assert np.array_equal(got.added, expected.added) and np.array_equal(got.removed, expected.removed)
    assert got.info["steps"] == expected.info["steps"] == 5 and got.info["flips"] == 4
    assert got.warnings == expected.warnings
    assert _job_folders(engine) == [], "a finished job's files are removed"


def test_second_job_on_a_warm_worker_is_faster(case):
    mask, grid = case
    with EngineProcess(idle_timeout_s=600) as engine:
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            engine.refine(mask, grid, options={"preset": "fast"})
            times.append(time.perf_counter() - t0)
        pid = engine.pid
        engine.refine(mask, grid, options={"preset": "fast"})
        assert engine.pid == pid, "the worker is reused between jobs"
    # the first job pays for starting Python, importing torch and loading the prior
    assert times[1] < times[0], times


def test_input_error_comes_back_as_its_one_line_message(engine, case):
    mask, grid = case
    engine.refine(mask, grid, options={"preset": "fast"})
    pid = engine.pid
    with pytest.raises(InputError) as info:
        engine.refine(np.zeros_like(mask), grid, options={"preset": "fast"})
    assert str(info.value) == "mask is empty: nothing to refine"
    with pytest.raises(InputError, match=r"^unknown preset 'turbo': use one of fast, default, quality$"):
        engine.refine(mask, grid, options={"preset": "turbo"})
    assert engine.pid == pid and engine.running, "an error ends the job, not the worker"


def test_a_job_handle_reads_its_own_result_after_a_newer_job(engine, case):
    mask, grid = case
    first = engine.submit_refine(mask, grid, options={"preset": "fast"})
    engine.wait(job=first, timeout=240)
    second = engine.submit_refine(np.zeros_like(mask), grid, options={"preset": "fast"})
    while not engine.poll(second).done:
        time.sleep(0.02)
    assert engine.poll(first).done and engine.result(first).mask.any()
    with pytest.raises(InputError, match="mask is empty"):
        engine.result(second)


def test_a_failure_inside_the_engine_is_one_line(engine, case):
    """refine_mask's own RefinementError comes back as itself; the traceback stays in the worker's log."""
    from NeARSlicerLib.errors import RefinementError

    mask, grid = case
    with pytest.raises(RefinementError) as info:
        engine.refine(mask, grid, options={"preset": "fast", "prior": "adrenal", "margin_mm": "wide"})
    text = str(info.value)
    assert text.startswith("refinement failed inside the engine: TypeError: ") and "\n" not in text
    assert "Traceback" in engine.log_path.read_text(), "the traceback goes to the worker's log"
    assert engine.refine(mask, grid, options={"preset": "fast"}).mask.any(), "the worker serves the next job"


def test_an_unexpected_exception_outside_refine_mask_is_one_line_internal_error(engine, case, tmp_path):
    """An unknown study option fails in the worker's own code, before the engine: one line, no traceback."""
    from NeARSlicerLib.study import StudyCase

    mask, grid = case
    with pytest.raises(InputError, match=r"^unknown study option: .*'epochz'"):
        engine.study([StudyCase("a", mask, grid)], None, {"epochz": 3})
    # a study whose case list names a file that is not there: an internal error of the worker, one line
    job = engine._new_job("study")
    job.request.update(cases=[{"name": "a", "grid": {}, "file": "missing.npz"}], config={})
    engine._launch(job)
    with pytest.raises(EngineError) as info:
        engine.wait(job=job, timeout=120)
    text = str(info.value)
    assert text.startswith("internal error: FileNotFoundError: ") and "\n" not in text and "Traceback" not in text


def test_cancel_mid_run_stops_the_worker_within_2_s(case):
    with EngineProcess(idle_timeout_s=600) as engine:
        _start_long_job(engine, case)
        process = engine._proc
        t0 = time.perf_counter()
        engine.cancel()
        elapsed = time.perf_counter() - t0
        assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
        assert process.poll() is not None, "the worker process is gone"
        status = engine.poll()
        assert status.done and status.cancelled
        with pytest.raises(Cancelled):
            engine.result()
        assert _job_folders(engine) == [], "the cancelled job's files are removed"
        assert engine.refine(case[0], case[1], options={"preset": "fast"}).mask.any(), "a new worker starts"


def test_what_the_worker_says_while_a_job_is_cancelled_is_the_cancel(case, monkeypatch):
    """Cancelled at once (Slicer's Cancel as a job starts), the worker can find its input removed and
    report that ("internal error: FileNotFoundError ... input.npz") before the cancel has ended the job:
    the job is still cancelled (seen in CI: the Slicer logic's cancel test, once in three runs)."""
    import shutil

    with EngineProcess(idle_timeout_s=600) as engine:
        job = engine.submit_refine(*case, options=LONG_JOB)
        remove, said = shutil.rmtree, []

        def removed_then_the_worker_speaks(path, *args, **kwargs):
            remove(path, *args, **kwargs)
            if str(path) == str(job.folder) and not said:  # the reader thread's turn, as in the race
                said.append(True)
                engine._end(job, error=EngineError("internal error: FileNotFoundError: input.npz"))

        monkeypatch.setattr(shutil, "rmtree", removed_then_the_worker_speaks)
        engine.cancel(job)
        monkeypatch.undo()
        assert said and engine.poll(job).cancelled
        with pytest.raises(Cancelled):
            engine.result(job)


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_killed_worker_gives_a_clear_message_and_the_next_job_works(case):
    with EngineProcess(idle_timeout_s=600) as engine:
        _start_long_job(engine, case)
        killed = engine.pid
        os.kill(killed, signal.SIGKILL)
        with pytest.raises(EngineStopped) as info:
            engine.wait(timeout=30)
        text = str(info.value)
        assert text.startswith("the refinement engine stopped unexpectedly (exit code -9: it was killed, often "
                               "because the system ran out of memory). Nothing was changed"), text
        assert info.value.exit_code == -9
        assert _job_folders(engine) == []
        result = engine.refine(case[0], case[1], options={"preset": "fast"})
        assert result.mask.any() and engine.pid != killed


def test_idle_worker_exits_and_restarts_on_the_next_job(case):
    with EngineProcess(idle_timeout_s=2.0) as engine:
        engine.submit_warm({"appearance": False})
        engine.wait(timeout=240)
        process = engine._proc
        _wait_until(lambda: process.poll() is not None, 30, "the idle worker to exit")
        assert process.returncode == 0
        assert "idle for 2 s: exiting to release memory" in engine.log_path.read_text()
        assert engine.refine(case[0], case[1], options={"preset": "fast"}).mask.any()
        assert engine._proc is not process


def test_missing_python_is_a_clear_error(case, tmp_path):
    engine = EngineProcess(python=str(tmp_path / "no-such-python"))
    with pytest.raises(EngineError, match="could not start the refinement engine with .*no-such-python"):
        engine.refine(case[0], case[1], options={"preset": "fast"})
    engine.close()


def test_study_through_the_worker_equals_in_process(engine, case, tmp_path):
    from NeARSlicerLib.study import StudyCase, StudyConfig, run_study

    second = distort(adrenal_phantom(1), seed=2)
    cases = [StudyCase("a", case[0], case[1]), StudyCase("b", second, identity_grid(second.shape))]
    config = {"recipe": "fast", "epochs": 2, "points": 1024, "seed": 5}
    expected = run_study(cases, None, StudyConfig.for_recipe("fast", epochs=2, points=1024, seed=5))
    got = engine.study(cases, None, config, prior_out=str(tmp_path / "study.safetensors"))
    assert got.names == ["a", "b"] and got.steps == expected.steps
    for m_got, m_expected in zip(got.masks, expected.masks):
        assert np.array_equal(m_got, m_expected)
    assert (tmp_path / "study.safetensors").is_file() and (tmp_path / "study.json").is_file()


def test_study_structures_reach_the_worker(engine, case, tmp_path):
    """Each case's structure travels to the engine, whose --prior auto refuses a study that mixes an
    adrenal gland with another structure (one study per prior), naming the cases."""
    from NeARSlicerLib.study import StudyCase

    cases = [StudyCase("gland", case[0], case[1], structure="adrenal gland"),
             StudyCase("other", case[0], case[1], structure="spleen")]
    with pytest.raises(Exception, match=r"different priors: the adrenal-s prior for 1 case\(s\) \(gland\)"):
        engine.study(cases, None, {"recipe": "fast", "epochs": 0}, prior_out=str(tmp_path / "study.safetensors"))
    assert not (tmp_path / "study.safetensors").exists()
    # split by prior (Slicer's study mode): one study per prior, each case's result in the order given
    outcome = engine.study(cases, None, {"recipe": "fast", "epochs": 0}, prior_out=str(tmp_path / "study.safetensors"),
                           split_by_prior=True)
    assert outcome.names == ["gland", "other"] and len(outcome.masks) == 2
    assert all(m.shape == case[0].shape for m in outcome.masks)
    studies = outcome.info["studies"]
    assert [(s["label"], s["cases"]) for s in studies] == [("adrenal-s", ["gland"]), ("anatomy-s", ["other"])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study-adrenal-s.json", "study-adrenal-s.safetensors",
                                                          "study-anatomy-s.json", "study-anatomy-s.safetensors"]
    # again: the priors exist, so nothing is trained or replaced without overwrite
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(Exception, match="study-adrenal-s.safetensors exists"):
        engine.study(cases, None, {"recipe": "fast", "epochs": 0}, prior_out=str(tmp_path / "study.safetensors"),
                     split_by_prior=True)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_protocol_stdout_is_json_only_and_pickle_is_refused(tmp_path):
    """The worker run by hand: every stdout line is a message; an object array (pickle) is refused;
    closing stdin ends the worker."""
    bad = tmp_path / "job"
    bad.mkdir()
    np.savez(bad / "input.npz", mask=np.array([{"a": 1}], dtype=object))  # needs pickle to load
    requests = [
        {"id": 1, "cmd": "refine", "dir": str(bad), "grid": {}, "options": {}},
        {"id": 2, "cmd": "explode"},
    ]
    bootstrap = (f"import sys; sys.path.insert(0, {str(PACKAGE_PARENT)!r}); "
                 "from NeARSlicerLib.engine_worker import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", bootstrap, "--idle-timeout", "60"],
                          input="".join(json.dumps(r) + "\n" for r in requests).encode(),
                          capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    messages = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert messages[0]["type"] == "ready" and messages[0]["pid"] > 0
    errors = {m["id"]: m for m in messages if m.get("type") == "error"}
    assert errors[1]["kind"] == "InternalError" and "allow_pickle=False" in errors[1]["message"]
    assert errors[2]["message"] == "internal error: ValueError: unknown request 'explode'"
    assert b"input closed: exiting" in done.stderr


def test_client_imports_neither_torch_nor_the_engine():
    code = ("import sys; sys.path.insert(0, %r); import NeARSlicerLib.worker_client; "
            "print(sorted(m for m in ('torch', 'scipy', 'SimpleITK') if m in sys.modules))" % str(PACKAGE_PARENT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_each_study_case_s_image_voxel_reaches_the_worker(engine, case, tmp_path):
    """StudyCase.image_voxel_mm (set per case by Slicer's study of an oversampled segmentation) travels to
    the engine, which checks it before anything trains."""
    from NeARSlicerLib.study import StudyCase

    cases = [StudyCase("fine", case[0], case[1], image_voxel_mm=-3.0)]
    with pytest.raises(Exception, match=r"case fine: image_voxel_mm .* got -3\.0"):
        engine.study(cases, None, {"recipe": "denoise", "epochs": 0}, prior_out=str(tmp_path / "study.safetensors"))
    assert not (tmp_path / "study.safetensors").exists()


def _lesion_in_soft_tissue():
    """(mask, CT, grid): a 40 mm lesion deep in soft tissue (2 mm), a box with no air or fat; read alone it
    is not a CT."""
    from NeARSlicerLib.geometry import Grid
    from soft_tissue_lesion import lesion_in_soft_tissue

    shape = (40, 40, 40)
    return (*lesion_in_soft_tissue(shape), Grid(shape, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))


def test_the_whole_scans_facts_reach_the_worker(engine):
    """A crop held by the application (Slicer's box around a segment) travels with its whole scan's
    ``ScanFacts``: the worker reads it as CT, as refine_mask does in-process with them, for a refinement
    and for each case of a study."""
    from NeARSlicerLib.modality import CT, ModalityGuess, ScanFacts, detect
    from NeARSlicerLib.study import StudyCase

    mask, ct, grid = _lesion_in_soft_tissue()
    assert detect(ct).modality != CT, "the premise: the crop alone is not read as CT"
    whole = ScanFacts(ModalityGuess(CT, "intensities", "air/fat and soft tissue at Hounsfield values"), -1024.0)
    assert ScanFacts.from_dict(whole.to_dict()) == whole
    options = {"preset": "fast", "structure": "lesion"}
    expected = refine_mask(mask, grid, ct, RefineOptions(**options), scan=whole)
    assert expected.info["modality"] == CT and expected.info["image_margin_mm"] is not None
    got = engine.refine(mask, grid, ct, options=options, scan=whole)
    assert got.info["modality"] == CT and np.array_equal(got.mask, expected.mask)
    assert engine.refine(mask, grid, ct, options=options).info["modality"] != CT, "without them: misread"
    study = engine.study([StudyCase("lesion", mask, grid, ct, structure="lesion", scan=whole)], None,
                         {"recipe": "denoise", "epochs": 1, "refine_preset": "fast"})
    assert study.case_info[0]["modality"] == CT
