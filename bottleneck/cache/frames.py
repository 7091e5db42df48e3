"""The journal's record format: batches as framed records appended to one file.

A record is a fixed header (magic `BNJ\\x01`, JSON header length, payload length, CRC-32 of both), a JSON list of
(name, dtype, shape) and the arrays' raw bytes, in that order. A file holds records back to back; it is only ever
appended to, so a record cut off by a kill or a full disk can only be the last, and its header says how long it
should be (`scan` stops there). A record whose bytes do not match its CRC (written partly before a power cut) or
whose header does not parse is reported as damaged by `unpack`.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

MAGIC = b"BNJ\x01"
FRAME = struct.Struct("<4sIQI")  # magic, JSON header length, payload length, CRC-32 of header and payload
SMALL = 1 << 16  # arrays of fewer bytes are written joined to their neighbours: many small pieces write slowly


class DamagedRecord(Exception):
    """A record that cannot be read; the message says why."""


def c_order(a) -> np.ndarray:
    """`a` as a C-ordered array of its own shape (np.ascontiguousarray would make a 0-d array 1-d)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")


def pack(arrays: dict[str, np.ndarray]) -> list:
    """A dict of arrays as the parts of one record, to be written back to back (see `write_all`): the frame and
    header with the small arrays that follow them as one part, each large array as a part of its own (a view, not
    a copy), the small arrays between large ones joined likewise. Fewer, larger parts write faster."""
    arrays = {k: c_order(a) for k, a in arrays.items()}
    header = _header(arrays)
    parts, small = [], [header]
    for a in arrays.values():
        if a.nbytes >= SMALL:
            parts += [b"".join(small), a.reshape(-1).view(np.uint8)]
            small = []
        elif a.nbytes:
            small.append(a.tobytes())
    parts.append(b"".join(small))
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    parts[0] = FRAME.pack(MAGIC, len(header), sum(len(p) for p in parts) - len(header), crc) + parts[0]
    return [p for p in parts if len(p)]


def _header(arrays: dict[str, np.ndarray]) -> bytes:
    """The JSON list of (name, dtype, shape) of a record's arrays; written out directly for plain names (what a
    batch holds), which is several times faster than json.dumps."""
    if all(k.isidentifier() for k in arrays):
        return ("[" + ",".join(f'["{k}","{a.dtype.str}",[{",".join(map(str, a.shape))}]]' for k, a in arrays.items())
                + "]").encode()
    return json.dumps([[k, a.dtype.str, list(a.shape)] for k, a in arrays.items()], allow_nan=False).encode()


def unpack(data) -> dict[str, np.ndarray]:
    """The arrays of one record (bytes holding exactly it); DamagedRecord when it is cut off, foreign or fails its
    CRC. The arrays are read-only views of `data`."""
    if len(data) < FRAME.size:
        raise DamagedRecord(f"it is cut off ({len(data)} bytes)")
    magic, header_len, payload_len, crc = FRAME.unpack_from(data)
    if magic != MAGIC:
        raise DamagedRecord("it is not a journal batch (no batch header)")
    end = FRAME.size + header_len + payload_len
    if len(data) != end:
        raise DamagedRecord(f"it holds {len(data)} bytes where its header says {end}")
    body = memoryview(data)[FRAME.size:]
    if zlib.crc32(body) != crc:
        raise DamagedRecord("its CRC does not match (written partly, e.g. before a power cut)")
    try:
        arrays, at = {}, FRAME.size + header_len
        for name, dtype, shape in json.loads(bytes(body[:header_len])):
            dt = np.dtype(dtype)
            count = math.prod(shape)
            arrays[name] = np.frombuffer(data, dt, count, at).reshape(shape)
            at += count * dt.itemsize
    except (ValueError, TypeError, KeyError) as exc:
        raise DamagedRecord(f"its header does not parse: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if at != end:
        raise DamagedRecord(f"its arrays take {at - FRAME.size - header_len} bytes, its payload {payload_len}")
    return arrays


def write_all(fd: int, parts: list) -> int:
    """Write every byte of `parts` to `fd` (os.writev may write less than asked); returns the bytes written."""
    views = [memoryview(p).cast("B") for p in parts]
    total = sum(len(v) for v in views)
    while views:
        done = os.writev(fd, views)
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if views and done:
            views[0] = views[0][done:]
    return total


def scan(path: Path) -> tuple[list[tuple[int, int]], int]:
    """The records of the file `path`: [(offset, size)] of each one whose bytes are all there, in order, and the
    offset where they end (past it: a record cut off mid-write, or nothing). A header that is not a record's
    makes the rest of the file one damaged record. Reads only the headers."""
    records: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, at = os.fstat(fd).st_size, 0
        while at < size:
            head = os.pread(fd, FRAME.size, at)
            if len(head) < FRAME.size:
                break  # cut off inside its header
            magic, header_len, payload_len, _ = FRAME.unpack(head)
            length = FRAME.size + header_len + payload_len if magic == MAGIC else size - at
            if at + length > size:
                break  # cut off inside its body
            records.append((at, length))
            at += length
        return records, at
    finally:
        os.close(fd)


def read_record(path: Path, offset: int, size: int) -> dict[str, np.ndarray]:
    """The arrays of the record at `offset` of `path` (see `unpack`)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, size, offset)
        while len(data) < size:  # a read may return less than asked
            more = os.pread(fd, size - len(data), offset + len(data))
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    return unpack(data)
