"""Where the Slicer tests get their example case: the real one in ../shared, the built-in phantom when
../shared is absent (never a silent skip), and a failure in CI when ../shared is there but unreadable."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROBE = """
import slicer_fixture as F
print("PHANTOM" if F.USING_PHANTOM else "REAL", F.CT_PATH)
"""

NEEDS_DATA = """
from slicer_fixture import require_totalseg_data

def test_needs_the_example():
    require_totalseg_data()
"""


def _run(args, env_extra, cwd=HERE):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NEARSLICER_SHARED")}
    env.update(env_extra, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=str(cwd), env=env)


def test_phantom_stands_in_when_shared_is_absent(tmp_path):
    result = _run(["-c", PROBE], {"NEARSLICER_SHARED": str(tmp_path / "no-shared-here")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("PHANTOM"), result.stdout
    ct = Path(result.stdout.split()[1])
    import SimpleITK as sitk

    image = sitk.ReadImage(str(ct))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(ct.parent / "seg.nii.gz")))
    assert image.GetSize() == (122, 101, 30) and image.GetSpacing() == (3.0, 3.0, 3.0)
    # both glands and ten other labels, as the tests of the real multilabel map expect
    assert {8, 9} <= set(int(v) for v in set(labels.ravel())) and len(set(labels.ravel())) == 13
    assert 60 < (labels == 9).sum() < 400


def test_unreadable_shared_fails_in_ci_and_falls_back_outside(tmp_path):
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)  # present, but no example case in it
    test_file = tmp_path / "test_needs.py"
    test_file.write_text(NEEDS_DATA)
    in_ci = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                 {"NEARSLICER_SHARED": str(shared), "CI": "1"}, cwd=tmp_path)
    assert in_ci.returncode == 1 and "1 failed" in in_ci.stdout, in_ci.stdout[-2000:]
    assert "exists but its example case cannot be read" in in_ci.stdout
    outside = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                   {"NEARSLICER_SHARED": str(shared)}, cwd=tmp_path)
    assert outside.returncode == 0 and "1 passed" in outside.stdout, outside.stdout[-2000:]
