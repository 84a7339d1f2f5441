"""Test helpers: NIfTI label maps whose header carries a label table, as TotalSegmentator writes them."""
import gzip
import struct

import numpy as np
import SimpleITK as sitk


def caret_xml(names: dict) -> bytes:
    """A label table as TotalSegmentator writes it (CaretExtension, GIFTI-style LabelTable)."""
    labels = "\n".join(f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{v}]]></Label>'
                       for k, v in names.items())
    return ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <VolumeInformation Index="0"> '
            f"<LabelTable>\n{labels}\n</LabelTable> </VolumeInformation> </CaretExtension>").encode()


def write_with_extension(path, array: np.ndarray, content: bytes, reference=None) -> None:
    """``array`` as a NIfTI-1 file (on ``reference``'s grid, a SimpleITK image) whose header carries one
    extension holding ``content``."""
    plain = path.with_name("plain.nii")
    image = sitk.GetImageFromArray(array)
    if reference is not None:
        image.CopyInformation(reference)
    sitk.WriteImage(image, str(plain))
    raw = plain.read_bytes()
    plain.unlink()
    offset = int(struct.unpack("<f", raw[108:112])[0])
    size = 8 + len(content)
    size += -size % 16  # an extension's size is a multiple of 16
    extension = struct.pack("<ii", size, 0) + content.ljust(size - 8, b"\0")
    header = bytearray(raw[:348])
    header[108:112] = struct.pack("<f", float(352 + size))
    data = bytes(header) + b"\x01\0\0\0" + extension + raw[offset:]
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
