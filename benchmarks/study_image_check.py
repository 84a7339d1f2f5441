"""Study mode with and without the cases' images, one study per prior that ``--prior auto`` gives.

    PYTHONPATH=NeARSlicer python benchmarks/study_image_check.py   # -> benchmarks/results/study_image_check.json
    PYTHONPATH=NeARSlicer python benchmarks/study_image_check.py --sets unseen --out benchmarks/results/X.json

The cases are grouped as ``nearslicer study --prior auto`` asks a user to run them
(``study_prior_choice``): the real CT's adrenal glands adapt the adrenal prior (with images its
S+A prior, which reads the CT), every other case the general prior (shape-only: since 2026-11-29 a
study given images checks each case's refinement against its own image, as ``refine_mask`` does).
The same studies are run twice on each case set, the StudyCases without and with their images, and
scored as ``bench`` scores its study rows (DSC, NSD at each case's coarsest voxel side):

* ``unseen``: ``bench --unseen-classes 20``'s cases (branching and node shapes in synthetic CTs);
* ``real_ct``: ``bench --all-structures``'s cases (every structure of the example CT, 3 seeds).
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CT = HERE.parent.parent / "shared" / "data" / "totalseg_example"
OUT = HERE / "results" / "study_image_check.json"


def score(cases, masks) -> list:
    from NeARSlicerLib.metrics import dice, normalized_surface_dice

    return [{"case": c.name, "dsc": dice(m > 0, c.truth),
             "nsd": normalized_surface_dice(m > 0, c.truth, c.grid.spacing, max(c.grid.spacing))}
            for c, m in zip(cases, masks)]


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="unseen,real_ct", help="comma-separated: unseen, real_ct")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--prior", default="auto", help="auto (one study per prior --prior auto gives the cases), "
                        "or one prior for every case")
    parser.add_argument("--denoise-targets", default="prior", help="StudyConfig.denoise_targets")
    parser.add_argument("--unseen-cases", type=int, default=20)
    parser.add_argument("--unseen-seed", type=int, default=None,
                        help="another seed: a fresh sample of the held-out classes (default: bench's)")
    parser.add_argument("--unadapted", action="store_true",
                        help="also the un-adapted prior of each group (refine_mask, default preset, with the images)")
    parser.add_argument("--images-only", action="store_true", help="only the study with images")
    args = parser.parse_args(argv)
    from NeARSlicerLib.bench import BENCH_SEED, real_ct_structures, unseen_class_cases
    from NeARSlicerLib.refine import RefineOptions, refine_mask
    from NeARSlicerLib.study import StudyCase, StudyConfig
    from NeARSlicerLib.study_prior_choice import run_studies_by_prior

    seed = BENCH_SEED if args.unseen_seed is None else args.unseen_seed
    builders = {"unseen": lambda: unseen_class_cases(args.unseen_cases, seed=seed),
                "real_ct": lambda: real_ct_structures(CT / "ct.nii.gz", CT / "seg.nii.gz", per_label=3)}
    sets = {name: builders[name]() for name in args.sets.split(",")}
    result = {}
    for name, cases in sets.items():
        rows = {"input": score(cases, [c.annotation.astype(np.uint8) for c in cases])}
        if args.unadapted:  # what the studies adapt, as refine gives it each case (with its image)
            t0 = time.perf_counter()
            masks = []
            for c in cases:  # refine's own prior choice (--prior auto by the case's structure)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    masks.append(refine_mask(c.annotation.astype(np.uint8), c.grid, c.image,
                                             RefineOptions(prior=args.prior, structure=c.structure)).mask)
            rows["un-adapted prior"] = score(cases, masks)
            print(f"{name} un-adapted: {time.perf_counter() - t0:.0f} s", flush=True)
        for label, with_images in (("study", False), ("study with images", True))[1 if args.images_only else 0:]:
            t0 = time.perf_counter()
            study = [StudyCase(c.name, c.annotation.astype(np.uint8), c.grid, c.image if with_images else None,
                               structure=c.structure) for c in cases]
            masks = [None] * len(cases)
            # --prior auto: one study per prior (the real CT's adrenal glands adapt the adrenal prior)
            cfg = StudyConfig.for_recipe("denoise", appearance=with_images, denoise_targets=args.denoise_targets)
            for run in run_studies_by_prior(study, args.prior, cfg):
                for i, m in zip(run.cases, run.result.masks):
                    masks[i] = m
            rows[label] = score(cases, masks)
            print(f"{name} {label}: {time.perf_counter() - t0:.0f} s", flush=True)
        table = {}
        for label, rs in rows.items():
            worse = sum(1 for r, i in zip(rs, rows["input"]) if r["dsc"] < i["dsc"] - 0.01)
            table[label] = {"dsc": 100 * float(np.mean([r["dsc"] for r in rs])),
                            "nsd": 100 * float(np.mean([r["nsd"] for r in rs])), "worse_by_1_dsc": worse}
        result[name] = {"table": table, "per_case": rows}
        print(name, json.dumps(table), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
