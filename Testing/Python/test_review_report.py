"""The batch review report (``nearslicer report``) and the review status it shares with Slicer.

Batch folders are made by ``batch_folders`` with the real engine on phantom cases. The page is
checked in headless Chromium: screenshot, DOM after its script sorted and filtered the rows, the
pictures it links, and the requests it makes.
"""

from __future__ import annotations

import csv
import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

import headless_browser as browser
from batch_folders import (  # noqa: F401  (pytest fixtures)
    CONTRACT_COLUMNS,
    OLD_COLUMNS,
    SEGMENT,
    batch_folder,
    phantom_cases,
    study_folder,
)
from NeARSlicerLib.errors import InputError
from NeARSlicerLib.output_safety import OutputError
from NeARSlicerLib.review_report import build_report, change_centre, load_case, report_facts, save_thumbnail
from NeARSlicerLib.review_status import first_unreviewed, read_batch, set_review, sort_rows

REPO = Path(__file__).resolve().parents[2]
README_PICTURE = REPO / "Resources" / "Screenshots" / "NeARSlicer-review-report.png"


def _csv(path):
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        return list(reader.fieldnames), list(reader)


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Links(HTMLParser):
    """Every src/href of a page, and the tbody rows' data attributes in document order."""

    def __init__(self):
        super().__init__()
        self.links, self.rows = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key):
                self.links.append((tag, attrs[key]))
        if tag == "tr" and "data-index" in attrs:
            self.rows.append(attrs)


def _parse(text):
    parser = _Links()
    parser.feed(text)
    return parser


def _change(row):
    before, after = float(row["voxels_before"]), float(row["voxels_after"])
    return 100.0 * (after - before) / before


# ------------------------------------------------------------------------ rows and review status
def test_both_batch_layouts_are_read(batch_folder, study_folder):
    summary, rows = read_batch(batch_folder)
    assert summary.name == "summary.csv" and _csv(summary)[0] == CONTRACT_COLUMNS
    assert [r.case for r in rows] == ["case01", "case02", "case03", "case04", "case99"]
    assert [r.failed for r in rows] == [False] * 4 + [True]
    for row, raw in zip(rows, _csv(summary)[1]):
        if raw["error"]:
            assert row.change_percent is None
        else:
            assert row.change_percent == pytest.approx(_change(raw))
            assert row.dice == pytest.approx(float(raw["dice"]))
    old, old_rows = read_batch(study_folder)
    assert old.name == "nearslicer_summary.csv" and _csv(old)[0] == OLD_COLUMNS
    assert [r.segment for r in old_rows[:4]] == [SEGMENT] * 4
    assert old_rows[0].confidence is None and old_rows[0].text("prior") == "" and old_rows[0].review == ""
    with pytest.raises(InputError, match="not a batch folder"):
        read_batch(batch_folder.parent / "inputs")


def test_review_decision_is_written_atomically_and_keeps_everything_else(study_folder):
    summary = study_folder / "nearslicer_summary.csv"
    header, before = _csv(summary)
    assert "review" not in header
    assert set_review(study_folder, "case02", SEGMENT, "needs_edit") == 1
    header2, after = _csv(summary)
    assert header2 == header + ["review"]
    assert [{k: r[k] for k in header} for r in after] == before, "other columns and rows unchanged"
    assert [r["review"] for r in after] == ["", "needs_edit", "", "", ""]
    set_review(summary, "case02", SEGMENT, "accepted")  # the CSV path works too; a decision can change
    assert read_batch(study_folder)[1][1].review == "accepted"
    assert sorted(p.name for p in study_folder.iterdir() if p.name.startswith(".")) == [], "no temporary files left"
    untouched = _digest(summary)
    with pytest.raises(InputError, match="'case07' / segment 'left adrenal' is not in"):
        set_review(study_folder, "case07", SEGMENT, "rejected")
    with pytest.raises(InputError, match="review status must be one of"):
        set_review(study_folder, "case01", SEGMENT, "maybe")
    assert _digest(summary) == untouched


def test_review_order_and_resume_point(tmp_path):
    """Largest |change| first (lowest Dice breaks ties); lowest confidence first; failed and unknown last."""
    (tmp_path / "summary.csv").write_text(
        "case,segment,voxels_before,voxels_after,dice,confidence,error,review\n"
        "a,1,100,101,0.99,0.90,,accepted\n"
        "b,1,100,60,0.75,0.20,,\n"
        "c,1,100,130,0.85,,,\n"
        "d,1,,,,0.10,InputError: empty,\n"
        "e,1,100,140,0.80,0.50,,rejected\n")
    _, rows = read_batch(tmp_path)
    assert [r.case for r in sort_rows(rows, "change")] == ["b", "e", "c", "a", "d"]
    assert [r.case for r in sort_rows(rows, "confidence")] == ["b", "e", "a", "c", "d"]
    by_change = sort_rows(rows, "change")
    assert by_change[first_unreviewed(by_change)].case == "b"
    set_review(tmp_path, "b", "1", "needs_edit")
    by_change = sort_rows(read_batch(tmp_path)[1], "change")
    assert by_change[first_unreviewed(by_change)].case == "c", "the queue resumes at the first row left undecided"
    with pytest.raises(InputError, match="review order"):
        sort_rows(rows, "size")


# ------------------------------------------------------------------------ pictures
def test_thumbnail_goes_through_the_largest_change(tmp_path):
    original = np.zeros((20, 30, 40), bool)
    original[5:15, 10:20, 10:30] = True
    refined = original.copy()
    refined[12, 10:20, 30:36] = True  # the change: slab at k=12, i=30..35
    refined[5:8, 14, 12] = False  # a smaller change elsewhere
    centre = change_centre(original, refined)
    assert centre[0] == 12 and 30 <= centre[2] <= 35
    assert change_centre(original, original) == (9, 14, 19), "no change: the masks' centre (k 5-14, j 10-19, i 10-29)"
    path = tmp_path / "t.png"
    save_thumbnail(path, None, original, refined, (1.0, 1.0, 2.0))
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert pixels.shape == (130, 390, 3)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    blue = (pixels[..., 2] > 180) & (pixels[..., 0] < 90)
    assert red.sum() > 50 and blue.sum() > 50, "both outlines drawn"


def test_load_case_reads_seg_nrrd_before_and_after_accept(batch_folder, phantom_cases, tmp_path):
    from NeARSlicerLib.io import read_segments, write_segmentation

    summary, rows = read_batch(batch_folder)
    case = phantom_cases[-1]
    image, original, refined, spacing = load_case(rows[3], batch_folder)
    assert np.array_equal(original, case["rough"] > 0) and np.array_equal(refined, case["refined"] > 0)
    assert image is not None and np.allclose(image, case["ct"]) and spacing == (1.5, 1.5, 1.5)
    # as Slicer's Accept leaves it: the refined segment has the name, the original "(original)"
    segments, grid = read_segments(rows[3].text("output"))
    accepted = batch_folder / "accepted.seg.nrrd"
    write_segmentation(accepted, [(SEGMENT + " (original)", segments[0]["mask"], (1, 0, 0)),
                                  (SEGMENT, segments[1]["mask"], (0, 0, 1))], grid)
    rows[3].raw["output"] = str(accepted)
    _, original2, refined2, _ = load_case(rows[3], batch_folder)
    assert np.array_equal(original2, original) and np.array_equal(refined2, refined)
    rows[3].segment = "spleen"
    with pytest.raises(InputError, match=r"accepted.seg.nrrd has no segments 'spleen' and 'spleen \(NeAR\)' "
                                         r"\(it has: left adrenal, left adrenal \(original\)\)"):
        load_case(rows[3], batch_folder)


# ------------------------------------------------------------------------ the page (files)
def test_report_page_files_and_output_safety(batch_folder):
    inputs = {p: _digest(p) for p in batch_folder.parent.rglob("*") if p.is_file()}
    page = build_report(batch_folder)
    assert page == batch_folder / "report.html"
    assert {p: _digest(p) for p in inputs} == inputs, "no input changed"
    facts = report_facts(page)
    assert facts == {"n-cases": 5, "n-failed": 1, "rows": 5}
    # the engine's warnings recorded in the summary are shown beside each row
    assert "this prior is shape-only: the image was not used" in page.read_text()
    assert "mm slices" not in page.read_text()  # none of these phantoms was painted on thick slices
    parsed = _parse(page.read_text())
    images = [src for tag, src in parsed.links if tag == "img"]
    assert len(images) == 4, "one thumbnail per refined row, none for the failed case"
    for _, link in parsed.links:
        assert not re.match(r"[a-z]+:", link), f"page links {link}: everything is beside it"
        assert (page.parent / unquote(link)).is_file(), f"{link} missing"
    assert len([1 for tag, href in parsed.links if tag == "a"]) == 4, "each thumbnail opens the case's full report"
    # existing page: refused, left as it was; --overwrite replaces it
    before = _digest(page)
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        build_report(batch_folder)
    assert _digest(page) == before
    with pytest.raises(InputError, match="must be an .html file"):
        build_report(batch_folder, out=batch_folder / "case01.nii.gz", overwrite=True)
    inputs_html = batch_folder.parent / "inputs" / "case01.html"  # an input under an .html name
    inputs_html.write_text("a user's file")
    (batch_folder / "summary.csv").write_text((batch_folder / "summary.csv").read_text().replace(
        "case01_ct.nii.gz", "case01.html", 1))
    with pytest.raises(OutputError, match="is the input"):
        build_report(batch_folder, out=inputs_html, overwrite=True)
    assert inputs_html.read_text() == "a user's file"
    (batch_folder / "summary.csv").write_text((batch_folder / "summary.csv").read_text().replace(
        "case01.html", "case01_ct.nii.gz", 1))
    set_review(batch_folder, "case03", "Label_1", "rejected")
    # a case the engine found painted on thick slices (batch's painted_slices_mm) says so in its row
    summary = batch_folder / "summary.csv"
    with open(summary, newline="") as f:
        reader = csv.DictReader(f)
        header, table = reader.fieldnames, list(reader)
    for r in table:
        if r["case"] == "case02":
            r["painted_slices_mm"], r["slices_interpolated"] = "4.0", "yes"
        if r["case"] == "case01":
            r["painted_slices_mm"], r["slices_interpolated"] = "5.0", "no"  # --keep-staircase
            r["image_restored"], r["image_withdrawn"] = "71", "13"  # the image check undid part of the change
        if r["case"] == "case03":
            r["image_restored"], r["image_withdrawn"] = "0", "0"  # checked, nothing undone: nothing to say
    with open(summary, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        w.writeheader()
        w.writerows(table)
    build_report(batch_folder, overwrite=True)
    rows = {r["data-case"]: r for r in _parse(page.read_text()).rows}
    assert rows["case03"]["data-review"] == "rejected", "a decision shows once the page is made again"
    text = page.read_text()
    assert text.count("painted on 4.0 mm slices, interpolated for NeAR: the refined surface replaces its staircase") == 1
    assert text.count("painted on 5.0 mm slices: the refined surface replaces its staircase") == 1
    assert text.count("checked against the image: 71 voxels the prior removed were put back and 13 it added "
                      "were taken out") == 1
    assert text.count("checked against the image") == 1


def test_report_of_a_refine_study_folder_and_a_missing_output(study_folder):
    (study_folder / "case02.seg.nrrd").unlink()
    (study_folder / "review").mkdir()
    page = build_report(study_folder, out=study_folder / "review" / "week 1 #2.html")  # a name URLs must escape
    text = page.read_text()
    assert report_facts(page) == {"n-cases": 5, "n-failed": 1, "rows": 5}
    assert "case02.seg.nrrd not found" in text
    assert "no CT recorded for this case" in text, "refineStudy does not record the CT: said, not hidden"
    images = [src for tag, src in _parse(text).links if tag == "img"]
    assert len(images) == 3 and all(src.startswith("week%201%20%232_files/") for src in images)
    assert all((page.parent / unquote(src)).is_file() for src in images)


def test_a_batch_folder_copied_for_review_shows_its_own_outputs(batch_folder, tmp_path):
    """A lead copies the batch folder to a share and deletes the working copy: the summary's absolute
    output paths point at the old place, but the outputs are beside the summary; the report (and
    Slicer's review queue, through the same ``BatchRow.path``) read those. Before: 'output ... not found'."""
    import shutil

    copy = tmp_path / "shared drive" / "batch"
    shutil.copytree(batch_folder, copy)
    rows = read_batch(copy)[1]
    recorded = [Path(r.text("output")) for r in rows if r.text("output")]
    assert recorded and all(p.parent == batch_folder for p in recorded)
    for p in recorded:
        p.unlink(missing_ok=True)  # the working copy is gone
    assert all(r.path("output", copy).parent == copy for r in rows if r.text("output"))
    page = build_report(copy)
    text = page.read_text()
    images = [src for tag, src in _parse(text).links if tag == "img"]
    assert "not found" not in text and len(images) >= len(recorded)
    assert all((page.parent / unquote(src)).is_file() for src in images)


def test_a_case_of_several_segments_has_its_files_read_once(tmp_path, monkeypatch):
    """The rows of one case (a label map's segments in one .seg.nrrd, with its CT) read that file and the
    CT once, not once per row: a full-resolution CT and its 117 structures took gigabytes per row."""
    import SimpleITK as sitk

    from NeARSlicerLib import io
    from NeARSlicerLib.batch import BatchCase, run_batch
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom

    grid = Grid((40, 40, 120), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    labels = np.zeros(grid.shape, np.uint8)
    for value in (1, 2, 3):
        labels[:, :, 40 * (value - 1):40 * value][adrenal_phantom(seed=value, shape=(40, 40, 40))] = value
    sitk.WriteImage(grid.to_sitk(labels), str(tmp_path / "seg.nii.gz"))
    io.write_image(str(tmp_path / "ct.nii.gz"), ct_phantom(labels > 0, seed=1), grid)
    run_batch([BatchCase("scan", str(tmp_path / "seg.nii.gz"), str(tmp_path / "ct.nii.gz"), "all")], tmp_path / "out",
              {"preset": "fast"}, progress_bar=False)
    reads = {"segments": 0, "image": 0}

    def counted(name, read):
        def wrapper(*args, **kwargs):
            reads[name] += 1
            return read(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(io, "read_segments", counted("segments", io.read_segments))
    monkeypatch.setattr(io, "read_image", counted("image", io.read_image))
    page = build_report(tmp_path / "out", full_reports=False)
    assert reads == {"segments": 1, "image": 1}
    assert len(list((tmp_path / "out" / "report_files").glob("*_thumb.png"))) == 3 and "not shown" not in page.read_text()


def test_report_of_a_batch_where_every_case_failed(tmp_path):
    (tmp_path / "summary.csv").write_text("case,segment,error\na,,InputError: mask is empty\n")
    page = build_report(tmp_path)
    assert report_facts(page) == {"n-cases": 1, "n-failed": 1, "rows": 1}
    assert "InputError: mask is empty" in page.read_text() and not (tmp_path / "report_files").exists()


def test_cli_report(batch_folder, capsys):
    from NeARSlicerLib.cli import main

    assert main(["report", "--batch", str(batch_folder), "--no-full"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert not list((batch_folder / "report_files").glob("*_report.png"))
    assert main(["report", "--batch", str(batch_folder)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["report", "--batch", str(batch_folder.parent / "inputs")]) == 2
    assert "is not a batch folder" in capsys.readouterr().err


# ------------------------------------------------------------------------ the page in Chromium
def _thumbnail_bands(pixels, x0=18, x1=400):
    """Vertical runs (>= 100 px) where the thumbnail column is mostly not white: one per picture."""
    column = pixels[:, x0:x1, :3].astype(int)
    dark = (column.sum(axis=2) < 600).mean(axis=1) > 0.5
    bands, start = [], None
    for y, on in enumerate(list(dark) + [False]):
        if on and start is None:
            start = y
        elif not on and start is not None:
            if y - start >= 100:
                bands.append((start, y))
            start = None
    return bands


def test_screenshot_shows_one_row_per_case(batch_folder, tmp_path):
    from PIL import Image

    set_review(batch_folder, "case02", "Label_1", "accepted")  # decisions show in the picture too
    set_review(batch_folder, "case03", "Label_1", "needs_edit")
    page = build_report(batch_folder)
    assert [r["data-review"] for r in _parse(page.read_text()).rows] == ["", "accepted", "needs_edit", "", ""]
    shot = browser.screenshot(browser.url_of(page), tmp_path / "report.png", 1400, 900)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (900, 1400, 3)
    bands = _thumbnail_bands(pixels)
    assert len(bands) == 4, f"expected 4 case pictures (+ 1 failed row without), found bands {bands}"
    for y0, y1 in bands:
        rgb = pixels[y0:y1, 18:400].astype(int)
        red = ((rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)).sum()
        blue = ((rgb[..., 2] > 180) & (rgb[..., 0] < 90)).sum()
        assert red > 20 and blue > 20, f"row at y={y0}: red {red} / blue {blue} outline pixels"
    # the README's picture of the report, made here (kept when the checkout is read-only)
    try:
        from NeARSlicerLib.output_safety import atomic_write_bytes

        atomic_write_bytes(README_PICTURE, shot.read_bytes())
    except OSError:
        pass


def _dom_rows(url):
    dom = browser.dump_dom(url)
    rows = _parse(dom).rows
    assert rows, "no rows in the DOM"
    return rows


def test_sorting_and_filtering_run_in_the_browser(batch_folder):
    page = build_report(batch_folder)
    _, raw = _csv(batch_folder / "summary.csv")
    changes = {r["case"]: abs(_change(r)) for r in raw if not r["error"]}
    descending = sorted(changes, key=lambda c: -changes[c]) + ["case99"]
    ascending = sorted(changes, key=lambda c: changes[c]) + ["case99"]  # no number: last either way
    assert len(set(changes.values())) > 1
    file_order = [r["case"] for r in raw]
    down = [r["data-case"] for r in _dom_rows(browser.url_of(page, "sort=change&dir=desc"))]
    up = [r["data-case"] for r in _dom_rows(browser.url_of(page, "sort=change&dir=asc"))]
    assert down == descending and up == ascending
    assert down != file_order or up != file_order, "the script reordered the rows"
    by_case = [r["data-case"] for r in _dom_rows(browser.url_of(page, "sort=case&dir=desc"))]
    assert by_case == sorted(file_order, reverse=True)
    failed = _dom_rows(browser.url_of(page, "status=failed"))
    assert [r["data-case"] for r in failed if "hidden" not in r] == ["case99"]
    big = _dom_rows(browser.url_of(page, "minchange=10"))
    assert sorted(r["data-case"] for r in big if "hidden" not in r) == sorted(c for c in changes if changes[c] >= 10)


def test_page_makes_no_network_request(batch_folder, tmp_path):
    page = build_report(batch_folder)
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", text)
    # the detector works: a page with remote pictures is caught
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://127.0.0.1:9/a.png"><img src="https://example.invalid/b.png">'
                       "</body></html>")
    caught = browser.page_requests(browser.url_of(control))
    assert "http://127.0.0.1:9/a.png" in caught and "https://example.invalid/b.png" in caught
    assert browser.page_requests(browser.url_of(page, "sort=confidence&dir=asc")) == []
