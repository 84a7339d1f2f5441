"""``nearslicer``: refine a segmentation file, run the built-in demo, benchmark, train a prior.

Errors are one line on stderr with a non-zero exit code (2: bad input or prior, 1: other);
``--debug`` shows the traceback instead.

Outputs (``output_safety``): an input is never modified; every output path is checked before any
computation (not an input, folder present and writable, existing files replaced only with
``--overwrite``); each file appears whole or not at all, and refine's --out/--probability/--report
appear together or not at all.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import NoReturn, Optional, Sequence

from .errors import InputError, NeARError, RefinementError

ALAN_REL = Path("data/alan64/alan64_trainval.npz")
CHECKPOINT_NAME = "checkpoint.safetensors"  # study mode's resume file in --out (no pickle)


def shared_dir() -> Optional[Path]:
    """The shared data folder: $NEARSLICER_SHARED, <repo>/../shared or ./../shared."""
    candidates = []
    if os.environ.get("NEARSLICER_SHARED"):
        candidates.append(Path(os.environ["NEARSLICER_SHARED"]))
    candidates += [Path(__file__).resolve().parents[3] / "shared", Path.cwd().parent / "shared", Path.cwd() / "shared"]
    for c in candidates:
        if (c / "data").is_dir():
            return c
    return None


def default_alan() -> str:
    s = shared_dir()
    return str(s / ALAN_REL) if s else str(Path("../shared") / ALAN_REL)


def _option_fields(args) -> dict:
    """The RefineOptions fields the refine options of the command line set (refine and batch share them)."""
    fields = {"prior": args.prior, "preset": args.preset, "device": args.device, "seed": args.seed,
              "appearance": not getattr(args, "shape_only", False)}
    # do no harm (refine and batch): None leaves RefineOptions' default
    for name, field in (("keep_threshold", "keep_threshold"), ("changes", "change_policy")):
        if getattr(args, name, None) is not None:
            fields[field] = getattr(args, name)
    if getattr(args, "keep_staircase", False):
        fields["interpolate_slices"] = False
    if getattr(args, "no_margin_fit", False):
        fields["fit_margin"] = False
    if getattr(args, "no_image_trim", False):
        fields["trim_to_image"] = False
    if getattr(args, "no_image_gate", False):
        fields["image_opens_gate"] = False
    if getattr(args, "image_voxel_mm", None) is not None:
        fields["image_voxel_mm"] = args.image_voxel_mm
    return fields


def _options(args, structure: Optional[str] = None):
    from .refine import RefineOptions

    return RefineOptions(**_option_fields(args), structure=structure)


def _fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def _size_mm(text: str) -> float:
    """argparse type: a positive size in mm."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in mm, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive size in mm, got {text}")
    return value


def image_voxel_flag(sp) -> None:
    sp.add_argument("--image-voxel-mm", type=_size_mm, default=None, metavar="MM",
                    help="the image's own finest voxel side when it was resampled onto the mask's finer grid "
                         "(e.g. 3 for a 3 mm CT resampled to a 1 mm segmentation): the margin fit then moves no "
                         "boundary by less, since an interpolated edge is no sharper than the image's voxel; "
                         "not given, it is read off the image where its detail repeats with a coarser voxel's "
                         "period (nearest, linear or B-spline resampling), and the grid's own voxel otherwise")


def cmd_refine(args) -> int:

    from .batch import read_case_inputs, segment_name, several_labels, structure_of
    from .confidence import KEPT_IMAGE, KEPT_NO_SHAPE
    from .io import IMAGE_OUTPUTS, MASK_OUTPUTS, check_output_type, write_image, write_mask
    from .metrics import dice
    from .output_safety import atomic_paths, check_outputs
    from .refine import refine_mask

    if several_labels(args.label) is not None:
        raise InputError(f"refine writes one structure: give one --label, not {args.label!r} (nearslicer batch "
                         "refines several labels of a case into one .seg.nrrd: its label column or --label '8;9' or 'all')")
    # every output is checked (not an input, new or --overwrite, folder writable, a type it can be
    # written as) before computing
    check_outputs([args.out, args.probability, args.report], [args.mask, args.image, args.prior],
                  overwrite=args.overwrite)
    check_output_type(args.out, MASK_OUTPUTS, "--out")
    if args.probability:
        check_output_type(args.probability, IMAGE_OUTPUTS, "--probability")
    if args.report and not args.report.lower().endswith(".png"):
        raise InputError(f"--report {Path(args.report).name}: the report is a PNG image; give a file name ending in .png")
    # the reading nearslicer batch shares: the same case gives the same mask (and prior) in both
    mask, grid, image, mask_info = read_case_inputs(args.mask, args.image, args.label)
    structure = structure_of(args.mask, args.structure, mask_info)
    options = _options(args, structure)
    options.modality = args.modality
    res = _run_with_bar(lambda cb: refine_mask(mask, grid, image, options, progress=cb))
    for w in res.warnings:
        print(f"nearslicer: warning: {w}", file=sys.stderr)
    score = dice(mask, res.mask)
    # all outputs are written to temporary files first, then renamed together: all or none appear
    with atomic_paths([args.out, args.probability, args.report]) as (out_tmp, prob_tmp, report_tmp):
        # a .seg.nrrd output holds the segment "<name> (NeAR)", as the batch's and Slicer's do
        write_mask(out_tmp, res.mask, grid, name=f"{segment_name(mask_info)} (NeAR)")
        if prob_tmp:
            write_image(prob_tmp, res.probability, grid)
        if report_tmp:
            from .report import save_report_png

            save_report_png(report_tmp, image, mask, res.mask, grid.spacing, title=Path(args.mask).name,
                            metrics={"Dice(input, refined)": score})
    info = res.info
    action, conf = info.get("action", "refined"), info.get("confidence")
    if args.json:
        import json

        facts = {"mask": str(Path(args.mask).resolve()), "output": str(Path(args.out).resolve()),
                 "action": action, "confidence": conf, "keep_threshold": info.get("keep_threshold"),
                 "change_policy": info.get("change_policy"),
                 "modality": info.get("modality"), "appearance": info.get("appearance"),
                 "prior": info.get("prior_name") or info.get("prior"),
                 # the label refined and what --prior auto read it as (--structure, segment or label name, file)
                 "label": mask_info.get("label"), "structure": structure,
                 "working_spacing_mm": info.get("working_spacing_mm"), "size_mm": info.get("size_mm"),
                 "out_of_domain": info.get("out_of_domain"), "signals": info.get("signals"),
                 "image_check": info.get("image_check"), "confidence_from": info.get("confidence_from"),
                 "image_support": info.get("image_support"), "view_confidence": info.get("view_confidence"),
                 "gate_opened_by_image": info.get("gate_opened_by_image"),
                 "gate_closed_by_image": info.get("gate_closed_by_image"),
                 "image_margin_mm": info.get("image_margin_mm"), "image_margin_sides": info.get("image_margin_sides"),
                 "image_voxel_read_mm": info.get("image_voxel_read_mm"),
                 "image_trim": info.get("image_trim"), "specks": info.get("specks"),
                 "voxels_before": int(mask.sum()), "voxels_after": int(res.mask.sum()),
                 "dice_input_refined": round(float(score), 4), "seconds": round(res.seconds, 2),
                 "device": info.get("device"), "warnings": list(res.warnings)}
        print(json.dumps(facts))
        return 0
    how = (f"confidence {conf:.2f}{' from the image' if info.get('confidence_from') == 'image' else ''}"
           if isinstance(conf, (int, float)) else "no confidence (one view and no image: use the default preset)")
    if action.startswith("kept"):
        below = conf is not None and conf < float(info.get("keep_threshold") or 0.0)
        if below:
            why = f"{how} < keep threshold {info.get('keep_threshold')}"
        elif info.get("out_of_domain"):
            why = "the prior was not trained on shapes like this one (warning above); --changes all refines it anyway"
        elif action == KEPT_IMAGE:
            why = "the prior's changes disagree with the image's intensities; --changes all applies them anyway"
        elif action == KEPT_NO_SHAPE:
            why = "the prior's output was empty: it found no plausible shape in this annotation"
        elif info.get("gate_closed_by_image"):
            why = ("the prior's change is large, but the CT supports little of it and none of it is thicker than "
                   "the prior's own boundary error; --changes all applies it anyway")
        else:
            why = (f"every change the prior proposed was thinner than its own boundary error, --changes "
                   f"{info.get('change_policy')}")
        print(f"{action} {Path(args.mask).name} ({why}): the input was kept unchanged, {res.seconds:.1f} s on "
              f"{info['device']}, prior {info.get('prior_name') or info.get('prior')}; wrote {args.out}")
        return 0
    if action != "refined":  # thick errors only: say that the annotation's own boundary was kept
        how += f"; {action.split(':', 1)[1].strip()}"
        if info.get("gate_closed_by_image"):  # a large change that the CT hardly supports
            how += " (the prior's change is large, but the CT supports little of it)"
    elif info.get("gate_opened_by_image"):  # a thin change applied because the CT supports it
        how += "; the change is thin, but the CT supports it: applied everywhere"
    print(f"refined {Path(args.mask).name}: {int(mask.sum())} -> {int(res.mask.sum())} voxels "
          f"(+{int(res.added.sum())} / -{int(res.removed.sum())}), Dice(input, refined) "
          f"{score:.3f}, {how}, {res.seconds:.1f} s on {info['device']}, prior "
          f"{info.get('prior_name') or info.get('prior')}; wrote {args.out}")
    return 0


def _run_with_bar(fn):
    from tqdm import tqdm

    with tqdm(total=100, desc="refine", unit="%", mininterval=0.5, leave=False, delay=1.0) as bar:
        def cb(f: float, msg: str) -> None:
            bar.set_postfix_str(msg, refresh=False)
            bar.update(max(0, int(f * 100) - bar.n))

        return fn(cb)


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, options=_options(args), overwrite=args.overwrite)
    return 0


def _seed_base(args) -> int:
    """The seed of a bench's first case (case i: seed + i): the bench's own unless --unseen-seed gives one."""
    from .bench import BENCH_SEED

    seed = getattr(args, "unseen_seed", None)
    return BENCH_SEED if seed is None else int(seed)


def _bench_cases(args, family: Optional[str]) -> tuple[list, bool, Optional[float]]:
    """(cases, whether they carry images, NSD tolerance in mm or None for each case's voxel) of a bench run."""
    import numpy as np

    from .bench import alan_cases, real_ct_cases, real_ct_structures, unseen_class_cases

    if args.real_ct:
        folder = Path(args.real_ct)
        ct, seg = folder / "ct.nii.gz", folder / "seg.nii.gz"
        if not (ct.is_file() and seg.is_file()):
            raise InputError(f"--real-ct {folder} needs ct.nii.gz and seg.nii.gz (like ../shared/data/totalseg_example)")
        def labels(text: str) -> list[int]:
            return [int(v) for v in text.split(",") if v.strip()]

        if args.all_structures:
            cases = real_ct_structures(ct, seg, min_voxels=args.min_voxels, per_label=args.per_label or 3,
                                       family=family, adrenal_labels=labels(args.adrenal_labels),
                                       error_units=args.error_units)
            return cases, True, args.nsd_mm or max(cases[0].grid.spacing)  # the CT's coarsest voxel side
        return (real_ct_cases(ct, seg, labels(args.labels), per_label=args.per_label or 10, family=family), True,
                args.nsd_mm or 1.0)
    if args.unseen_classes:  # 10 to 200 mm shapes: NSD at each case's own voxel
        return unseen_class_cases(args.unseen_classes, family, seed=_seed_base(args)), True, args.nsd_mm
    if not Path(args.data).is_file():
        raise InputError(f"benchmark data not found: {args.data} (the ALAN shapes of ../shared/data; see --data)")
    shapes = np.load(args.data)[args.split + "_shapes"][: args.cases]
    return alan_cases(shapes, appearance=args.appearance, family=family), bool(args.appearance), args.nsd_mm or 1.0


def _bench_methods(args, any_structure: bool, with_images: bool) -> tuple[dict, Optional[dict]]:
    """The NeAR rows of a bench run: single-case variants (name -> RefineOptions) and study rows."""
    from .prior import DEFAULT_PRIOR, DEFAULT_SA_PRIOR
    from .refine import RefineOptions

    if any_structure:
        # a case names its structure (an adrenal gland, "label N") or none: --prior auto chooses per case
        common = dict(preset=args.preset, device=args.device, seed=args.seed)
        variants = {"NeAR S": RefineOptions(prior=args.prior, appearance=False, **common),
                    "NeAR S+A": RefineOptions(prior=args.prior_sa or args.prior, **common)}
        # --prior auto: one study of the adrenal glands (adrenal prior) and one of every other case (general
        # prior), as `nearslicer study --prior auto` asks a user to run them; a named prior: one study of all
        return variants, ({"NeAR S, study": (args.prior, False)} if args.study else None)
    # the ALAN shapes and the real CT's labels 8/9 are adrenal glands: --prior auto picks accordingly
    common = dict(preset=args.preset, device=args.device, seed=args.seed, structure="adrenal gland")
    if with_images:
        s_prior, sa_prior = args.prior or str(DEFAULT_PRIOR), args.prior_sa or str(DEFAULT_SA_PRIOR)
        variants = {"NeAR S": RefineOptions(prior=s_prior, appearance=False, **common),
                    "NeAR S+A": RefineOptions(prior=sa_prior, **common)}
        return variants, ({"NeAR S, study": (s_prior, False), "NeAR S+A, study": (sa_prior, True)}
                          if args.study else None)
    return {"NeAR": RefineOptions(prior=args.prior, **common)}, ({"NeAR, study": (args.prior, False)}
                                                                  if args.study else None)


def cmd_bench(args) -> int:
    from .annotation_errors import FAMILIES
    from .bench import (best_smoothing, by_structure, format_structures, format_table, run_bench, worse_names,
                        write_json)
    from .heldout_errors import HELD_OUT_ERRORS, HELD_OUT_MIXTURE

    if args.all_structures and not args.real_ct:
        raise InputError("--all-structures needs --real-ct DIR (a CT and its label map)")
    if args.error_units != "mm" and not args.all_structures:
        raise InputError("--error-units voxel reads the error sizes on a real CT's grid: give --all-structures")
    if args.unseen_seed is not None and not args.unseen_classes:
        raise InputError("--unseen-seed draws the cases of --unseen-classes: give --unseen-classes N")
    if args.unseen_classes and (args.real_ct or args.appearance):
        raise InputError("--unseen-classes makes its own cases: not with --real-ct or --appearance")
    # cases of any structure: refined with the prior --prior auto picks for each (as a user's segments)
    any_structure = bool(args.all_structures or args.unseen_classes)
    if args.json:  # checked before the (long) benchmark: not an input, folder present and writable
        from .output_safety import check_outputs

        check_outputs([args.json], [args.data, args.prior, args.prior_sa], may_exist=[args.json])
    errors = args.errors or ("mixture" if any_structure else "paper")
    errors = "mixture" if errors == "mix" else errors
    if errors == "all":
        families = list(FAMILIES) + ["mixture"]
    elif errors in ("paper", "v1"):
        if any_structure:
            raise InputError("--all-structures and --unseen-classes distort with the error library: "
                             "--errors FAMILY, mixture or all")
        families = [None]  # distort.py with the v1 benchmark's seeds (the README's first tables)
    elif errors == "heldout":
        families = list(HELD_OUT_ERRORS) + [HELD_OUT_MIXTURE]
    elif errors in FAMILIES or errors in HELD_OUT_ERRORS or errors in ("mixture", HELD_OUT_MIXTURE):
        families = [errors]
    else:
        raise InputError(f"unknown --errors {errors!r}: use one of {', '.join(FAMILIES)}, mixture (mix), all or "
                         f"paper, or a held-out process: {', '.join(HELD_OUT_ERRORS)}, {HELD_OUT_MIXTURE} or heldout")
    results = {}
    for family in families:
        cases, with_images, tolerance = _bench_cases(args, family)
        variants, studies = _bench_methods(args, any_structure, with_images)
        recipe = args.study_recipe or ("denoise" if any_structure else "fast")
        result = run_bench(cases, variants=variants, studies=studies, tolerance_mm=tolerance, study_recipe=recipe,
                           seed_base=_seed_base(args))
        name = family or "paper"
        print(f"\nerrors: {name} (best smoothing: {best_smoothing(result)})")
        print(format_table(result))
        if any_structure:
            methods = [best_smoothing(result), *variants, *(studies or {})]
            result["by_structure"] = summary = by_structure(result)
            what = "structures" if args.all_structures else "cases"
            if args.all_structures:
                seeds = len(result["per_case"]["input"]) // len(summary["structures"])
                print(f"\nper structure, DSC / NSD {tolerance:g} mm (%), averaged over {seeds} seeds:")
                print(format_structures(summary, methods))
            table = result["table"]
            for m in methods:
                print(f"{m}: DSC {table[m]['dsc_mean'] - table['input']['dsc_mean']:+.2f}, NSD "
                      f"{table[m]['nsd_mean'] - table['input']['nsd_mean']:+.2f} against the input; {what} "
                      f"worse than the input by more than 1 DSC: {', '.join(worse_names(summary, m)) or 'none'}")
        if args.all_structures:  # what the errors' sizes were read in (the inputs differ by 16 DSC at 3 mm)
            result["settings"]["error_units"] = args.error_units
        results[name] = result
    if args.json:
        write_json(results if len(results) > 1 else next(iter(results.values())), args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_train_prior(args) -> int:
    from .annotation_errors import ALL_FAMILIES
    from .train import TrainConfig, train_prior

    from .output_safety import check_output_folder, check_outputs

    if not Path(args.data).is_file():
        raise InputError(f"training data not found: {args.data}")
    # the prior (rewritten at every better validation) and the resume file are this run's own; a prior
    # that exists before the run (an earlier run's: hours of training) is replaced only with --overwrite,
    # or by the run it belongs to (--resume); neither may be the training data or the warm-start prior
    check_output_folder(Path(args.out).parent, create=True)
    check_outputs([args.out, args.resume], [args.data, args.init_from], overwrite=args.overwrite,
                  may_exist=[args.resume, args.out if args.resume else None])
    sigmas = tuple(float(v) for v in args.annotation_sigmas.split(",") if v.strip())
    cfg = TrainConfig(data=args.data, out=args.out, minutes=args.minutes, max_steps=args.max_steps,
                      batch=args.batch, seed=args.seed, threads=args.threads, resume=args.resume,
                      init_from=args.init_from, annotation_sigmas=sigmas, appearance=args.appearance,
                      lr=args.lr, val_every=args.val_every, errors=args.errors,
                      families=tuple(f for f in ALL_FAMILIES if f not in set(args.hold_out or [])),
                      source=args.source, appearance_norm=args.appearance_norm, p_mr=args.p_mr,
                      p_voxel_errors=args.p_voxel_errors, device=args.device,
                      workers=args.workers, points=args.points, reuse=args.reuse)
    with _stop_at_a_step() as stop:
        train_prior(cfg, cancel=lambda: stop["asked"])
    return 0


def cmd_study(args) -> int:
    from dataclasses import replace

    from .distributed import close_group, launch_rank
    from .engine_protocol import STUDY_REFINE_OPTIONS
    from .study import StudyConfig, load_cases
    from .study_output import StudyOutputs, case_inputs, refuse_input_folder
    from .study_prior_choice import plan_by_prior

    # under torchrun every process runs this command; only rank 0 reports and writes (run_study)
    rank, world = launch_rank()
    if not args.manifest and not args.masks:
        raise InputError("give --masks DIR (optionally --images DIR) or --manifest CSV")
    if args.manifest and (args.masks or args.images):
        raise InputError("give either --manifest or --masks/--images, not both")
    overrides = {"device": args.device, "seed": args.seed}
    if args.epochs is not None:
        if args.epochs < 0:
            raise InputError(f"--epochs must be >= 0, got {args.epochs}")
        overrides["epochs"] = args.epochs
    if args.l2sp is not None:
        if args.l2sp < 0:
            raise InputError(f"--l2sp must be >= 0, got {args.l2sp}")
        overrides["l2sp"] = args.l2sp
    if args.preset is not None:
        overrides["refine_preset"] = args.preset
    if args.denoise_targets is not None:
        overrides["denoise_targets"] = args.denoise_targets
    # the do-no-harm flags, as refine and batch take them, for every case's final refinement (denoise)
    harm = {k: v for k, v in _option_fields(args).items() if k in STUDY_REFINE_OPTIONS}
    if harm:
        overrides["refine_options"] = harm
    cfg = StudyConfig.for_recipe(args.recipe, appearance=not args.shape_only, **overrides)
    # each case is kept as the box of its volume this study reads (case_crop), not the whole scan
    from tqdm import tqdm

    with tqdm(desc="reading", unit="case", mininterval=0.5, leave=False, delay=1.0, disable=rank != 0) as bar:
        def read(i: int, n: int, name: str) -> None:
            bar.total = n
            bar.set_postfix_str(name, refresh=False)
            bar.update(i - bar.n)

        cases = load_cases(args.masks, args.images, args.manifest, label=args.label, structure=args.structure,
                           prior=args.prior, cfg=cfg, on_read=read)
    if args.image_voxel_mm is not None:  # every case's image was resampled from that voxel
        cases = [replace(c, image_voxel_mm=args.image_voxel_mm) for c in cases]
    out = Path(args.out)
    # one study, or with --split-by-prior one per prior --prior auto gives the cases, each in OUT/<prior>/
    runs = [(out, cases, args.prior)]
    if args.split_by_prior:
        plan = plan_by_prior(cases, args.prior, cfg.appearance)
        if len(plan) > 1:
            runs = [(out / label, [cases[i] for i in idx], str(path)) for label, path, idx in plan]
            refuse_input_folder(out, case_inputs(cases))  # as for one study: not in the inputs' folder
            # every study's outputs are checked before the first one trains (none is left half-done by another's)
            for folder, group, prior in runs:
                StudyOutputs(folder, group, overwrite=args.overwrite, checkpoint=folder / CHECKPOINT_NAME,
                             other_inputs=[prior])
    try:
        with _stop_at_a_step() as stop:
            for folder, group, prior in runs:  # every torchrun process runs every study (rank 0 alone writes)
                _one_study(args, cfg, group, prior, folder, rank, world, stop)
    finally:
        close_group()
    return 0


@contextlib.contextmanager
def _stop_at_a_step():
    """``{"asked": bool}``: a first Ctrl-C or SIGTERM (a scheduler's notice before it kills) sets it, and
    the training loop stops at its next step with its state saved for --resume; a second one stops at once."""
    stop = {"asked": False}

    def on_signal(signum, frame):
        if stop["asked"]:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt
        stop["asked"] = True

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread: keep the default behaviour
            pass
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _one_study(args, cfg, cases, prior, out: Path, rank: int, world: int, stop: dict) -> None:
    """One ``run_study`` into ``out`` with the CLI's progress bar; rank 0 alone reports."""
    from tqdm import tqdm

    from .study import run_study

    ck = out / CHECKPOINT_NAME
    if rank == 0:
        print(f"study: {len(cases)} cases, recipe {cfg.recipe}, up to {cfg.epochs} epochs"
              + (f", {world} processes (torchrun)" if world > 1 else "")
              + (f", resuming from {ck}" if args.resume and ck.is_file() else ""))
    with tqdm(total=1000, desc="study", unit="", mininterval=0.5, leave=False, disable=rank != 0,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}") as bar:
        def cb(f: float, msg: str) -> None:
            bar.set_postfix_str(msg, refresh=False)
            bar.update(max(0, int(f * 1000) - bar.n))

        # run_study checks every output (folder, collisions, --overwrite) before training
        res = run_study(cases, prior, cfg, out_dir=str(out), checkpoint=str(ck), progress=cb,
                        cancel=lambda: stop["asked"], resume=args.resume, overwrite=args.overwrite)
    if res.info.get("rank", 0) != 0:
        return
    for w in res.warnings:
        print(f"nearslicer: warning: {w}", file=sys.stderr)
    for row in res.rows(cases):
        print(f"{row['case']}: {row['voxels_before']} -> {row['voxels_after']} voxels, "
              f"Dice(input, refined) {float(row['dice']):.3f}" + (f", {row['action']}" if row["action"] else ""))
    early = " (early stop)" if res.stopped_early else ""
    print(f"study of {len(cases)} cases: {res.epochs} epochs / {res.steps} steps{early}, "
          f"final loss {res.losses[-1] if res.losses else float('nan'):.4f}, {res.seconds:.1f} s on "
          f"{res.info['device']}; wrote {out}/<case>.nii.gz, study_prior.safetensors/.json, summary.csv")


def cmd_report(args) -> int:
    from .review_report import build_report

    def progress(done: int, total: int, what: str) -> None:
        print(f"report: {done + 1}/{total} {what}", file=sys.stderr)

    out = build_report(args.batch, args.out, overwrite=args.overwrite, full_reports=not args.no_full,
                       progress=progress if args.verbose else None)
    print(f"wrote {out} (pictures in {out.parent / (out.stem + '_files')})")
    return 0


def cmd_batch(args) -> int:
    from dataclasses import replace

    from .batch import cases_from_folder, label_cell, read_manifest, run_batch
    from .batch_executor import make_executor

    if bool(args.manifest) == bool(args.cases):
        raise InputError("give one of --manifest CSV or --cases DIR")
    if not args.ray:  # on Ray the workers' machines have the GPUs, not (necessarily) this one
        from .device import pick_device

        pick_device(args.device)  # --device cuda without a GPU: said once, not as every case's error
    cases = read_manifest(args.manifest) if args.manifest else cases_from_folder(args.cases)
    if args.label is not None:  # a manifest's own label column wins
        cases = [c if c.label is not None else replace(c, label=label_cell(args.label)) for c in cases]
    executor = make_executor(args.workers, args.ray, args.gpus_per_task)
    where = f"Ray ({args.ray})" if args.ray else ("this process" if args.workers == 0 else
                                                 f"{executor.workers} worker process(es)")
    print(f"batch: {len(cases)} cases on {where}; writing {Path(args.out).absolute()}", file=sys.stderr)
    outcome = run_batch(cases, args.out, _option_fields(args), executor=executor, resume=args.resume,
                        overwrite=args.overwrite)
    rate = outcome.done / outcome.seconds * 60 if outcome.seconds > 0 else 0.0
    for cases_, why in ((outcome.retried, "failed before and were run again"),
                        (outcome.changed, "were run again: their mask, image or label is not the one of their rows")):
        if cases_:
            print(f"batch: {len(cases_)} case(s) {why} ({_first_names(cases_)})", file=sys.stderr)
    if outcome.other_settings:
        names = list(outcome.other_settings)
        print(f"batch: {len(names)} case(s) were run again: their rows were made with other settings "
              f"({outcome.other_settings[names[0]]}; {_first_names(names)})", file=sys.stderr)
    if outcome.not_listed:
        print(f"batch: {len(outcome.not_listed)} case(s) of the summary are not in this batch, their rows and "
              f"outputs kept ({_first_names(outcome.not_listed)})", file=sys.stderr)
    print(f"batch: {outcome.done} case(s) refined or recorded in {outcome.seconds:.1f} s ({rate:.1f} cases/min), "
          f"{outcome.skipped} already done, {outcome.failed} failed; summary {outcome.summary}")
    if outcome.failed:
        print(f"nearslicer: error: {outcome.failed} case(s) failed ({_first_names(outcome.failed_cases)}); see the "
              f"error column of {outcome.summary}", file=sys.stderr)
        return 1
    return 0


def _first_names(names: Sequence[str], most: int = 10) -> str:
    """The first ``most`` case names, comma-separated, with " ..." when there are more."""
    return ", ".join(names[:most]) + (" ..." if len(names) > most else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nearslicer", description="Neural Annotation Refinement (NeAR) of segmentations.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, seed=0):
        sp.add_argument("--prior", help="auto (default: adrenal for an adrenal gland, else the general anatomy "
                        "prior), adrenal, anatomy (-s / -sa to force shape-only / shape + appearance) or a "
                        ".safetensors path; S+A with an image")
        sp.add_argument("--preset", default="default", choices=["fast", "default", "quality"],
                        help="default: four mirrored views, ~3 s; fast: one view, no latent fit, ~0.3 s, and it "
                        "changes some near-correct masks that default keeps (README 'Label tables'); quality: eight views")
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        sp.add_argument("--seed", type=int, default=seed)

    def no_harm(sp, staircase: bool = True):
        from .confidence import CHANGE_POLICIES, DEFAULT_CHANGE_POLICY

        sp.add_argument("--keep-threshold", type=_fraction, default=None, metavar="C",
                        help="do no harm: keep the input unchanged when the refinement's confidence is below C "
                             "(0..1; with an image: the share of the prior's change the image supports; "
                             "default 0: always refine; 0.5: keep nearly every near-correct mask)")
        sp.add_argument("--changes", choices=CHANGE_POLICIES, default=None,
                        help="which of the prior's changes are applied: all; thick (only errors thicker than "
                             "about a voxel: blobs, holes, slabs, leaks, cut parts; the annotation's own boundary "
                             "is kept); gated (all when the prior changes over 15 %% of the annotation or it was "
                             "painted on thick slices; else the thick errors, with the changes within 3 mm of them "
                             "when they exceed 2 %% of its volume). thick and gated keep a segment outside the "
                             "prior's domain. "
                             f"Default {DEFAULT_CHANGE_POLICY}")
        if staircase:  # a study prior refines its cases as painted anyway
            sp.add_argument("--keep-staircase", action="store_true",
                            help="a mask painted on thick slices and resampled to a finer grid (a staircase) is given "
                                 "to the prior as it is, not with its painted slices interpolated (shape-based "
                                 "interpolation between the slices' centres: the default, unless the prior's card "
                                 "says otherwise, as a study prior's does)")
        sp.add_argument("--no-margin-fit", action="store_true",
                        help="with a CT, a mask painted too thick or too thin all round (by up to 2.5 mm) first "
                             "has its boundary moved to the image's edge when the image clearly shows one (the "
                             "default); with this flag, never")
        sp.add_argument("--no-image-trim", action="store_true",
                        help="with a CT, pieces of the output that the image shows as the structure's "
                             "surroundings (a slab or leak painted into fat, ending in homogeneous tissue) are "
                             "removed last (the default); with this flag, never")
        sp.add_argument("--no-image-gate", action="store_true",
                        help="with a CT, a thin change of the prior's that the image supports (80 %% of it or "
                             "more) is applied whole, where the do-no-harm gate would apply only its thick part "
                             "(the default); with this flag, never")

    r = sub.add_parser("refine", help="refine one mask file (NIfTI, NRRD, MetaImage or Slicer .seg.nrrd)")
    r.add_argument("--mask", required=True)
    r.add_argument("--out", required=True, help="output mask (.nii.gz, .nrrd, .mha or .seg.nrrd), same geometry as --mask")
    r.add_argument("--label", help="label value (or its name: a .seg.nrrd segment, or a NIfTI label table such as "
                   "TotalSegmentator's) of a multilabel mask")
    r.add_argument("--image", help="CT in HU on the mask's grid: shape + appearance (S+A) refinement with the "
                   "shipped S+A prior (or an S+A --prior); without it, shape-only")
    r.add_argument("--report", help="write a PNG with red (input) and blue (refined) contours")
    r.add_argument("--probability", help="also write the occupancy probability map")
    r.add_argument("--shape-only", action="store_true",
                   help="do not use --image's intensities: shape-only refinement")
    r.add_argument("--overwrite", action="store_true", help="replace outputs that exist (never an input)")
    r.add_argument("--structure", help="what the mask is (e.g. 'left adrenal gland', 'spleen'), for --prior auto; "
                   "default: the .seg.nrrd segment's name or the mask file's name")
    no_harm(r)
    image_voxel_flag(r)
    r.add_argument("--modality", help="the image's modality when known (DICOM Modality: CT, MR, ...); "
                   "default: guessed from its intensities. A CT appearance prior reads CT only")
    r.add_argument("--json", action="store_true",
                   help="print the result's facts (action, confidence, modality, warnings...) as one JSON line")
    common(r)
    r.set_defaults(func=cmd_refine)

    d = sub.add_parser("demo", help="built-in demo on a synthetic phantom (no data needed)")
    d.add_argument("--out", default="nearslicer-demo", help="output folder")
    d.add_argument("--shape-only", action="store_true", help="skip the S+A run: shape-only refinement only")
    d.add_argument("--overwrite", action="store_true", help="replace the files of an earlier demo in --out")
    common(d)
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="smoothing baselines vs NeAR on distorted ALAN shapes")
    b.add_argument("--data", default=default_alan())
    b.add_argument("--split", default="val", choices=["val", "train"])
    b.add_argument("--cases", type=int, default=98)
    b.add_argument("--json", default="bench.json")
    b.add_argument("--appearance", action="store_true",
                   help="put a synthetic CT around each shape and compare S with S+A")
    b.add_argument("--real-ct", metavar="DIR",
                   help="cases from a real CT instead: DIR/ct.nii.gz and DIR/seg.nii.gz (S vs S+A)")
    b.add_argument("--labels", default="8,9", help="labels of --real-ct's seg.nii.gz (default: the adrenal glands), "
                   "each on a 1 mm cube around it")
    b.add_argument("--all-structures", action="store_true",
                   help="with --real-ct: every label of --min-voxels voxels or more (and the --adrenal-labels), "
                        "distorted and refined on the CT's own grid with --prior auto (default errors: mixture); adds a per-structure table")
    b.add_argument("--unseen-classes", type=int, default=0, metavar="N",
                   help="N generated shapes of the classes the general prior never trained on (branching, node; "
                        "10-200 mm), each in a synthetic CT, refined with --prior auto (default errors: mixture)")
    b.add_argument("--unseen-seed", type=int, default=None, metavar="S",
                   help="--unseen-classes: case i is drawn and distorted with seed S + i (default: the bench's "
                        "20000); another S is a fresh sample of the same classes")
    b.add_argument("--min-voxels", type=int, default=300, help="--all-structures: smallest label scored (voxels)")
    b.add_argument("--adrenal-labels", default="8,9",
                   help="--all-structures: labels that are adrenal glands, for --prior auto (TotalSegmentator: 8,9)")
    b.add_argument("--nsd-mm", type=float, default=None,
                   help="NSD tolerance in mm (default: 1; with --all-structures the CT's coarsest voxel side; "
                        "with --unseen-classes each case's voxel)")
    b.add_argument("--per-label", type=int, default=None,
                   help="distortions of each --real-ct label (default: 10; 3 with --all-structures)")
    b.add_argument("--error-units", choices=("mm", "voxel"), default="mm",
                   help="--all-structures: the error library's sizes in mm (default) or in voxels of the CT's grid "
                        "(a brush of 1-2 voxels: harsher on a 3 mm CT)")
    b.add_argument("--prior-sa", help="S+A prior (default: the shipped one)")
    b.add_argument("--study", action="store_true", help="also run study mode on all cases")
    b.add_argument("--study-recipe", choices=["fast", "denoise", "paper"], default=None,
                   help="study mode's recipe (default: fast; denoise with --all-structures or --unseen-classes)")
    b.add_argument("--errors", default=None, metavar="FAMILY",
                   help="annotation errors of the cases: paper (the v1 generator, default), an error-library family "
                        "(overpaint, slab, thick_slice, holes, leak, missing_part, oversmooth), mixture (or mix), "
                        "or all; with --all-structures default mixture. Held out of all training and tuning "
                        "(heldout_errors): elastic, fill_between, shift, polygon, heldout_mixture, or heldout (each of them)")
    common(b)
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("train-prior", help="train a shape prior on the ALAN shapes")
    t.add_argument("--data", default=default_alan(), help="ALAN shapes (.npz with train_shapes, val_shapes)")
    t.add_argument("--out", default="adrenal_prior.safetensors",
                   help="the prior, rewritten at every better validation; an existing file is replaced only "
                        "with --overwrite or --resume")
    t.add_argument("--overwrite", action="store_true", help="replace a prior that exists at --out")
    t.add_argument("--minutes", type=float, default=72.0, help="training budget in minutes")
    t.add_argument("--max-steps", type=int, default=100000, help="stop after this many steps")
    t.add_argument("--batch", type=int, default=16, help="shapes per step")
    t.add_argument("--threads", type=int, default=2, help="torch threads")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay over the budget)")
    t.add_argument("--val-every", type=int, default=150, help="steps between validations (best checkpoint kept)")
    t.add_argument("--resume", help="checkpoint file to resume from and update")
    t.add_argument("--init-from", help="warm start from this prior (new MLP inputs start at zero weight)")
    t.add_argument("--annotation-sigmas", default="0,1,2",
                   help="blur sigmas (voxels) of the annotation inputs of the MLP; '' = the paper's MLP")
    t.add_argument("--appearance", action="store_true", help="train S+A on synthetic CT phantoms")
    t.add_argument("--errors", default="library", choices=["library", "paper"],
                   help="annotation errors to train on: the error library's mixture, or the paper's generator only")
    t.add_argument("--hold-out", action="append", metavar="FAMILY",
                   help="leave this error family out of training (repeatable), e.g. thick_slice")
    t.add_argument("--source", default="alan", choices=["alan", "anatomy"],
                   help="alan: adrenal shapes at 1 mm; anatomy: generated anatomy-like shapes + rescaled ALAN "
                        "(the general prior, working scale chosen per structure)")
    t.add_argument("--appearance-norm", default="window", choices=["window", "case"],
                   help="S+A image normalisation: the CT window (HU) or per case relative to the annotation (any modality)")
    t.add_argument("--p-mr", type=float, default=0.3,
                   help="with --appearance-norm case: share of MR-like training images (the rest synthetic CT)")
    t.add_argument("--p-voxel-errors", type=_fraction, default=0.0,
                   help="share of training annotations whose error sizes are read in voxels of the training cube "
                        "instead of mm (a brush of 1-2 of the scan's voxels on a large structure), 0-1")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda")
    t.add_argument("--workers", type=int, default=0, help="processes making batches (0: one thread)")
    t.add_argument("--points", type=int, default=4096, help="query points per shape and step")
    t.add_argument("--reuse", type=int, default=1,
                   help="steps served by each batch made on CPU, mirrored differently (for a GPU that outpaces the CPUs)")
    t.set_defaults(func=cmd_train_prior)

    bt = sub.add_parser("batch", help="refine many cases, one by one, on a local process pool or a Ray cluster")
    bt.add_argument("--manifest", help="CSV with columns case,mask and optionally image,label (a value or a "
                    ".seg.nrrd segment name),structure (what the mask is, for --prior auto); relative paths are "
                    "relative to the CSV")
    bt.add_argument("--cases", metavar="DIR", help="folder of cases (the rules of Slicer's batch: sub-folders, "
                    "NAME.nii.gz + NAME.seg.nrrd / NAME_seg.nii.gz pairs, or masks alone; a sub-folder of "
                    "TotalSegmentator's, ct.nii.gz + segmentations/, is one case, each mask file a segment)")
    bt.add_argument("--out", required=True, help="output folder: <case>.nii.gz or <case>.seg.nrrd, summary.csv")
    bt.add_argument("--label", help="label value or name for cases without one; several separated by ';' "
                    "('8;9') or 'all' refine each into one .seg.nrrd per case (default: the only structure; "
                    "every segment of a .seg.nrrd)")
    bt.add_argument("--workers", type=int, help="local worker processes (default: one per core; 0: this process)")
    bt.add_argument("--ray", metavar="auto|ADDRESS", help="run on a Ray cluster instead (pip install 'nearslicer[ray]')")
    bt.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs (a fraction allowed) per case on Ray")
    bt.add_argument("--resume", action="store_true", help="skip the cases an earlier run of this batch finished")
    bt.add_argument("--overwrite", action="store_true", help="replace the outputs and summary of an earlier batch")
    bt.add_argument("--shape-only", action="store_true", help="do not use the images' intensities")
    common(bt)
    no_harm(bt)
    image_voxel_flag(bt)
    bt.set_defaults(func=cmd_batch)

    s = sub.add_parser("study", help="study mode: train on a set of cases jointly (transductive NeAR), refine them all")
    s.add_argument("--masks", help="folder of cases: masks (.nii.gz, .nii, .nrrd, .mha, .seg.nrrd), one case per file, or image + "
                        "segmentation pairs (NAME.nii.gz + NAME.seg.nrrd / NAME_seg.nii.gz) or one sub-folder per case "
                        "(the same rules as Slicer's refineStudy)")
    s.add_argument("--images", help="folder of CTs named like the masks (optional: shape-only without)")
    s.add_argument("--manifest", help="CSV with columns name (or case: a batch manifest), mask and optionally image, "
                   "label, structure (what the mask is, for --prior auto), instead of folders")
    s.add_argument("--out", required=True,
                   help="output folder (not the masks' or images' folder): <case>.nii.gz, study_prior.*, "
                   "summary.csv, " + CHECKPOINT_NAME)
    s.add_argument("--label", help="label value (or its name: a .seg.nrrd segment, or a NIfTI label table) of "
                   "multilabel masks")
    s.add_argument("--prior", default="auto",
                   help="prior to adapt: auto (default: the adrenal prior when every case names an adrenal gland, "
                   "by --structure, .seg.nrrd segment name or file name, the general prior when none does; a study "
                   "that mixes them is refused), adrenal, anatomy or a .safetensors path")
    s.add_argument("--structure", help="what every mask is (e.g. 'adrenal gland'), for --prior auto (a manifest's "
                   "structure column wins)")
    s.add_argument("--split-by-prior", action="store_true",
                   help="with --prior auto, cases that ask for different priors (adrenal glands among other "
                   "structures) are run as one study per prior, each in OUT/<prior>/ (default: refused)")
    s.add_argument("--recipe", default="denoise", choices=["denoise", "fast", "paper"],
                   help="denoise (default): adapt the prior to recover (its reconstruction of) each annotation from a re-distorted copy, "
                   "then refine every case with it; fast: warm-started transductive NeAR, early stop; "
                   "paper: the paper's recipe")
    s.add_argument("--epochs", type=int, help="maximum epochs (default: 6 denoise, 60 fast, 1500 paper)")
    s.add_argument("--l2sp", type=float, help="denoise: weight of the pull towards the prior's weights (default 1e-3)")
    s.add_argument("--preset", choices=["fast", "default", "quality"],
                   help="denoise: the refine preset every case is refined with (default: default)")
    s.add_argument("--denoise-targets", choices=["prior", "annotation"],
                   help="denoise: train towards the prior's reconstruction of each annotation (default) or the "
                   "annotation itself (the recipe before 2026-11-28)")
    no_harm(s, staircase=False)
    image_voxel_flag(s)
    s.add_argument("--resume", action="store_true", help=f"continue from <out>/{CHECKPOINT_NAME} if it exists")
    s.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier study in --out")
    s.add_argument("--shape-only", action="store_true", help="ignore the images even with an S+A prior")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_study)

    rp = sub.add_parser("report", help="an HTML page to review a refined batch (opens from disk, no network)")
    rp.add_argument("--batch", required=True, help="batch output folder (summary.csv of nearslicer batch, or "
                    "nearslicer_summary.csv of Slicer's refineStudy)")
    rp.add_argument("--out", help="the page (default: BATCH/report.html); pictures go to <page name>_files/ beside it")
    rp.add_argument("--no-full", action="store_true", help="thumbnails only, no full report picture per case")
    rp.add_argument("--overwrite", action="store_true", help="replace an earlier page and its pictures")
    rp.add_argument("--verbose", action="store_true", help="print each case as its pictures are drawn")
    rp.set_defaults(func=cmd_report)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slicer's Cancel of a batch, ``timeout``, a cluster's scheduler): the same clean-up as a
    Ctrl-C (no temporary file left, a pool's workers stopped), then exit status 143."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)  # engine warnings are printed as one-liners instead
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: keep the default behaviour
        previous = None
    try:
        return _main(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args) -> int:
    try:
        return int(args.func(args) or 0)
    except RefinementError as exc:  # the engine failed on valid input: not the user's error
        if args.debug:
            raise
        print(f"nearslicer: error: {exc}", file=sys.stderr)
        return 1
    except NeARError as exc:
        if args.debug:
            raise
        print(f"nearslicer: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as exc:
        if args.debug:
            raise
        print(f"nearslicer: error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 1
    except Terminated:
        print("nearslicer: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("nearslicer: interrupted", file=sys.stderr)
        return 130


def run(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """The ``nearslicer`` command: ``main``, then exit with its status; a process that torchrun
    started exits through ``distributed.exit_process`` (no interpreter teardown: see there)."""
    code = main(argv)
    world = os.environ.get("WORLD_SIZE", "1").strip()
    if world.isdigit() and int(world) > 1:
        from .distributed import exit_process

        exit_process(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
