"""Office and web documents (issue 14): detection by content, conversion through the warm
LibreOffice converter into the Extract schema, and hostile inputs.

Needs LibreOffice and the system Python's ``uno`` (``make install`` installs them); one converter
is shared by the module, as a worker's sandbox child would keep one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ocr
from ocr.errors import ExtractionError
from ocr.office import OfficeConverter, OfficeConverterSettings
from ocr.sniff import sniff

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "corpus" / "office"
MANIFEST = json.loads((CORPUS / "MANIFEST.json").read_text())["files"]

pytestmark = pytest.mark.skipif(
    shutil.which("soffice") is None, reason="LibreOffice is not installed (make install)"
)


@pytest.fixture(scope="module")
def converter() -> Iterator[OfficeConverter]:
    conv = OfficeConverter()
    conv.start()
    yield conv
    conv.close()


def norm(text: str) -> str:
    return " ".join(text.split())


def all_text(result: dict[str, Any]) -> str:
    return norm(" ".join(c["page_content"] for c in result["chunks"] if c["chunk_type"] == "text"))


# -- every document of the corpus --------------------------------------------------------------


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_corpus_document(entry: dict[str, Any], converter: OfficeConverter) -> None:
    data = (CORPUS / entry["name"]).read_bytes()
    # a wrong filename changes nothing: detection is by content
    result = ocr.extract(data, filename="upload.bin", converter=converter)
    assert result["file"]["content_type"] == sniff(data).content_type
    assert result["page_count"] >= 1 and result["pages_billed"] == result["page_count"]
    text = all_text(result)
    for phrase in entry["expected_snippets"]:
        assert norm(phrase) in text, phrase
    chunks = result["chunks"]
    assert all(1 <= c["page_no"] <= result["page_count"] for c in chunks)
    assert all(c["source"] == "text_layer" for c in chunks)  # never OCR'd
    tables = [c for c in chunks if c["chunk_type"] == "table"]
    if entry["has_table"]:
        assert tables, "expected a table chunk"
        assert all(t["cells"] and t["n_rows"] >= 1 and t["n_cols"] >= 1 for t in tables)


def test_word_merged_cells_are_spans(converter: OfficeConverter) -> None:
    result = ocr.extract((CORPUS / "word_tables.docx").read_bytes(), converter=converter)
    cells = [c for t in result["chunks"] if t["chunk_type"] == "table" for c in t["cells"]]
    merged = [c for c in cells if norm(c["text"]) == "Merged Cell 1.1 1.2"]
    assert merged and merged[0]["col_span"] == 2


def test_spreadsheet_used_range_is_a_table(converter: OfficeConverter) -> None:
    result = ocr.extract(
        (CORPUS / "xlsx_02_sample_sales_data.xlsm").read_bytes(), converter=converter
    )
    tables = [c for c in result["chunks"] if c["chunk_type"] == "table"]
    texts = {norm(c["text"]) for t in tables for c in t["cells"]}
    assert {"Widget A", "Revenue"} <= texts


def test_probe_then_extract_converts_once(converter: OfficeConverter) -> None:
    data = (CORPUS / "lorem_ipsum.docx").read_bytes()
    p = ocr.probe(data, converter=converter)
    assert p.kind == "office" and p.page_count >= 1
    t0 = time.monotonic()
    result = ocr.extract(data, converter=converter)
    assert result["page_count"] == p.page_count
    assert time.monotonic() - t0 < 5


# -- other formats of the same kinds, made from the corpus ---------------------------------------

#: (source document, target extension, expected MIME, phrase)
DERIVED = [
    ("word_sample.docx", "odt", "application/vnd.oasis.opendocument.text", "Swimming in the lake"),
    ("word_sample.docx", "rtf", "application/rtf", "Swimming in the lake"),
    (
        "xlsx_02_sample_sales_data.xlsm",
        "ods",
        "application/vnd.oasis.opendocument.spreadsheet",
        "Widget A",
    ),
    ("xlsx_02_sample_sales_data.xlsm", "xls", "application/vnd.ms-excel", "Widget A"),
    (
        "powerpoint_sample.pptx",
        "odp",
        "application/vnd.oasis.opendocument.presentation",
        "Test Table Slide",
    ),
    ("powerpoint_sample.pptx", "ppt", "application/vnd.ms-powerpoint", "Test Table Slide"),
]


@pytest.fixture(scope="module")
def derived(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The corpus documents saved by LibreOffice as ODT/RTF/ODS/XLS/ODP/PPT (a cold soffice per
    target format, once per module)."""
    out = tmp_path_factory.mktemp("derived")
    profile = out / "profile"
    made: dict[str, bytes] = {}
    for src, ext, _, _ in DERIVED:
        subprocess.run(
            [
                "soffice",
                "--headless",
                "--norestore",
                f"-env:UserInstallation={profile.as_uri()}",
                "--convert-to",
                ext,
                "--outdir",
                str(out),
                str(CORPUS / src),
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
        made[ext] = (out / f"{Path(src).stem}.{ext}").read_bytes()
    return made


def make_epub(chapters: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip")
        z.writestr(
            "META-INF/container.xml",
            '<?xml version="1.0"?><container xmlns="urn:oasis:names:tc:opendocument:'
            'xmlns:container" version="1.0"><rootfiles><rootfile full-path="OEBPS/c.opf"'
            ' media-type="application/oebps-package+xml"/></rootfiles></container>',
        )
        items = "".join(
            f'<item id="c{i}" href="ch{i}.xhtml" media-type="application/xhtml+xml"/>'
            for i in range(len(chapters))
        )
        spine = "".join(f'<itemref idref="c{i}"/>' for i in range(len(chapters)))
        z.writestr(
            "OEBPS/c.opf",
            '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" '
            f'version="3.0"><manifest>{items}</manifest><spine>{spine}</spine></package>',
        )
        for i, body in enumerate(chapters):
            z.writestr(
                f"OEBPS/ch{i}.xhtml",
                '<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/'
                f'1999/xhtml"><head><title>c{i}</title></head><body>{body}</body></html>',
            )
    return buf.getvalue()


@pytest.mark.parametrize("src,ext,mime,phrase", DERIVED, ids=[d[1] for d in DERIVED])
def test_derived_formats(
    src: str,
    ext: str,
    mime: str,
    phrase: str,
    derived: dict[str, bytes],
    converter: OfficeConverter,
) -> None:
    data = derived[ext]
    assert sniff(data).kind == "office" and sniff(data).content_type == mime
    result = ocr.extract(data, converter=converter)
    assert result["file"]["content_type"] == mime
    assert norm(phrase) in all_text(result)
    assert any(c["chunk_type"] == "table" for c in result["chunks"])


def test_epub(converter: OfficeConverter) -> None:
    data = make_epub(
        [
            "<h1>Chapter One</h1><p>It was a bright cold day in April.</p>",
            "<h1>Chapter Two</h1><table><tr><td>alpha</td><td>beta</td></tr>"
            "<tr><td>gamma</td><td>delta</td></tr></table>",
        ]
    )
    assert sniff(data).content_type == "application/epub+zip"
    result = ocr.extract(data, converter=converter)
    text = all_text(result)
    assert "It was a bright cold day in April." in text and "Chapter Two" in text
    assert any(c["chunk_type"] == "table" for c in result["chunks"])


# -- detection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"PK\x03\x04" + b"\x00" * 40,  # a truncated zip
        b"a,b,c\n1,2,3\n4,5,6\n",
        b"# Title\n\nSome *markdown* text with <b>inline</b> html later.\n",
        b'{"html": "<html><body>x</body></html>"}',
        b"just some text\n",
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600,  # OLE2 header, no directory
    ],
    ids=["truncated-zip", "csv", "markdown", "json", "text", "bare-ole2"],
)
def test_not_office_is_unsupported(data: bytes) -> None:
    with pytest.raises(ocr.UnsupportedInputError) as info:
        ocr.extract(data)
    assert "DOCX" in info.value.message  # the message lists the supported formats


def test_plain_zip_is_unsupported() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
        z.writestr("mimetype", "application/x-not-a-document")
    with pytest.raises(ocr.UnsupportedInputError):
        ocr.probe(buf.getvalue())


@pytest.mark.parametrize("name", [e["name"] for e in MANIFEST])
def test_detection_ignores_filename(name: str) -> None:
    data = (CORPUS / name).read_bytes()
    s = sniff(data)
    assert s.kind == "office"
    expected = {
        "docx": "wordprocessingml",
        "pptx": "presentationml",
        "xlsx": "spreadsheetml",
        "xlsm": "macroEnabled",
        "html": "text/html",
        "doc": "application/msword",
    }[name.rsplit(".", 1)[1]]
    assert expected in s.content_type


def test_html_sniffing_after_bom_and_comments() -> None:
    assert sniff(b"\xef\xbb\xbf  <!-- c --> \n<!DOCTYPE html><p>x").content_type == "text/html"
    assert sniff(b"<body>\nhi").content_type == "text/html"
    assert sniff(b"{\\rtf1\\ansi hello}").content_type == "application/rtf"


# -- hostile ----------------------------------------------------------------------------------


def rezip(src: bytes, replace: dict[str, bytes], add: dict[str, bytes] | None = None) -> bytes:
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(src)) as zin,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout,
    ):
        for info in zin.infolist():
            zout.writestr(info.filename, replace.get(info.filename, zin.read(info.filename)))
        for name, body in (add or {}).items():
            zout.writestr(name, body)
    return out.getvalue()


def test_zip_bomb_inside_docx(converter: OfficeConverter, tmp_path: Path) -> None:
    """A member that inflates to 2 GiB: refused from the central directory, nothing inflated."""
    base = (CORPUS / "lorem_ipsum.docx").read_bytes()
    path = tmp_path / "bomb.docx"
    with (
        zipfile.ZipFile(io.BytesIO(base)) as zin,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zout,
    ):
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        with zout.open("word/media/bomb.bin", "w", force_zip64=True) as fh:
            zeros = b"\x00" * (16 << 20)
            for _ in range(128):  # 2 GiB
                fh.write(zeros)
    data = path.read_bytes()
    assert len(data) < 16 << 20
    assert sniff(data).kind == "office"
    t0 = time.monotonic()
    with pytest.raises(ExtractionError) as info:
        ocr.extract(data, converter=converter)
    assert info.value.code == "extraction_failed"
    assert "expand" in info.value.message
    assert time.monotonic() - t0 < 10


def minimal_xlsx(sheet_xml: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/'
            '2006/content-types"><Default Extension="rels" ContentType="application/vnd.'
            'openxmlformats-package.relationships+xml"/><Default Extension="xml" '
            'ContentType="application/xml"/><Override PartName="/xl/workbook.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.'
            'sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType='
            '"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            "</Types>",
        )
        z.writestr(
            "_rels/.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/'
            'package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.'
            'openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
            'Target="xl/workbook.xml"/></Relationships>',
        )
        z.writestr(
            "xl/workbook.xml",
            '<?xml version="1.0"?><workbook xmlns="http://schemas.openxmlformats.org/'
            'spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/'
            'officeDocument/2006/relationships"><sheets><sheet name="Big" sheetId="1" '
            'r:id="rId1"/></sheets></workbook>',
        )
        z.writestr(
            "xl/_rels/workbook.xml.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/'
            'package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.'
            'openxmlformats.org/officeDocument/2006/relationships/worksheet" '
            'Target="worksheets/sheet1.xml"/></Relationships>',
        )
        z.writestr("xl/worksheets/sheet1.xml", sheet_xml)
    return buf.getvalue()


SHEET_HEAD = (
    '<?xml version="1.0"?><worksheet xmlns="http://schemas.openxmlformats.org/'
    'spreadsheetml/2006/main">'
)


def test_xlsx_claiming_a_million_rows(converter: OfficeConverter) -> None:
    data = minimal_xlsx(
        SHEET_HEAD + '<dimension ref="A1:Z1000000"/><sheetData>'
        '<row r="1"><c r="A1" t="inlineStr"><is><t>Name</t></is></c>'
        '<c r="B1" t="inlineStr"><is><t>Amount</t></is></c></row>'
        '<row r="2"><c r="A2" t="inlineStr"><is><t>Widget</t></is></c><c r="B2"><v>42</v></c>'
        "</row></sheetData></worksheet>"
    )
    t0 = time.monotonic()
    result = ocr.extract(data, converter=converter)
    assert time.monotonic() - t0 < 30
    assert result["page_count"] == 1
    assert "Widget" in all_text(result)


def test_xlsx_with_a_cell_at_row_a_million_is_capped() -> None:
    """A real cell at Z1000000: the rendered range is capped (warning), not 20,000 pages."""
    data = minimal_xlsx(
        SHEET_HEAD + "<sheetData>"
        '<row r="1"><c r="A1" t="inlineStr"><is><t>Top</t></is></c></row>'
        '<row r="1000000"><c r="Z1000000"><v>1</v></c></row></sheetData></worksheet>'
    )
    with OfficeConverter(OfficeConverterSettings(max_rows=200, max_cols=10)) as conv:
        t0 = time.monotonic()
        result = ocr.extract(data, converter=conv)
        assert time.monotonic() - t0 < 60
    assert "Top" in all_text(result)
    assert result["page_count"] <= 10
    assert any("1,000,000 rows" in w for w in result["warnings"])


def cfb(streams: dict[str, bytes]) -> bytes:
    """A minimal Compound File (v3, 512-byte sectors) holding ``streams`` (each padded to 4 KiB,
    so no mini stream is needed)."""
    ss = 512
    bodies = [
        (name, body.ljust(max(4096, -(-len(body) // ss) * ss), b"\x00"))
        for name, body in streams.items()
    ]
    n_stream_sectors = sum(len(b) // ss for _, b in bodies)
    # layout: sector 0 = FAT, sector 1 = directory, then the streams
    fat = [0xFFFFFFFD, 0xFFFFFFFE]
    starts = []
    sector = 2
    for _, body in bodies:
        n = len(body) // ss
        starts.append(sector)
        fat.extend([*list(range(sector + 1, sector + n)), 4294967294])
        sector += n
    fat += [0xFFFFFFFF] * (128 - len(fat))
    assert n_stream_sectors + 2 <= 128

    def entry(name: str, kind: int, start: int, size: int, child: int, right: int) -> bytes:
        raw = name.encode("utf-16-le") + b"\x00\x00"
        return (
            raw.ljust(64, b"\x00")
            + struct.pack("<HBB", len(raw), kind, 1)
            + struct.pack("<III", 0xFFFFFFFF, right, child)
            + b"\x00" * 16
            + b"\x00" * 4
            + b"\x00" * 16
            + struct.pack("<IQ", start, size)
        )

    dirs = entry("Root Entry", 5, 0xFFFFFFFE, 0, 1, 0xFFFFFFFF)
    for i, ((name, _), start) in enumerate(zip(bodies, starts, strict=True)):
        right = i + 2 if i + 1 < len(bodies) else 0xFFFFFFFF
        dirs += entry(name, 2, start, len(streams[name]), 0xFFFFFFFF, right)
    dirs = dirs.ljust(ss, b"\x00")
    header = (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
        + b"\x00" * 16
        + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
        + b"\x00" * 6
        + struct.pack("<IIIIIIII", 0, 1, 1, 0, 4096, 0xFFFFFFFE, 0, 0xFFFFFFFE)
        + struct.pack("<I", 0)
        + struct.pack("<109I", 0, *([0xFFFFFFFF] * 108))
    )
    assert len(header) == 512
    return header + struct.pack("<128I", *fat) + dirs + b"".join(body for _, body in bodies)


def test_password_protected_docx(converter: OfficeConverter) -> None:
    """Office's "Encrypt with password" wraps the package in OLE2 EncryptionInfo and
    EncryptedPackage streams: refused before conversion, with a message saying why."""
    data = cfb(
        {
            "EncryptionInfo": struct.pack("<HHI", 4, 4, 0x40) + b"<encryption/>",
            "EncryptedPackage": struct.pack("<Q", 20000) + os.urandom(6000),
        }
    )
    s = sniff(data)
    assert s.kind == "office" and s.encrypted
    for call in (
        lambda: ocr.extract(data, converter=converter),
        lambda: ocr.probe(data, converter=converter),
    ):
        with pytest.raises(ExtractionError) as info:
            call()
        assert info.value.code == "extraction_failed"
        assert "password-protected" in info.value.message


def test_cfb_sniffer_reads_generated_container() -> None:
    assert sniff(cfb({"WordDocument": b"x" * 100})).content_type == "application/msword"
    assert sniff(cfb({"Workbook": b"x"})).content_type == "application/vnd.ms-excel"
    assert sniff(cfb({"PowerPoint Document": b"x"})).content_type == (
        "application/vnd.ms-powerpoint"
    )


class Listener:
    """A TCP listener on loopback that counts connections (answers nothing useful)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def docx_with_external_image(url: str) -> bytes:
    base = (CORPUS / "lorem_ipsum.docx").read_bytes()
    with zipfile.ZipFile(io.BytesIO(base)) as z:
        doc = z.read("word/document.xml").decode()
        rels = z.read("word/_rels/document.xml.rels").decode()
    rels = rels.replace(
        "</Relationships>",
        '<Relationship Id="rIdExt1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        f'relationships/image" Target="{url}" TargetMode="External"/></Relationships>',
    )
    drawing = (
        '<w:p><w:r><w:drawing><wp:inline xmlns:wp="http://schemas.openxmlformats.org/'
        'drawingml/2006/wordprocessingDrawing"><wp:extent cx="952500" cy="952500"/>'
        '<wp:docPr id="99" name="ext"/><a:graphic xmlns:a="http://schemas.openxmlformats.org/'
        'drawingml/2006/main"><a:graphicData uri="http://schemas.openxmlformats.org/drawingml/'
        '2006/picture"><pic:pic xmlns:pic="http://schemas.openxmlformats.org/drawingml/2006/'
        'picture"><pic:nvPicPr><pic:cNvPr id="99" name="ext.png"/><pic:cNvPicPr/></pic:nvPicPr>'
        '<pic:blipFill><a:blip xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/'
        'relationships" r:link="rIdExt1"/><a:stretch><a:fillRect/></a:stretch></pic:blipFill>'
        '<pic:spPr><a:xfrm><a:off x="0" y="0"/><a:ext cx="952500" cy="952500"/></a:xfrm>'
        '<a:prstGeom prst="rect"><a:avLst/></a:prstGeom></pic:spPr></pic:pic></a:graphicData>'
        "</a:graphic></wp:inline></w:drawing></w:r></w:p>"
    )
    doc = doc.replace("<w:body>", "<w:body>" + drawing, 1)
    return rezip(
        base, {"word/document.xml": doc.encode(), "word/_rels/document.xml.rels": rels.encode()}
    )


def html_with_remote_refs(port: int) -> bytes:
    base = f"http://127.0.0.1:{port}"
    return (
        f'<!DOCTYPE html><html><head><link rel="stylesheet" href="{base}/s.css">'
        f'<style>@import url("{base}/i.css"); body {{ background: url({base}/bg.png) }}</style>'
        f'<script src="{base}/x.js"></script></head><body><h1>Remote refs</h1>'
        f'<p>Nothing here may be fetched.</p><img src="{base}/x.png" alt="an image">'
        f'<iframe src="{base}/frame.html"></iframe>'
        f'<p style="background-image: url({base}/p.png)">styled</p></body></html>'
    ).encode()


@pytest.mark.parametrize("isolate", ["auto", "off"])
def test_external_references_are_never_fetched(listener: Listener, isolate: str) -> None:
    """A DOCX image linked to a URL (TargetMode="External") and an HTML page with remote img,
    stylesheet, script, iframe and CSS urls: the loopback listener sees no connection, with the
    network namespace (auto) and without it (off: the profile's settings and the HTML
    sanitizing alone)."""
    with OfficeConverter(OfficeConverterSettings(isolate_network=isolate)) as conv:
        docx = docx_with_external_image(f"http://127.0.0.1:{listener.port}/x.png")
        assert sniff(docx).kind == "office"
        result = ocr.extract(docx, converter=conv)
        assert "Lorem ipsum dolor sit amet" in all_text(result)
        html = ocr.extract(html_with_remote_refs(listener.port), converter=conv)
        assert "Nothing here may be fetched." in all_text(html)
        time.sleep(0.5)
    assert listener.connections == 0


# -- converter life cycle ---------------------------------------------------------------------


def test_crashed_converter_is_restarted() -> None:
    data = (CORPUS / "lorem_ipsum.docx").read_bytes()
    with OfficeConverter() as conv:
        conv.start()
        first = conv.pid
        assert first is not None
        os.killpg(first, signal.SIGKILL)  # soffice and the server die together
        time.sleep(0.2)
        result = ocr.extract(data, converter=conv)
        assert "Lorem ipsum dolor sit amet" in all_text(result)
        assert conv.pid != first and conv.starts == 2


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are not zombies (an init that does not reap
    leaves the killed ones as zombies)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def test_stuck_conversion_is_killed_and_the_next_works() -> None:
    data = (CORPUS / "wiki_duck.html").read_bytes()
    with OfficeConverter(OfficeConverterSettings(timeout_s=0.05)) as conv:
        conv.start()
        first = conv.pid
        with pytest.raises(ExtractionError) as info:
            ocr.extract(data, converter=conv)
        assert info.value.code == "extraction_failed"
        assert "longer than" in info.value.message
        assert first is not None
        deadline = time.monotonic() + 10  # SIGKILL is sent; dying takes a moment under load
        while live_group_members(first) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live_group_members(first) == []  # server, oosplash and soffice.bin are gone
        conv.settings.timeout_s = 120
        result = ocr.extract((CORPUS / "lorem_ipsum.docx").read_bytes(), converter=conv)
        assert result["page_count"] >= 1 and conv.starts == 2


def test_page_limit_applies_to_the_rendering(converter: OfficeConverter) -> None:
    data = (CORPUS / "wiki_duck.html").read_bytes()
    with pytest.raises(ocr.PageLimitExceededError):
        ocr.probe(data, config=ocr.EngineConfig(max_pages=3), converter=converter)
