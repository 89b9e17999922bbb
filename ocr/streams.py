"""A pre-flight check for Flate "zip bombs" inside PDFs.

pdfium inflates a page's content stream completely into memory when it loads the page: a 300 KB
PDF whose content stream inflates to 1.5 GB costs 2.5 GB of RSS. pdfium offers no limit and no
way to see a stream's decoded size, so before opening a PDF we inflate its Flate streams once,
streaming and discarding the output, and refuse the document if one of them grows past
``EngineConfig.max_decoded_stream_bytes``.

Image XObjects are skipped: their decoded size follows from their declared dimensions, which
ocr/pdf.py checks before rendering. The scan works on raw bytes and is best effort: whatever it
cannot parse (encrypted streams, odd syntax) is left to pdfium.
"""

from __future__ import annotations

import re
import zlib

from ocr.errors import ResourceLimitError

_STREAM = re.compile(rb"stream(?:\r\n|\n|\r)")
_LENGTH = re.compile(rb"/Length\s+(\d{1,12})(\s+\d+\s+R)?")
#: Deflate cannot expand data more than ~1032:1, so a stream shorter than cap / 1100 cannot
#: be a bomb and needs no inflating (keeps the check at ~0 ms for ordinary documents)
_MAX_RATIO = 1100
_LOOKBACK = 4096  # bytes before the stream keyword searched for its dictionary
_IN_CHUNK = 1 << 16
_OUT_CHUNK = 1 << 22


def check_stream_bombs(data: bytes, max_decoded: int) -> None:
    """Raise ResourceLimitError if any non-image Flate stream inflates past ``max_decoded``."""
    if len(data) * _MAX_RATIO <= max_decoded:
        return  # no stream of a file this small can inflate past the cap (the per-stream bound)
    for match in _STREAM.finditer(data):
        start = match.start()
        if start >= 3 and data[start - 3 : start] == b"end":
            continue  # "endstream"
        # Searched in place: slicing the look-back window first copied 4 KB per stream.
        obj = data.rfind(b"obj", max(0, start - _LOOKBACK), start)
        if obj < 0:
            continue
        dictionary = data[obj:start]
        if b"/FlateDecode" not in dictionary and b"/Fl " not in dictionary:
            continue
        if b"/Image" in dictionary:
            continue
        if _stream_length_bound(data, dictionary, match.end()) * _MAX_RATIO <= max_decoded:
            continue
        if _inflated_size(data, match.end(), max_decoded) > max_decoded:
            raise ResourceLimitError(
                "The PDF holds a compressed stream that expands to more than"
                f" {max_decoded // (1024 * 1024)} MB (a decompression bomb)."
            )


def _stream_length_bound(data: bytes, dictionary: bytes, offset: int) -> int:
    """The most compressed bytes pdfium would read for this stream: the direct /Length if the
    file has one, or the distance to the first "endstream" (pdfium falls back to that when the
    length is wrong), whichever is larger. An indirect /Length counts as unbounded."""
    to_end = data.find(b"endstream", offset)
    distance = (len(data) if to_end < 0 else to_end) - offset
    found = _LENGTH.search(dictionary)
    if found is None:
        return distance
    if found.group(2):  # "/Length 12 0 R": resolving it is pdfium's job, assume the worst
        return len(data) - offset
    return max(distance, int(found.group(1)))


def _inflated_size(data: bytes, offset: int, cap: int) -> int:
    inflater = zlib.decompressobj()
    total = 0
    pos = offset
    end = len(data)
    try:
        while pos < end and not inflater.eof:
            chunk = data[pos : pos + _IN_CHUNK]
            pos += len(chunk)
            out = inflater.decompress(chunk, _OUT_CHUNK)
            total += len(out)
            # Past the stream's end zlib keeps returning b"" and never empties the tail: the
            # eof test ends what was an endless loop on a dense stream that stays under the cap.
            while inflater.unconsumed_tail and not inflater.eof and total <= cap:
                out = inflater.decompress(inflater.unconsumed_tail, _OUT_CHUNK)
                total += len(out)
            if total > cap:
                return total
    except zlib.error:
        return total  # not (or no longer) valid Flate data: pdfium will judge it
    return total
