"""A/B of the image check (``image_evidence``): ``nearslicer bench`` with it (``on``) and with it
switched off (``off``: ``refine.undo_contradicted`` replaced by one that undoes nothing), on the same
cases and seeds.

    PYTHONPATH=NeARSlicer .venv/bin/python benchmarks/image_check_ab.py on|off bench ARGS...

e.g. ``on bench --real-ct ../shared/data/totalseg_example --errors mixture --json on.json``. Results
of 2026-11-28: ``benchmarks/results/image_check_ab_*.json`` (README "Do no harm with the image").
"""
import sys

import NeARSlicerLib.refine as refine
from NeARSlicerLib.cli import main
from NeARSlicerLib.image_evidence import Verdict

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("on", "off"):
        sys.exit(__doc__)
    if sys.argv[1] == "off":
        refine.undo_contradicted = lambda annotation, refined, *args, **kwargs: (refined > 0, Verdict(0, 0, 0, True))
    sys.exit(main(sys.argv[2:]))
