"""nearslicer batch on Ray: a local cluster of two simulated nodes, one removed mid-batch.

Ray is the optional extra ``nearslicer[ray]``; scripts/setup.sh (the CI set-up) installs it, so this
test runs in CI. It is skipped only where Ray is not installed (a base install), and says so.
"""
from __future__ import annotations

import os
from pathlib import Path

import nrrd
import numpy as np
import pytest

from batch_cases import make_cases, masks_of, read_summary, same_masks, stable_rows, three_glands, write_manifest

ray = pytest.importorskip("ray", reason="Ray is not installed (the optional extra: pip install 'nearslicer[ray]')")

from NeARSlicerLib import case_parts  # noqa: E402
from NeARSlicerLib.batch import BatchCase, read_manifest, run_batch  # noqa: E402
from NeARSlicerLib.batch_executor import RayExecutor, SequentialExecutor  # noqa: E402

FAST = {"preset": "fast", "seed": 0}
PACKAGE_DIR = Path(__file__).resolve().parents[2] / "NeARSlicer"


@pytest.fixture
def two_node_cluster(monkeypatch):
    """A head without CPUs (it schedules nothing) and two one-CPU worker nodes on this machine."""
    from ray.cluster_utils import Cluster

    # the nodes' worker processes import the engine from this checkout
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PACKAGE_DIR), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # on a busy machine the head's metrics agent can take over a minute to start: wait for it longer
    monkeypatch.setenv("RAY_agent_register_timeout_ms", "600000")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:  # torn down even when the start fails part-way (no Ray processes left behind)
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes(timeout=300)  # a busy 2-core machine starts nodes slowly
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_ray_with_a_node_removed_mid_batch_gives_the_local_results(two_node_cluster, tmp_path, monkeypatch):
    cluster, nodes = two_node_cluster
    # one case of three labels on the two nodes: shared between them (case_parts.py), one task's output
    three_glands(tmp_path / "glands.nii.gz")
    glands = [BatchCase("glands", str(tmp_path / "glands.nii.gz"), label="all")]
    run_batch(glands, tmp_path / "glands_local", FAST, executor=SequentialExecutor(), progress_bar=False)
    made, split = [], case_parts.split

    def recorded_split(tasks, workers):
        made.extend(split(tasks, workers))
        return made

    monkeypatch.setattr(case_parts, "split", recorded_split)
    shared = RayExecutor(cluster.address)
    assert run_batch(glands, tmp_path / "glands_ray", FAST, executor=shared, progress_bar=False).failed == 0
    assert shared.workers == 2 and [t.part for t in made] == [(0, 2), (1, 2)]
    monkeypatch.undo()
    local, ray_made = (nrrd.read(str(tmp_path / d / "glands.seg.nrrd")) for d in ("glands_local", "glands_ray"))
    assert np.array_equal(local[0], ray_made[0])
    assert stable_rows(read_summary(tmp_path / "glands_local" / "summary.csv")) == \
        stable_rows(read_summary(tmp_path / "glands_ray" / "summary.csv"))

    manifest = write_manifest(tmp_path / "cases.csv", make_cases(tmp_path / "cases", 6))
    reference = tmp_path / "local"
    run_batch(read_manifest(manifest), reference, FAST, executor=SequentialExecutor(), progress_bar=False)

    removed = []

    def remove_a_node_after_the_first_case(name, rows):
        if not removed:  # the other cases are in flight on both nodes: the removed one's are retried
            cluster.remove_node(nodes[1], allow_graceful=False)
            removed.append(name)

    out = tmp_path / "ray"
    executor = RayExecutor(cluster.address, max_retries=3)
    outcome = run_batch(read_manifest(manifest), out, FAST, executor=executor,
                        on_case=remove_a_node_after_the_first_case, progress_bar=False)
    assert removed and executor.workers == 2
    assert outcome.failed == 0 and outcome.done == 6
    rows = read_summary(out / "summary.csv")
    # every case exactly once (one row per case and segment), results identical to the local run
    assert stable_rows(rows) == stable_rows(read_summary(reference / "summary.csv"))
    assert same_masks(masks_of(out), masks_of(reference))
