"""Is a file's voxel data all there? Truncated files must be refused, not read as zeros.

ITK reads a truncated NIfTI (``.nii`` and ``.nii.gz``) without a word and fills
the missing voxels with zeros; NRRD and MetaImage readers notice, with messages
that do not say what is wrong. We compare what the header promises with what
the file holds, cheaply:

* uncompressed data: the file size (no voxel is read);
* a gzip stream: its trailer records the uncompressed size (mod 2**32), read
  from the file's last 4 bytes. Only when it differs from the header's promise
  (a truncated stream, or a writer that adds bytes) is the stream decompressed
  to its end, in chunks, to count what it really holds and whether it ends;
* MetaImage zlib data: the header's ``CompressedDataSize`` against the bytes
  present.

Formats we do not parse here (DICOM, PNG, bzip2-encoded NRRD, ...) are left to
their readers, which refuse truncated data themselves.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import nifti

_CHUNK = 1 << 22
_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                1536: 16, 1792: 16, 2048: 32, 2304: 4}  # datatype code -> bytes per voxel
_NRRD_BYTES = {"signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1,
               "short": 2, "short int": 2, "signed short": 2, "signed short int": 2, "int16": 2, "int16_t": 2,
               "ushort": 2, "unsigned short": 2, "unsigned short int": 2, "uint16": 2, "uint16_t": 2,
               "int": 4, "signed int": 4, "int32": 4, "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32": 4,
               "uint32_t": 4, "longlong": 8, "long long": 8, "long long int": 8, "signed long long": 8,
               "signed long long int": 8, "int64": 8, "int64_t": 8, "ulonglong": 8, "unsigned long long": 8,
               "unsigned long long int": 8, "uint64": 8, "uint64_t": 8, "float": 4, "double": 8}
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def _truncated(name: str, promised: int, holds: int, what: str = "voxel data") -> InputError:
    return InputError(f"{name} is truncated: its header promises {promised} bytes of {what}, the file holds "
                      f"{holds} (an interrupted copy or download?)")


def _gzip_size(path: Path, offset: int, expected: int) -> tuple:
    """(uncompressed bytes, whether the stream ended) of the gzip data from ``offset`` to the end of the file."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        end = f.tell()
        if end - offset >= 18:  # header (10) + trailer (8): the trailer's ISIZE is the size mod 2**32
            f.seek(end - 4)
            if struct.unpack("<I", f.read(4))[0] == expected % (1 << 32):
                return expected, True
        f.seek(offset)
        total, ended, members, fresh = 0, False, 0, True
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            data = chunk
            while data:
                if inflater.eof:  # another gzip member follows
                    inflater, ended, fresh = zlib.decompressobj(zlib.MAX_WBITS | 16), False, True
                try:
                    total += len(inflater.decompress(data, _CHUNK))
                except zlib.error:  # junk after complete members (padding) is ignored; inside a member: damage
                    return total, members > 0 and fresh
                fresh = False
                if inflater.eof:
                    ended, members = True, members + 1
                    data = inflater.unused_data
                else:
                    data = inflater.unconsumed_tail
        return total, ended


def _check_gzip(path: Path, name: str, offset: int, promised: int) -> None:
    holds, _ = _gzip_size(path, offset, promised)
    if holds < promised:  # all voxels present but a cut trailer: the image itself is whole
        raise _truncated(name, promised, holds, "uncompressed data")


def _check_nifti(path: Path, name: str, compressed: bool) -> None:
    header = nifti.read_header(path)
    if header is None or header.datatype not in _NIFTI_BYTES or header.vox_offset < 348:
        return  # a header the reader will refuse, or an .hdr/.img pair
    voxels = int(np.prod([max(d, 1) for d in header.dims], dtype=np.float64))
    promised = header.vox_offset + voxels * _NIFTI_BYTES[header.datatype]
    if compressed:
        _check_gzip(path, name, 0, promised)
    elif path.stat().st_size < promised:
        raise _truncated(name, promised - header.vox_offset, max(0, path.stat().st_size - header.vox_offset))


def _text_header(path: Path, end_marker: re.Pattern, limit: int = 1 << 16) -> tuple:
    """(header text up to and with its end marker, byte offset of the data); ('', -1) if no end is found."""
    with open(path, "rb") as f:
        head = f.read(limit)
    match = end_marker.search(head)
    if not match:  # a detached header may simply end with the file
        return (head.decode("latin-1"), len(head)) if len(head) < limit else ("", -1)
    return head[: match.end()].decode("latin-1"), match.end()


def _check_nrrd(path: Path, name: str) -> None:
    header, offset = _text_header(path, re.compile(rb"\r?\n\r?\n"))
    fields = {}
    for line in header.splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    if offset < 0 or not header.startswith("NRRD") or "sizes" not in fields or "type" not in fields:
        return
    if any(k in fields for k in ("line skip", "lineskip", "byte skip", "byteskip")):
        return
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file:
        if " " in data_file or data_file.upper().startswith("LIST"):
            return  # several data files: left to the reader
        path, offset, name = path.parent / data_file, 0, f"{name} (data file {data_file})"
        if not path.is_file():
            raise InputError(f"{name} is missing")
    bytes_per = _NRRD_BYTES.get(fields["type"].lower())
    try:
        voxels = int(np.prod([int(v) for v in fields["sizes"].split()], dtype=np.float64))
    except ValueError:
        return
    if bytes_per is None:
        return
    promised = voxels * bytes_per
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz"):
        _check_gzip(path, name, offset, promised)
    elif encoding == "raw" and path.stat().st_size - offset < promised:
        raise _truncated(name, promised, max(0, path.stat().st_size - offset))


def _check_metaimage(path: Path, name: str) -> None:
    header, offset = _text_header(path, re.compile(rb"ElementDataFile\s*=\s*[^\r\n]*\r?\n"))
    if offset < 0:
        return
    fields = {}
    for line in header.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    data_file = fields.get("ElementDataFile", "")
    if data_file.upper() != "LOCAL":
        if not data_file or " " in data_file or data_file.upper().startswith("LIST") or "%" in data_file:
            return
        path, offset, name = path.parent / data_file, 0, f"{name} (data file {data_file})"
        if not path.is_file():
            raise InputError(f"{name} is missing")
    try:
        voxels = int(np.prod([int(v) for v in fields["DimSize"].split()], dtype=np.float64))
        components = int(fields.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return
    bytes_per = _MET_BYTES.get(fields.get("ElementType", "").split("_ARRAY")[0])
    holds = path.stat().st_size - offset
    if fields.get("CompressedData", "False").lower() == "true":
        size = fields.get("CompressedDataSize")
        if size and size.isdigit() and holds < int(size):
            raise _truncated(name, int(size), max(0, holds), "compressed data")
        return
    if bytes_per is not None and holds < voxels * components * bytes_per:
        raise _truncated(name, voxels * components * bytes_per, max(0, holds))


def check_data_complete(path) -> None:
    """Refuse a file whose voxel data is shorter than its header promises (InputError naming the file)."""
    path = Path(path)
    name = path.name
    lower = name.lower()
    if lower.endswith(".nii.gz") or lower.endswith(".nii"):
        _check_nifti(path, name, compressed=lower.endswith(".gz"))
    elif lower.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path, name)
    elif lower.endswith((".mha", ".mhd")):
        _check_metaimage(path, name)
    elif lower.endswith(".gz"):  # any other gzip file ITK reads (e.g. .img.gz): the stream must end
        holds, ended = _gzip_size(path, 0, -1)
        if not ended:
            raise InputError(f"{name} is truncated: its gzip stream ends early (after {holds} bytes)")
