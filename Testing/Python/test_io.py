"""Reading/writing masks, images and Slicer segmentations with exact geometry."""

from __future__ import annotations

import os

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from NeARSlicerLib import io
from NeARSlicerLib.errors import InputError
from NeARSlicerLib.geometry import Grid


def _oblique() -> tuple:
    """Direction rotated 30 degrees about x, then 30 degrees about y."""
    a = np.radians(30)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    return tuple((ry @ rx).ravel())


OBLIQUE = _oblique()
GRID = Grid((10, 12, 14), (0.7, 0.8, 5.1), (-12.345678, 33.3, 7.1), OBLIQUE)


def box(grid: Grid = GRID, lo=(2, 3, 4), hi=(6, 9, 10)) -> np.ndarray:
    m = np.zeros(grid.shape, np.uint8)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
    return m


def write_sitk(path, array, grid: Grid = GRID) -> str:
    sitk.WriteImage(grid.to_sitk(array), str(path))
    return str(path)


# --- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"])
def test_write_mask_round_trip_keeps_voxels_and_geometry(tmp_path, ext):
    mask = box()
    path = tmp_path / f"out{ext}"
    io.write_mask(path, mask.astype(bool), GRID)
    back, grid, info = io.read_mask(path)
    assert back.dtype == np.uint8 and np.array_equal(back, mask)
    assert grid.same_as(GRID, tol=1e-4)
    assert info["label"] == 1
    assert [p for p in os.listdir(tmp_path) if p != f"out{ext}"] == []  # no temp file left behind


def test_write_image_round_trip(tmp_path):
    prob = np.random.default_rng(0).uniform(0, 1, GRID.shape).astype(np.float32)
    for ext in (".nii.gz", ".nrrd", ".mha"):
        io.write_image(tmp_path / f"p{ext}", prob, GRID)
        back, grid = io.read_image(tmp_path / f"p{ext}")
        assert back.dtype == np.float32 and np.array_equal(back, prob)
        assert grid.same_as(GRID, tol=1e-4)


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "out.nii.gz"
    io.write_mask(path, box(), GRID)
    before = path.read_bytes()

    def broken_write(img, name, *args):
        with open(name, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(io.sitk, "WriteImage", broken_write)
    with pytest.raises(RuntimeError, match="disk full"):
        io.write_mask(path, 1 - box(), GRID)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.nii.gz"]


def test_write_rejects_bad_masks_and_paths(tmp_path):
    with pytest.raises(InputError, match="only 0 and 1"):
        io.write_mask(tmp_path / "p.nii.gz", box() * 0.7, GRID)
    with pytest.raises(InputError, match="does not match grid shape"):
        io.write_mask(tmp_path / "p.nii.gz", box()[:-1], GRID)
    with pytest.raises(InputError, match=r"output p.mhd: give a file name ending in .nii.gz or .nii or .nrrd or .mha"):
        io.write_mask(tmp_path / "p.mhd", box(), GRID)  # a header + a data file: no single rename replaces both
    with pytest.raises(InputError, match="unsupported file type"):
        io.write_mask(tmp_path / "p.png", box(), GRID)
    with pytest.raises(InputError, match="output folder .*nope does not exist"):
        io.write_mask(tmp_path / "nope" / "p.nii.gz", box(), GRID)
    assert os.listdir(tmp_path) == []


# --- read_mask: label selection and errors ---------------------------------------------------
def test_multilabel_needs_a_label(tmp_path):
    lab = box() * 8
    lab[7:9, 2:4, 2:4] = 9
    path = write_sitk(tmp_path / "lab.nii.gz", lab)
    with pytest.raises(InputError, match=r"multilabel mask with labels \[8, 9\]: pass --label"):
        io.read_mask(path)
    m9, grid, info = io.read_mask(path, label=9)
    assert m9.sum() == 8 and set(np.unique(m9)) == {0, 1} and info["labels"] == [8, 9]
    assert io.read_mask(path, label="8")[0].sum() == box().sum()  # a CLI string works too
    # a whole number written as a decimal, as pandas writes an integer column with gaps (before: "not an integer")
    assert io.read_mask(path, label="9.0")[1:] == (grid, info) and io.read_mask(path, label=" 8.00 ")[2]["label"] == 8
    with pytest.raises(InputError, match=r"label '8.5' is not an integer"):
        io.read_mask(path, label="8.5")
    with pytest.raises(InputError, match=r"label 3 not found in mask \(labels present: \[8, 9\]\)"):
        io.read_mask(path, label=3)
    with pytest.raises(InputError, match="names no labels"):
        io.read_mask(path, label="liver")


def test_real_totalseg_labels(shared_data):
    path = shared_data / "totalseg_example" / "seg.nii.gz"
    # TotalSegmentator's label table names the labels in the message
    with pytest.raises(InputError, match=r"multilabel mask with labels 1 \(spleen\), 2 \(kidney_right\), .*pass --label"):
        io.read_mask(path)
    right, grid, info = io.read_mask(path, label=8)
    assert info["label_name"] == "adrenal_gland_right"
    left, _, _ = io.read_mask(path, label=9)
    assert 140 <= right.sum() <= 160 and 170 <= left.sum() <= 195  # README: ~150 and ~180 voxels
    assert grid.shape == (30, 101, 122) and grid.spacing == (3.0, 3.0, 3.0)
    ct, ct_grid = io.read_image(shared_data / "totalseg_example" / "ct.nii.gz")
    assert ct.dtype == np.float32 and ct_grid.same_as(grid)
    assert -1100 < float(np.median(ct[left == 1])) < 100


def test_empty_2d_and_unreadable_inputs(tmp_path):
    with pytest.raises(InputError, match="^mask is empty$"):
        io.read_mask(write_sitk(tmp_path / "e.nii.gz", np.zeros(GRID.shape, np.uint8)))
    img2d = sitk.GetImageFromArray(np.ones((20, 20), np.uint8))
    sitk.WriteImage(img2d, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="2D input"):
        io.read_mask(tmp_path / "flat.nii.gz")
    one_slice = Grid((1, 20, 20), (1, 1, 1), (0, 0, 0))
    with pytest.raises(InputError, match="2D input"):
        io.read_mask(write_sitk(tmp_path / "slice.nrrd", np.ones((1, 20, 20), np.uint8), one_slice))
    with pytest.raises(InputError, match="file not found"):
        io.read_mask(tmp_path / "missing.nii.gz")
    (tmp_path / "renamed.nii").write_bytes(open(write_sitk(tmp_path / "m.nii.gz", box()), "rb").read())
    with pytest.raises(InputError, match=r"cannot read mask .*renamed.nii: .*gzip-compressed: name it renamed.nii.gz"):
        io.read_mask(tmp_path / "renamed.nii")
    (tmp_path / "CT_series").mkdir()  # e.g. a DICOM series given as the image: said, not "unsupported file type"
    with pytest.raises(InputError, match="CT_series is a folder, not a file: .*DICOM series must be converted"):
        io.read_image(tmp_path / "CT_series")
    (tmp_path / "segmentations").mkdir()  # TotalSegmentator's folder of one mask per structure
    write_sitk(tmp_path / "segmentations" / "spleen.nii.gz", box())
    with pytest.raises(InputError, match=r"segmentations is a folder of 1 image or mask files, not a file: give one of "
                                         r"them \(e.g. spleen.nii.gz\), or its case folder to nearslicer batch --cases"):
        io.read_mask(tmp_path / "segmentations")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="cannot read mask"):
        io.read_mask(tmp_path / "junk.nii.gz")
    (tmp_path / "junk.seg.nrrd").write_bytes(b"NRRD0004\ntype: what\n\n")
    with pytest.raises(InputError, match="cannot read segmentation"):
        io.read_mask(tmp_path / "junk.seg.nrrd")
    with pytest.raises(InputError, match="unsupported file type"):
        io.read_mask(tmp_path / "mask.png")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 4, 5, 6), np.uint8), isVector=False), str(tmp_path / "t.nii.gz"))
    with pytest.raises(InputError, match="expected a 3D mask, got 4 dimensions"):
        io.read_mask(tmp_path / "t.nii.gz")
    soft = box().astype(np.float32) * 0.6
    with pytest.raises(InputError, match="non-integer values"):
        io.read_mask(write_sitk(tmp_path / "soft.nrrd", soft))


@pytest.mark.parametrize("ext", [".mhd", ".nhdr"])
def test_header_and_data_files_are_read(tmp_path, ext):
    """MetaImage and detached NRRD (a header beside its data file, as case discovery lists them) read
    with their geometry, as masks, label maps and images; ITK writes the data file beside the header."""
    lab = box() * 8
    lab[7:9, 2:4, 2:4] = 9
    path = write_sitk(tmp_path / f"lab{ext}", lab)
    assert len(os.listdir(tmp_path)) == 2  # the header and its data file
    mask, grid, info = io.read_mask(path, label=9)
    assert np.array_equal(mask, (lab == 9).astype(np.uint8)) and grid.same_as(GRID, tol=1e-4)
    assert info["format"] == ext[1:] and info["labels"] == [8, 9]
    ct = np.random.default_rng(1).normal(40, 20, GRID.shape).astype(np.float32)
    image, igrid = io.read_image(write_sitk(tmp_path / f"ct{ext}", ct))
    assert np.array_equal(image, ct) and igrid.same_as(GRID, tol=1e-4)


def test_segmentation_with_a_detached_header_is_read_by_segment_name(tmp_path):
    """A Slicer segmentation saved as .seg.nhdr (its voxels in a file of their own) keeps its segment
    names, as a .seg.nrrd does."""
    seg = tmp_path / "s.seg.nrrd"
    spleen = box(lo=(1, 1, 1), hi=(3, 3, 3))
    io.write_segmentation(seg, [("kidney", box(), (1, 0, 0)), ("spleen", spleen, (0, 1, 0))], GRID)
    data, header = nrrd.read(str(seg))
    nrrd.write(str(tmp_path / "s.seg.nhdr"), data, header, detached_header=True)
    assert io.is_segmentation_file(tmp_path / "s.seg.nhdr") and not io.is_segmentation_file(tmp_path / "s.nhdr")
    mask, grid, info = io.read_mask(tmp_path / "s.seg.nhdr", label="spleen")
    assert np.array_equal(mask, spleen) and grid.same_as(GRID, tol=1e-4)
    assert info["segments"] == ["kidney", "spleen"]
    with pytest.raises(InputError, match="is a segmentation, not an image"):
        io.read_image(tmp_path / "s.seg.nhdr")


def test_read_image_rejects_nan_and_inf(tmp_path):
    for bad in (np.nan, np.inf):
        vol = np.zeros(GRID.shape, np.float32)
        vol[1, 2, 3] = bad
        with pytest.raises(InputError, match="NaN or Inf"):
            io.read_image(write_sitk(tmp_path / "ct.nrrd", vol))


# --- Slicer segmentations --------------------------------------------------------------------
def test_write_segmentation_layers_overlapping_segments(tmp_path):
    a, b = box(), box(lo=(3, 5, 6), hi=(8, 10, 12))  # overlapping: needs two layers
    c = box(lo=(8, 0, 0), hi=(10, 2, 2))            # disjoint from a: shares layer 0
    path = tmp_path / "both.seg.nrrd"
    io.write_segmentation(path, [("original", a, (1, 0, 0)), ("refined", b, (0, 0, 1)), ("spot", c, (0, 1, 0))], GRID)
    data, header = nrrd.read(str(path))
    assert header["dimension"] == 4 and list(header["kinds"]) == ["list", "domain", "domain", "domain"]
    assert list(header["sizes"]) == [2, 14, 12, 10]
    assert header["space"] == "left-posterior-superior"
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert [header[f"Segment{n}_Layer"] for n in range(3)] == ["0", "1", "0"]
    assert [header[f"Segment{n}_LabelValue"] for n in range(3)] == ["1", "1", "2"]
    assert header["Segment1_Color"] == "0 0 1" and header["Segment0_Extent"] == "4 9 3 8 2 5"
    segs, grid = io.read_segments(path)
    assert grid.same_as(GRID, tol=1e-9)
    assert [s["name"] for s in segs] == ["original", "refined", "spot"]
    for s, m in zip(segs, (a, b, c)):
        assert np.array_equal(s["mask"], m)
    with pytest.raises(InputError, match=r"multilabel mask with segments \['original' \(1\), 'refined' \(1\)"):
        io.read_mask(path)
    refined, g2, info = io.read_mask(path, label="refined")
    assert np.array_equal(refined, b) and info["segment"] == "refined" and g2.same_as(GRID, tol=1e-9)
    assert np.array_equal(io.read_mask(path, label="Segment_3")[0], c)  # by segment ID
    assert np.array_equal(io.read_mask(path, label=2)[0], c)            # by a unique label value
    with pytest.raises(InputError, match="matches several segments"):
        io.read_mask(path, label=1)
    with pytest.raises(InputError, match=r"label 'liver' not found in both.seg.nrrd"):
        io.read_mask(path, label="liver")


def test_disjoint_segments_share_one_3d_labelmap(tmp_path):
    a, c = box(), box(lo=(8, 0, 0), hi=(10, 2, 2))
    path = tmp_path / "two.seg.nrrd"
    io.write_segmentation(path, [("a", a, (1, 0, 0)), ("c", c, (0, 1, 0))], GRID)
    data, header = nrrd.read(str(path), index_order="C")
    assert header["dimension"] == 3 and data.shape == GRID.shape
    assert set(np.unique(data)) == {0, 1, 2}
    assert np.array_equal(io.read_mask(path, label="c")[0], c)


def test_an_empty_segment_keeps_a_label_value_of_its_own(tmp_path):
    """An empty segment (a refinement that kept nothing) before others on a layer took the value the
    next segment then took too, so reading the file gave the empty one that segment's voxels."""
    a, c = box(), box(lo=(8, 0, 0), hi=(10, 2, 2))
    path = tmp_path / "e.seg.nrrd"
    io.write_segmentation(path, [("a", a, (1, 0, 0)), ("nothing", np.zeros(GRID.shape, np.uint8), (0, 0, 1)),
                                 ("c", c, (0, 1, 0))], GRID)
    segs, _ = io.read_segments(path)
    assert [int(s["mask"].sum()) for s in segs] == [int(a.sum()), 0, int(c.sum())]
    assert np.array_equal(segs[2]["mask"], c)


def test_segments_as_boxes_read_and_write_as_full_masks(tmp_path):
    """Boxed masks (a large volume's many segments) give the file and the masks that full arrays give."""
    from NeARSlicerLib.boxed_mask import BoxedMask

    a, b, c = box(), box(lo=(3, 5, 6), hi=(8, 10, 12)), box(lo=(8, 0, 0), hi=(10, 2, 2))
    segments = [("a", a, (1, 0, 0)), ("b", b, (0, 0, 1)), ("c", c, (0, 1, 0))]
    io.write_segmentation(tmp_path / "full.seg.nrrd", segments, GRID)
    io.write_segmentation(tmp_path / "boxed.seg.nrrd", [(n, BoxedMask.of(m), col) for n, m, col in segments], GRID)
    full, boxed = nrrd.read(str(tmp_path / "full.seg.nrrd")), nrrd.read(str(tmp_path / "boxed.seg.nrrd"))
    assert np.array_equal(full[0], boxed[0])
    assert {k: str(v) for k, v in full[1].items()} == {k: str(v) for k, v in boxed[1].items()}
    segs, _ = io.read_segments(tmp_path / "boxed.seg.nrrd", boxed=True)
    for s, m in zip(segs, (a, b, c)):
        assert isinstance(s["mask"], BoxedMask) and s["mask"].array.shape == tuple(np.ptp(np.argwhere(m), 0) + 1)
        assert np.array_equal(s["mask"].full(), m)
    with pytest.raises(InputError, match="does not match grid shape"):
        io.write_segmentation(tmp_path / "x.seg.nrrd", [("a", BoxedMask.of(a[1:]), (1, 0, 0))], GRID)


def test_seg_nrrd_in_ras_space_is_converted_to_lps(tmp_path):
    mask = box()
    affine = GRID.ijk_to_lps()
    flip = np.array([-1.0, -1.0, 1.0])
    header = {"space": "right-anterior-superior", "kinds": ["domain"] * 3,
              "space directions": (affine[:3, :3] * flip[:, None]).T, "space origin": affine[:3, 3] * flip,
              "Segment0_ID": "Segment_1", "Segment0_Name": "gland", "Segment0_LabelValue": "1",
              "Segment0_Layer": "0"}
    path = tmp_path / "ras.seg.nrrd"
    nrrd.write(str(path), mask, header, index_order="C")
    back, grid, info = io.read_mask(path)
    assert info["segment"] == "gland" and np.array_equal(back, mask)
    assert grid.same_as(GRID, tol=1e-9)


def test_empty_segment_and_bad_space(tmp_path):
    path = tmp_path / "e.seg.nrrd"
    io.write_segmentation(path, [("nothing", np.zeros(GRID.shape, np.uint8), (1, 0, 0))], GRID)
    with pytest.raises(InputError, match=r"^mask is empty \(segment 'nothing' has no voxels\)$"):
        io.read_mask(path)
    nrrd.write(str(tmp_path / "x.seg.nrrd"), box(), {"space": "scanner-xyz", "space directions": np.eye(3),
                                                     "space origin": np.zeros(3)}, index_order="C")
    with pytest.raises(InputError, match="unsupported NRRD space 'scanner-xyz'"):
        io.read_mask(tmp_path / "x.seg.nrrd")
    with pytest.raises(InputError, match="color must be 3 values in 0-1"):
        io.write_segmentation(tmp_path / "c.seg.nrrd", [("a", box(), (255, 0, 0))], GRID)
    with pytest.raises(InputError, match="writes .seg.nrrd files"):
        io.write_segmentation(tmp_path / "c.nii.gz", [("a", box(), (1, 0, 0))], GRID)


def _slicer():
    try:
        import slicer
        from slicer import vtkMRMLScene  # noqa: F401  (the slicer-core package, not PyPI "slicer")
        return slicer
    except ImportError:
        pytest.skip("slicer-core is not installed: cannot check with Slicer's own segmentation reader")


def test_slicer_reads_our_segmentation(tmp_path):
    slicer = _slicer()
    a, b = box(), box(lo=(3, 5, 6), hi=(8, 10, 12))
    path = tmp_path / "both.seg.nrrd"
    io.write_segmentation(path, [("original", a, (1, 0, 0)), ("refined", b, (0, 0, 1))], GRID)
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    seg = node.GetSegmentation()
    assert seg.GetNumberOfSegments() == 2
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy
    for n, (name, color, mask) in enumerate([("original", (1, 0, 0), a), ("refined", (0, 0, 1), b)]):
        segment = seg.GetSegment(seg.GetNthSegmentID(n))
        assert segment.GetName() == name and segment.GetColor() == color
        labelmap = segment.GetRepresentation("Binary labelmap")
        m = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(m)
        ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ GRID.ijk_to_lps()  # Slicer works in RAS
        np.testing.assert_allclose(ras, expected, atol=1e-6)
        e = labelmap.GetExtent()
        voxels = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(
            e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
        full = np.zeros(GRID.shape, bool)
        full[e[4]:e[5] + 1, e[2]:e[3] + 1, e[0]:e[1] + 1] = voxels == segment.GetLabelValue()
        assert np.array_equal(full, mask.astype(bool))


def test_we_read_a_segmentation_written_by_slicer(tmp_path):
    slicer = _slicer()
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    ras_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ GRID.ijk_to_lps()
    masks = {"first": box(), "second": box(lo=(3, 5, 6), hi=(8, 10, 12))}
    for name, mask in masks.items():
        image = slicer.vtkOrientedImageData()
        image.SetDimensions(GRID.shape[2], GRID.shape[1], GRID.shape[0])
        image.SetSpacing(*GRID.spacing)
        image.SetOrigin(*ras_affine[:3, 3])
        directions = vtk.vtkMatrix4x4()
        for r in range(3):
            for c in range(3):
                directions.SetElement(r, c, ras_affine[r, c] / GRID.spacing[c])
        image.SetDirectionMatrix(directions)
        image.GetPointData().SetScalars(numpy_to_vtk(mask.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
        segment = slicer.vtkSegment()
        segment.SetName(name)
        segment.AddRepresentation("Binary labelmap", image)
        node.GetSegmentation().AddSegment(segment)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    path = tmp_path / "slicer.seg.nrrd"
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    for name, mask in masks.items():
        back, grid, info = io.read_mask(path, label=name)
        # Slicer may crop to the segments' extent: compare voxel centres in LPS, not arrays.
        got = np.sort(grid.index_to_lps(np.argwhere(back)[:, ::-1]), axis=0)
        want = np.sort(GRID.index_to_lps(np.argwhere(mask)[:, ::-1]), axis=0)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)
