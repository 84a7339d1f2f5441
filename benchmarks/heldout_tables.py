"""Print the README table of the held-out error processes from ``nearslicer bench --errors heldout`` JSONs.

Each JSON holds one result per process (``heldout_errors``: elastic, fill_between, shift, polygon,
heldout_mixture). Per data set and process: input, the best smoothing chosen with hindsight, the
product's shape-only and with-image defaults, DSC / NSD in %, and the cases the default with the image
made worse than their input by more than 1 DSC.

    python benchmarks/heldout_tables.py benchmarks/results/heldout_errors_alan_sa.json ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from NeARSlicerLib.bench import best_smoothing


NAMES = {"alan_sa": "ALAN val, phantom CT", "real_ct_adrenals": "real CT adrenals, 1 mm",
         "unseen_classes": "held-out shape classes", "all_structures": "real CT, every structure, 3 mm"}


def _cell(table: dict, method: str) -> str:
    row = table[method]
    return f"{row['dsc_mean']:.2f} / {row['nsd_mean']:.2f}"


def _worse(result: dict, method: str, by: float = 1.0) -> list[str]:
    inputs = {r["case"]: r["dsc"] for r in result["per_case"]["input"]}
    return [r["case"] for r in result["per_case"][method] if r["dsc"] < inputs[r["case"]] - by / 100]


def rows(path: Path) -> list[str]:
    results = json.loads(path.read_text())
    if "table" in results:  # a bench of one process writes its result alone
        results = {results["settings"].get("errors", "heldout_mixture"): results}
    out = []
    for family, result in results.items():
        table = result["table"]
        smooth = best_smoothing(result)
        n = table["input"]["cases"]
        worse = {m: len(_worse(result, m)) for m in ("NeAR S", "NeAR S+A")}
        stem = path.stem.replace("heldout_errors_", "")
        out.append(f"| {NAMES.get(stem, stem)} | {family} | {n} | {_cell(table, 'input')} | "
                   f"{_cell(table, smooth)} ({smooth}) | {_cell(table, 'NeAR S')} ({worse['NeAR S']}) | "
                   f"{_cell(table, 'NeAR S+A')} ({worse['NeAR S+A']}) |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", type=Path)
    args = p.parse_args()
    print("| cases | errors | n | input | best smoothing | NeAR S (worse) | NeAR S+A, default (worse) |")
    print("|---|---|---|---|---|---|---|")
    for path in args.json:
        print("\n".join(rows(path)))


if __name__ == "__main__":
    main()
