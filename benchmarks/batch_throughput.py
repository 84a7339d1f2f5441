"""Throughput of batch refinement (not a test): run with the project's venv,

    .venv/bin/python benchmarks/batch_throughput.py [--cases 24] [--preset default] [--json out.json]

The same ``--cases`` phantom cases (adrenal-like gland + synthetic CT, 64^3 voxels of 1 mm, S+A
refinement with the shipped prior) are refined by:

* a shell loop of ``nearslicer refine`` (one process per case: start-up, import, prior load each time);
* ``nearslicer batch --workers 1`` and ``--workers 2`` (a local process pool);
* ``nearslicer batch --ray`` on a Ray cluster of two simulated one-CPU nodes on this machine
  (``ray.cluster_utils.Cluster``; skipped when Ray is not installed).

For each: wall time and cases/min (start-up included), the steady per-case time (between the first
and the last finished case, from the summary's growth), and the peak RSS of every process
(``VmHWM`` from /proc, Linux), reported per worker. The masks of every run are checked to be
identical. One worker's time on a full-size case (a 512 x 512 x 300 CT: read, refine, write) gives
the per-case cost of the worked estimate of the wall time for 20,000 CTs on k workers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "NeARSlicer"))

from NeARSlicerLib.geometry import Grid  # noqa: E402
from NeARSlicerLib.io import read_mask, write_image, write_mask  # noqa: E402
from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "NeARSlicer")}
NEARSLICER = [sys.executable, "-m", "NeARSlicerLib.cli"]
PRIOR = "adrenal"  # the cases are adrenal glands: the adrenal pair, S+A with the CT (as --structure would pick)


def make_cases(folder: Path, n: int) -> Path:
    """``n`` cases ``cK.nii.gz`` (CT) + ``cK_seg.nii.gz`` and a manifest; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = Grid((64, 64, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    lines = ["case,mask,image,label"]
    for k in range(n):
        mask = adrenal_phantom(seed=1000 + k)
        write_mask(str(folder / f"c{k}_seg.nii.gz"), mask, grid)
        write_image(str(folder / f"c{k}.nii.gz"), ct_phantom(mask, seed=1000 + k), grid)
        lines.append(f"c{k},{folder / f'c{k}_seg.nii.gz'},{folder / f'c{k}.nii.gz'},")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


# ------------------------------------------------------------------------------ process memory
def _children() -> dict:
    """{pid: ppid} of every process (Linux /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _peak_rss_mb(pid: int):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class MemorySampler:
    """Peak RSS of the processes under ``root`` (or matching ``match`` in their command line)."""

    def __init__(self, root: int, match: str = ""):
        self.root, self.match, self.peaks, self.names = root, match, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            parents = _children()
            tree, grew = {self.root}, True
            while grew:
                new = {p for p, pp in parents.items() if pp in tree and p not in tree}
                tree |= new
                grew = bool(new)
            if self.match:
                tree = {p for p in parents if self.match in _cmdline(p)}
            for pid in tree:
                if pid == os.getpid():
                    continue
                rss = _peak_rss_mb(pid)
                if rss is not None:
                    self.peaks[pid] = max(rss, self.peaks.get(pid, 0.0))
                    # a spawned worker's command line is empty until exec finishes: keep the latest one
                    self.names[pid] = _cmdline(pid)[:120] or self.names.get(pid, "")
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def watch_summary(summary: Path, stop: threading.Event, times: list) -> None:
    """Times at which the summary gained rows (one per finished case here)."""
    seen = 0
    while not stop.is_set():
        try:
            n = max(0, len(summary.read_text().splitlines()) - 1)
        except OSError:
            n = 0
        now = time.perf_counter()
        times.extend([now] * (n - seen))
        seen = max(seen, n)
        time.sleep(0.05)


def steady_per_case(times: list) -> float:
    return (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else float("nan")


# ------------------------------------------------------------------------------ the runs
def run_shell_loop(cases: Path, out: Path, n: int, preset: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    script = "set -e\n" + "\n".join(
        " ".join(shlex.quote(a) for a in NEARSLICER + [
            "refine", "--mask", str(cases / f"c{k}_seg.nii.gz"), "--image", str(cases / f"c{k}.nii.gz"),
            "--out", str(out / f"c{k}.nii.gz"), "--preset", preset, "--prior", PRIOR]) + " >/dev/null" for k in range(n))
    t0 = time.perf_counter()
    proc = subprocess.Popen(["bash", "-c", script], env=ENV)
    with MemorySampler(proc.pid) as mem:
        proc.wait()
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, "the shell loop failed"
    peaks = [v for p, v in mem.peaks.items() if "NeARSlicerLib.cli" in mem.names.get(p, "")]
    return {"wall_s": wall, "cases_per_min": n / wall * 60, "per_case_s": wall / n,
            "rss_per_process_mb": round(max(peaks), 1) if peaks else None}


def run_batch_cli(manifest: Path, out: Path, n: int, preset: str, workers: int) -> dict:
    stop, times = threading.Event(), []
    watcher = threading.Thread(target=watch_summary, args=(out / "summary.csv", stop, times), daemon=True)
    t0 = time.perf_counter()
    watcher.start()
    proc = subprocess.Popen(NEARSLICER + ["batch", "--manifest", str(manifest), "--out", str(out), "--preset", preset,
                                          "--prior", PRIOR, "--workers", str(workers)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    with MemorySampler(proc.pid) as mem:
        proc.wait()
    wall = time.perf_counter() - t0
    time.sleep(0.2)
    stop.set()
    watcher.join()
    assert proc.returncode == 0, f"batch --workers {workers} failed"
    workers_rss = [v for p, v in mem.peaks.items() if p != proc.pid and "spawn_main" in mem.names.get(p, "")]
    return {"wall_s": wall, "cases_per_min": n / wall * 60, "steady_s_per_case": steady_per_case(times),
            "first_case_after_s": (times[0] - t0) if times else None,
            "rss_main_mb": round(mem.peaks.get(proc.pid, float("nan")), 1),
            "rss_per_worker_mb": [round(v, 1) for v in sorted(workers_rss)]}


def run_ray(manifest: Path, out: Path, n: int, preset: str) -> dict:
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        return {"skipped": "Ray is not installed (pip install 'nearslicer[ray]')"}
    from NeARSlicerLib.batch import read_manifest, run_batch
    from NeARSlicerLib.batch_executor import RayExecutor

    os.environ["PYTHONPATH"] = ENV["PYTHONPATH"]
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    t_start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    cluster_s = time.perf_counter() - t_start
    times = []
    try:
        t0 = time.perf_counter()
        with MemorySampler(os.getpid(), match="ray::") as mem:
            outcome = run_batch(read_manifest(manifest), out, {"preset": preset, "prior": PRIOR}, executor=RayExecutor(cluster.address),
                                on_case=lambda name, rows: times.append(time.perf_counter()), progress_bar=False)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert outcome.failed == 0
    return {"wall_s": wall, "cases_per_min": n / wall * 60, "steady_s_per_case": steady_per_case(times),
            "first_case_after_s": times[0] - t0, "cluster_start_s": cluster_s,
            "rss_per_worker_mb": [round(v, 1) for v in sorted(mem.peaks.values()) if v > 200]}


def full_size_case_s(folder: Path, preset: str) -> float:
    """Seconds one worker spends on a full-size case (prior already loaded): read a 512 x 512 x 300 CT
    and its label map, refine the gland placed in it, write the refined mask (the batch's run_task)."""
    from NeARSlicerLib.batch import BatchCase, CaseTask, run_task

    grid = Grid((300, 512, 512), (0.8, 0.8, 1.5), (0.0, 0.0, 0.0))  # [k, j, i]; spacing (i, j, k) mm
    gland = adrenal_phantom(seed=7, shape=(40, 80, 80), spacing=(0.8, 0.8, 1.5))
    seg = np.zeros(grid.shape, np.uint8)
    seg[130:170, 220:300, 200:280] = gland
    ct = np.random.default_rng(0).normal(40, 30, grid.shape).astype(np.int16)
    ct[seg > 0] += 60
    import SimpleITK as sitk

    sitk.WriteImage(grid.to_sitk(ct), str(folder / "big.nii.gz"), True)
    write_mask(str(folder / "big_seg.nii.gz"), seg, grid)
    case = BatchCase("big", str(folder / "big_seg.nii.gz"), str(folder / "big.nii.gz"))
    run_task(CaseTask(case, str(folder / "warm.nii.gz"), {"preset": preset, "prior": PRIOR}))  # load the prior first
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        rows = run_task(CaseTask(case, str(folder / "big_out.nii.gz"), {"preset": preset, "prior": PRIOR}))
        times.append(time.perf_counter() - t0)
        assert not rows[0]["error"], rows[0]["error"]
    return min(times)


def same_outputs(a: Path, b: Path, n: int) -> bool:
    return all(np.array_equal(read_mask(str(a / f"c{k}.nii.gz"))[0], read_mask(str(b / f"c{k}.nii.gz"))[0])
               for k in range(n))


def estimate(per_case_worker_s: float, extra_s: float, ks=(1, 2, 8, 16, 64, 256), total: int = 20000) -> list:
    """Wall hours for ``total`` CTs on k workers (each a core, or a GPU with its CPU): total x cost / k."""
    cost = per_case_worker_s + extra_s
    return [{"workers": k, "hours": round(total * cost / k / 3600, 2)} for k in ks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--preset", default="default", choices=["fast", "default", "quality"])
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "batch_throughput.json"))
    parser.add_argument("--skip", action="append", default=[], help="shell, w1, w2 or ray")
    args = parser.parse_args()
    n = args.cases
    with tempfile.TemporaryDirectory(prefix="nearslicer-batch-bench-") as tmp:
        tmp = Path(tmp)
        manifest = make_cases(tmp / "cases", n)
        results = {}
        if "shell" not in args.skip:
            results["shell loop of nearslicer refine"] = run_shell_loop(tmp / "cases", tmp / "shell", n, args.preset)
            print("shell", results["shell loop of nearslicer refine"], flush=True)
        for w in (1, 2):
            if f"w{w}" not in args.skip:
                results[f"batch --workers {w}"] = run_batch_cli(manifest, tmp / f"w{w}", n, args.preset, w)
                print(f"w{w}", results[f"batch --workers {w}"], flush=True)
        if "ray" not in args.skip:
            results["batch --ray (2 local nodes)"] = run_ray(manifest, tmp / "ray", n, args.preset)
            print("ray", results["batch --ray (2 local nodes)"], flush=True)
        outs = [tmp / d for d in ("shell", "w1", "w2", "ray") if (tmp / d / "c0.nii.gz").exists()]
        identical = all(same_outputs(outs[0], o, n) for o in outs[1:])
        import torch

        torch.set_num_threads(1)  # one worker's share, as in the pool
        full_s = full_size_case_s(tmp, args.preset)
    w1 = results.get("batch --workers 1", {})
    per_case = w1.get("steady_s_per_case", float("nan"))
    extra_s = max(0.0, full_s - per_case)  # what a full-size CT adds to the phantom's cost
    report = {
        "cases": n, "preset": args.preset, "case": "adrenal-like phantom + synthetic CT, 64^3 voxels of 1 mm, S+A",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "note": "the load average at the end is recorded under machine: other jobs on the same cores slow every run",
        "runs": results, "identical_masks_across_runs": identical,
        "full_size_case_s": round(full_s, 2),
        "estimate_20000_cts": {"phantom_per_case_worker_s": round(per_case, 2),
                               "full_size_per_case_worker_s": round(full_s, 2),
                               "basis": "one worker (one core, one torch thread, prior loaded) on a 512x512x300 CT: "
                                        "read CT + label map, refine, write; wall = 20000 x cost / k workers "
                                        "(k cores or k GPUs, shared storage assumed fast enough)",
                               "by_workers": estimate(per_case, extra_s)},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
