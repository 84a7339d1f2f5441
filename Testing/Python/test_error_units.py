"""Error sizes in mm or in voxels: the real-CT bench's harsher process (``--error-units voxel``) and the
training option that paints errors in the training cube's voxels (``--p-voxel-errors``)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from NeARSlicerLib.cli import main
from NeARSlicerLib.errors import InputError
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.train import TrainConfig
from NeARSlicerLib.training_data import DataSpec, make_sample


def test_voxel_units_paint_the_scans_voxels_on_the_real_ct(shared_data):
    """On the 3 mm example CT the library's mm sizes (0.5-2 mm brushes) mostly stay under a voxel; read in
    voxels (a 1-2 voxel brush: 3-6 mm) the same seeds paint the same structures clearly worse."""
    from NeARSlicerLib.bench import real_ct_structures

    folder = shared_data / "totalseg_example"
    args = (folder / "ct.nii.gz", folder / "seg.nii.gz")
    mm = real_ct_structures(*args, min_voxels=20_000, per_label=2)
    voxel = real_ct_structures(*args, min_voxels=20_000, per_label=2, error_units="voxel")
    assert [c.name for c in mm] == [c.name for c in voxel] and len(mm) >= 4
    assert all(np.array_equal(a.truth, b.truth) for a, b in zip(mm, voxel))
    d_mm = np.mean([dice(c.annotation, c.truth) for c in mm])
    d_voxel = np.mean([dice(c.annotation, c.truth) for c in voxel])
    assert d_voxel < d_mm - 0.05, (d_mm, d_voxel)
    with pytest.raises(InputError, match="error units must be mm or voxel"):
        real_ct_structures(*args, min_voxels=20_000, per_label=1, error_units="inch")


def test_bench_scores_the_voxel_units_cases_and_says_so(shared_data, tmp_path):
    """``bench --real-ct --all-structures --error-units voxel`` scores the cases ``real_ct_structures`` draws
    in voxels (their inputs' Dice), and the JSON records the units."""
    import json

    from NeARSlicerLib.bench import real_ct_structures

    folder = shared_data / "totalseg_example"
    out = tmp_path / "v.json"
    assert main(["bench", "--real-ct", str(folder), "--all-structures", "--error-units", "voxel", "--min-voxels",
                 "30000", "--per-label", "1", "--preset", "fast", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["error_units"] == "voxel"
    cases = real_ct_structures(folder / "ct.nii.gz", folder / "seg.nii.gz", min_voxels=30_000, per_label=1,
                               error_units="voxel")
    scored = {r["case"]: r["dsc"] for r in result["per_case"]["input"]}
    assert scored == pytest.approx({c.name: dice(c.annotation, c.truth) for c in cases})


def test_bench_refuses_voxel_units_without_a_real_ct(tmp_path, capsys):
    assert main(["bench", "--error-units", "voxel", "--cases", "1", "--json", str(tmp_path / "x.json")]) == 2
    assert "--error-units voxel reads the error sizes on a real CT's grid" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_training_errors_in_voxels_are_painted_on_the_cubes_voxels(monkeypatch):
    """With ``p_voxel_errors`` 1 every corrupted sample's errors are painted with 1-voxel units, with 0
    at the shape's own voxel size (mm), with 0.5 both; the clean shape drawn is the same whatever the
    share (the extra draw comes after it), and the share is recorded on the prior's card."""
    import NeARSlicerLib.training_data as td

    seen: list[float] = []
    real = td.mixture

    def spy(mask, spacing, rng, families, image=None):
        seen.append(float(spacing[0]))
        return real(mask, spacing, rng, families, image=image)

    monkeypatch.setattr(td, "mixture", spy)
    base = DataSpec(source="anatomy", families=("overpaint",), p_clean=0.0, p_alan=0.0)
    shares = {}
    for p in (0.0, 0.5, 1.0):
        seen.clear()
        spacings, cleans = [], []
        for seed in range(10):
            clean, _, _, spacing = make_sample(None, replace(base, p_voxel_errors=p), np.random.default_rng(seed))
            spacings.append(spacing)
            cleans.append(clean)
        shares[p] = (spacings, cleans, list(seen))
    spacings, cleans, painted = shares[0.0]
    assert painted == pytest.approx(spacings) and any(s >= 2.0 for s in spacings)
    assert shares[1.0][2] == [1.0] * 10
    assert 0 < sum(v == 1.0 for v in shares[0.5][2]) < 10
    for p in (0.5, 1.0):
        assert shares[p][0] == spacings and all(np.array_equal(a, b) for a, b in zip(shares[p][1], cleans))
    assert TrainConfig(source="anatomy", p_voxel_errors=0.5).card()["p_voxel_errors"] == 0.5
    assert "p_voxel_errors" not in TrainConfig(source="anatomy").card()
