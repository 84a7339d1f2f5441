"""A NIfTI label map's label table (TotalSegmentator's multi-label output): its names choose labels,
name segments and say what a structure is for --prior auto; files without one read as before."""
import json
import struct
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from label_table_files import caret_xml as _caret_xml, write_with_extension as _write_with_extension

from NeARSlicerLib.batch import BatchCase, _segments_to_refine, segment_name, structure_of
from NeARSlicerLib.cli import main
from NeARSlicerLib.errors import InputError
from NeARSlicerLib.io import read_mask
from NeARSlicerLib.label_table import label_names
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.study import load_cases

NAMES = {1: "spleen", 2: "adrenal_gland_left", 3: "Gland & <odd> name"}


@pytest.fixture
def labelled(tmp_path):
    """A label map of three structures (the gland-shaped one is label 2) whose table names them."""
    array = np.zeros((64, 64, 64), np.uint8)
    array[2:8, 2:8, 2:8] = 1
    array[adrenal_phantom(0)] = 2
    array[56:60, 56:60, 56:60] = 3
    path = tmp_path / "labels.nii.gz"
    _write_with_extension(path, array, _caret_xml(NAMES))
    return path, array


@pytest.mark.parametrize("name", ["labels.nii", "labels.nii.gz"])
def test_the_table_is_read_from_plain_and_compressed_nifti(tmp_path, name):
    array = np.zeros((8, 8, 8), np.uint8)
    array[2:4, 2:4, 2:4] = 2
    path = tmp_path / name
    _write_with_extension(path, array, _caret_xml(NAMES))
    assert label_names(path) == NAMES
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), array), "the voxels moved"


def test_the_example_ct_s_totalsegmentator_labels_are_named(shared_data):
    names = label_names(shared_data / "totalseg_example" / "seg.nii.gz")
    assert names[8] == "adrenal_gland_right" and names[9] == "adrenal_gland_left" and names[1] == "spleen"


def test_a_label_is_chosen_by_name_and_names_its_segment_and_structure(labelled):
    path, array = labelled
    mask, _, info = read_mask(str(path), label="ADRENAL_GLAND_LEFT ")
    assert np.array_equal(mask, array == 2) and info["label"] == 2 and info["label_name"] == "adrenal_gland_left"
    assert segment_name(info) == "adrenal_gland_left" and structure_of(str(path), None, info) == "adrenal_gland_left"
    # --structure still wins; a value without a name in the table is Label_<value>
    assert structure_of(str(path), "spleen", info) == "spleen"
    _, _, by_value = read_mask(str(path), label=3)
    assert segment_name(by_value) == "Gland & <odd> name"
    # a batch names the segment by the table (the summary's segment column)
    chosen, *_ = _segments_to_refine(BatchCase("c", str(path), label="2"))
    assert [(n, v, s) for n, v, _, s in chosen] == [("adrenal_gland_left", 2, "adrenal_gland_left")]


def test_clear_errors_name_the_table_s_labels(labelled):
    path, _ = labelled
    with pytest.raises(InputError, match=r"labels 1 \(spleen\), 2 \(adrenal_gland_left\), 3 \(Gland & <odd> name\): "
                                         r"pass --label \(a value or a name\)"):
        read_mask(str(path))
    with pytest.raises(InputError, match=r"label 'liver' is not a name in the label table of labels.nii.gz "
                                         r"\(labels present: spleen, adrenal_gland_left, Gland & <odd> name\)"):
        read_mask(str(path), label="liver")
    # a misspelt name is refused with the table's closest names
    with pytest.raises(InputError, match=r"label 'adrenal_gland_lft' is not a name in the label table of "
                                         r"labels.nii.gz; did you mean 'adrenal_gland_left'\? \(labels present: "):
        read_mask(str(path), label="adrenal_gland_lft")


def test_a_label_of_the_table_that_the_scan_lacks_is_named(tmp_path):
    """TotalSegmentator's table names all its classes; a scan holds some. Asking for one it lacks says
    so by name, and lists the labels present with their names."""
    array = np.zeros((16, 16, 16), np.uint8)
    array[2:6, 2:6, 2:6] = 1
    array[9:13, 9:13, 9:13] = 3
    path = tmp_path / "partial.nii.gz"
    _write_with_extension(path, array, _caret_xml(NAMES))
    present = r"\(labels present: 1 \(spleen\), 3 \(Gland & <odd> name\)\)"
    with pytest.raises(InputError, match=r"label 'adrenal_gland_left' \(value 2\) has no voxels in partial.nii.gz "
                                         + present):
        read_mask(str(path), label="adrenal_gland_left")
    with pytest.raises(InputError, match=r"label 2 \(adrenal_gland_left\) has no voxels in partial.nii.gz " + present):
        read_mask(str(path), label=2)


def test_files_without_a_table_or_with_a_damaged_one_read_as_before(tmp_path):
    array = np.zeros((8, 8, 8), np.uint8)
    array[2:4, 2:4, 2:4] = 5
    plain = tmp_path / "plain.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(plain))
    damaged = tmp_path / "damaged.nii.gz"
    _write_with_extension(damaged, array, b"<LabelTable><Label Key='5'>unclosed</LabelTable>")
    other = tmp_path / "other.nii"
    _write_with_extension(other, array, b"some other extension")
    for path in (plain, damaged, other):
        assert label_names(path) == {}
        mask, _, info = read_mask(str(path), label=5)
        assert mask.sum() == 8 and "label_name" not in info and segment_name(info) == "Label_5"
    with pytest.raises(InputError, match=r"label 'gland' is not an integer, and plain.nii.gz names no labels \(labels present: \[5\]\); names come from a .seg.nrrd's segment list or a NIfTI label table"):
        read_mask(str(plain), label="gland")
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(other.read_bytes()[:360])
    assert label_names(truncated) == {} and label_names(tmp_path / "missing.nii") == {}


@pytest.mark.parametrize("label, prior", [("adrenal_gland_left", "adrenal-s"), ("1", "anatomy-s")])
def test_refine_picks_the_prior_by_the_label_s_name(labelled, tmp_path, capsys, label, prior):
    """--prior auto reads what the table says the label is: the adrenal prior for a TotalSegmentator
    adrenal gland of a multi-label file (before: the general prior, the file name says nothing)."""
    path, _ = labelled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["refine", "--mask", str(path), "--label", label, "--out", str(tmp_path / "out.nii.gz"),
                     "--preset", "fast", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["prior"] == prior and facts["structure"] == NAMES[int(facts["label"])]
    assert facts["label"] == (2 if label == "adrenal_gland_left" else 1)


def test_a_study_manifest_names_its_cases_by_the_table(labelled, tmp_path):
    path, _ = labelled
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"name,mask,label\na,{path},adrenal_gland_left\nb,{path},1\n")
    cases = load_cases(manifest=str(manifest))
    assert [(c.segment, c.label, c.structure) for c in cases] == [("adrenal_gland_left", "2", "adrenal_gland_left"),
                                                                   ("spleen", "1", "spleen")]


def test_the_bench_names_real_ct_structures_by_the_table_whatever_their_numbers(shared_data, tmp_path):
    """bench --real-ct --all-structures on a TotalSegmentator map numbered otherwise (v1: the adrenal
    glands 11 and 12, other structures at 8 and 9): the table names each case's structure, so the
    adrenal glands get the adrenal prior and labels 8 and 9 do not."""
    from NeARSlicerLib.bench import real_ct_structures
    from NeARSlicerLib.prior import is_adrenal_structure

    folder = shared_data / "totalseg_example"
    reference = sitk.ReadImage(str(folder / "seg.nii.gz"))
    labels = sitk.GetArrayFromImage(reference)
    moved = np.zeros_like(labels)
    for old, new in ((8, 11), (9, 12), (1, 8), (3, 9)):
        moved[labels == old] = new
    seg = tmp_path / "seg.nii.gz"
    _write_with_extension(seg, moved, _caret_xml({8: "spleen", 9: "kidney_left", 11: "adrenal_gland_right",
                                                   12: "adrenal_gland_left"}), reference)
    cases = real_ct_structures(folder / "ct.nii.gz", seg, min_voxels=10 ** 9, per_label=1)
    named = {c.name: c.structure for c in cases}
    assert named == {"label8_d0": "spleen", "label9_d0": "kidney_left", "label11_d0": "adrenal_gland_right",
                     "label12_d0": "adrenal_gland_left"}
    assert [is_adrenal_structure(n) for n in named.values()] == [False, False, True, True]


@pytest.mark.parametrize("endian", ["<", ">"])
def test_the_table_is_read_from_a_nifti_2_header_of_either_byte_order(tmp_path, endian):
    """NIfTI-2 (540-byte header, 64-bit vox_offset), little- and big-endian: only the header and its
    extensions are read, so a header alone shows the table."""
    content = _caret_xml(NAMES)
    size = 8 + len(content) + (-(8 + len(content)) % 16)
    header = bytearray(540)
    header[0:4] = struct.pack(endian + "i", 540)
    header[4:12] = b"n+2\0\r\n\x1a\n"
    header[168:176] = struct.pack(endian + "q", 544 + size)
    data = bytes(header) + b"\x01\0\0\0" + struct.pack(endian + "ii", size, 0) + content.ljust(size - 8, b"\0")
    path = tmp_path / "labels.nii"
    path.write_bytes(data + bytes(8))
    assert label_names(path) == NAMES
