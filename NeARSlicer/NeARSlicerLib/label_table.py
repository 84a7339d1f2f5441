"""The names a label-map file gives its label values.

TotalSegmentator's multi-label output (``--ml``) and Connectome Workbench write a label table into the
NIfTI header's extensions: a GIFTI-style ``<LabelTable>`` of ``<Label Key="8" ...>adrenal_gland_right
</Label>`` inside a ``CaretExtension`` XML document. Reading it lets a label value say what structure it
is (``--prior auto`` reads that) and name its segment, instead of ``Label_8``. Only the header is read
(not the voxels); files without a table, other formats and damaged headers give no names.
"""
from __future__ import annotations

import gzip
import os
import re
import struct
import xml.etree.ElementTree as ElementTree
from typing import BinaryIO, Dict

# a header, with its extensions, larger than this is not a label map's: its names are not read
MAX_HEADER_BYTES = 16 * 1024 * 1024
_TABLE = re.compile(rb"<LabelTable\b.*?</LabelTable>", re.DOTALL)


def _open(path: str) -> BinaryIO:
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def _extensions(head: bytes, header_size: int, endian: str, vox_offset: int) -> list[bytes]:
    """The extensions' contents (each after its 8-byte size + code) between the header and the voxels."""
    found, at = [], header_size + 4
    while at + 8 <= min(vox_offset, len(head)):
        size, _code = struct.unpack(endian + "ii", head[at:at + 8])
        if size < 8 or at + size > len(head):
            break
        found.append(head[at + 8:at + size])
        at += size
    return found


def _header_extensions(path: str) -> list[bytes]:
    with _open(path) as stream:
        first = stream.read(544)  # the larger (NIfTI-2) header and its 4-byte extender
        if len(first) < 348:
            return []
        for endian in "<>":
            size = struct.unpack(endian + "i", first[:4])[0]
            if size == 348:  # NIfTI-1: vox_offset is a float at byte 108
                vox_offset = int(struct.unpack(endian + "f", first[108:112])[0])
                break
            if size == 540:  # NIfTI-2: an int64 at byte 168
                vox_offset = int(struct.unpack(endian + "q", first[168:176])[0])
                break
        else:
            return []
        if not size < vox_offset <= MAX_HEADER_BYTES or len(first) < size + 4 or first[size] == 0:
            return []  # a single-file NIfTI with no extension (byte 0 of the extender)
        head = first + stream.read(vox_offset - len(first))
    return _extensions(head, size, endian, vox_offset)


def _names_in(content: bytes) -> Dict[int, str]:
    table = _TABLE.search(content)
    if table is None:
        return {}
    try:
        root = ElementTree.fromstring(table.group(0))
    except ElementTree.ParseError:
        return {}
    names = {}
    for label in root.iter("Label"):
        key, name = label.get("Key"), (label.text or "").strip()
        if key is not None and key.strip().lstrip("+-").isdigit() and name and int(key) != 0:
            names[int(key)] = name
    return names


def label_names(path: str) -> Dict[int, str]:
    """``{label value: name}`` from a NIfTI label map's label table (TotalSegmentator, Connectome
    Workbench); empty when the file has none, is not NIfTI, or its header cannot be read."""
    path = os.fspath(path)
    if not path.lower().endswith((".nii", ".nii.gz")):
        return {}
    try:
        contents = _header_extensions(path)
    except (OSError, EOFError, struct.error, ValueError):
        return {}
    for content in contents:
        names = _names_in(content)
        if names:
            return names
    return {}


__all__ = ["label_names", "MAX_HEADER_BYTES"]
