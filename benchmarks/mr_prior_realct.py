"""The any-modality prior adrenal_mr_v1 on the real CT's two adrenal glands with thick-slice errors
(the robustness table's real-CT cases: labels 8 and 9, 8 seeds each), every change and gated.

    PYTHONPATH=NeARSlicer python benchmarks/mr_prior_realct.py -> benchmarks/results/mr_prior_realct.json
"""
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from robustness import REAL_CT, score_rows  # noqa: E402

from NeARSlicerLib.bench import real_ct_cases  # noqa: E402
from NeARSlicerLib.prior import ADRENAL_MR_PRIOR  # noqa: E402
from NeARSlicerLib.refine import RefineOptions  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(2)
    work = HERE / "work" / "mr_prior_realct"
    work.mkdir(parents=True, exist_ok=True)
    cases = real_ct_cases(REAL_CT / "ct.nii.gz", REAL_CT / "seg.nii.gz", (8, 9), per_label=8, family="thick_slice")
    d = dict(preset="default", seed=0, prior=str(ADRENAL_MR_PRIOR))
    res = score_rows(cases, {"adrenal_mr_v1, every change": RefineOptions(change_policy="all", **d),
                             "adrenal_mr_v1, gated": RefineOptions(change_policy="gated", **d)}, work, "realct_thick")
    (HERE / "results" / "mr_prior_realct.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res["table"], indent=1))
