"""The conversion server: LibreOffice driven through UNO, run under the *system* Python.

Not imported by the engine: ``ocr/office.py`` starts it as a script with the interpreter that
has LibreOffice's ``uno`` module (``/usr/bin/python3`` with Debian's ``python3-uno``), which is
not the venv's. It uses only the standard library and ``uno``.

What it does:

* starts one ``soffice.bin`` (headless, invisible, private profile written here with macros off,
  untrusted links blocked, no recalculation on load) listening on a UNO *pipe* (a Unix socket
  file, so it works inside a network namespace that has no interfaces up), as its own child, so
  one process-group kill from the engine side ends both;
* then serves requests from stdin: one JSON line in, one JSON line out on stdout::

      {"op": "convert", "src": "/dir/in.docx", "dst": "/dir/out.pdf", "filter": "MS Word 2007 XML",
       "family": "writer", "max_pages": 1000, "max_rows": 20000, "max_cols": 256}
      -> {"ok": true, "warnings": [...]}
      -> {"ok": false, "error": "password" | "load" | "export" | "internal", "detail": "..."}
      {"op": "ping"} -> {"ok": true}

Time limits are the caller's: it kills this process group when an answer is late.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import uno
from com.sun.star.beans import PropertyValue
from com.sun.star.connection import NoConnectException

# com.sun.star.document.MacroExecMode.NEVER_EXECUTE, UpdateDocMode.NO_UPDATE
NEVER_EXECUTE = 0
NO_UPDATE = 0

#: registrymodifications.xcu of the private profile. MacroSecurityLevel 3 = "very high" (only
#: signed macros from trusted locations; there are none) and DisableMacrosExecution; links to
#: anything outside the trusted locations (there are none) are blocked; formulas are never
#: recalculated on load (WEBSERVICE() and friends would fetch); no update checks, no recovery.
_XCU_ITEMS = [
    ("/org.openoffice.Office.Common/Security/Scripting", "MacroSecurityLevel", "int", "3"),
    (
        "/org.openoffice.Office.Common/Security/Scripting",
        "DisableMacrosExecution",
        "boolean",
        "true",
    ),
    (
        "/org.openoffice.Office.Common/Security/Scripting",
        "BlockUntrustedRefererLinks",
        "boolean",
        "true",
    ),
    ("/org.openoffice.Office.Calc/Formula/Load", "OOXMLRecalcMode", "int", "1"),
    ("/org.openoffice.Office.Calc/Formula/Load", "ODFRecalcMode", "int", "1"),
    ("/org.openoffice.Office.Common/Misc", "UseLocking", "boolean", "false"),
    ("/org.openoffice.Office.Common/Misc", "FirstRun", "boolean", "false"),
    ("/org.openoffice.Office.Common/Misc", "ShowTipOfTheDay", "boolean", "false"),
    ("/org.openoffice.Office.Recovery/AutoSave", "Enabled", "boolean", "false"),
    ("/org.openoffice.Office.Recovery/RecoveryInfo", "Enabled", "boolean", "false"),
    ("/org.openoffice.Office.Common/Save/Document", "CreateBackup", "boolean", "false"),
    ("/org.openoffice.Office.Writer/Content/Update", "Link", "int", "0"),
    ("/org.openoffice.Office.Calc/Content/Update", "Link", "int", "1"),
    ("/org.openoffice.Office.Common/Load", "ShowOfficeUpdateDialog", "boolean", "false"),
    ("/org.openoffice.Office.Common/Internet", "UseSystemProxy", "boolean", "false"),
]


def write_profile(profile: Path) -> None:
    user = profile / "user"
    user.mkdir(parents=True, exist_ok=True)
    items = "\n".join(
        f'<item oor:path="{path}"><prop oor:name="{name}" oor:op="fuse">'
        f"<value>{value}</value></prop></item>"
        for path, name, _kind, value in _XCU_ITEMS
    )
    (user / "registrymodifications.xcu").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<oor:items xmlns:oor="http://openoffice.org/2001/registry"'
        ' xmlns:xs="http://www.w3.org/2001/XMLSchema"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
        f"{items}\n</oor:items>\n"
    )


def prop(name: str, value: Any) -> Any:
    p = PropertyValue()
    p.Name = name
    p.Value = value
    return p


def props(**kw: Any) -> tuple[Any, ...]:
    return tuple(prop(k, v) for k, v in kw.items())


class Server:
    def __init__(self, soffice: str, profile: Path, pipe: str) -> None:
        self.soffice = soffice
        self.profile = profile
        self.pipe = pipe
        self.proc: subprocess.Popen[bytes] | None = None
        self.desktop: Any = None
        self.ctx: Any = None

    def start(self, timeout_s: float = 60.0) -> None:
        write_profile(self.profile)
        args = [
            self.soffice,
            "--headless",
            "--invisible",
            "--nologo",
            "--norestore",
            "--nodefault",
            "--nofirststartwizard",
            "--nolockcheck",
            f"-env:UserInstallation={self.profile.as_uri()}",
            f"--accept=pipe,name={self.pipe};urp;StarOffice.ComponentContext",
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        local = uno.getComponentContext()
        resolver = local.ServiceManager.createInstanceWithContext(
            "com.sun.star.bridge.UnoUrlResolver", local
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ctx = resolver.resolve(f"uno:pipe,name={self.pipe};urp;StarOffice.ComponentContext")
                break
            except NoConnectException:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("soffice did not start") from None
                time.sleep(0.05)
        self.ctx = ctx
        self.desktop = ctx.ServiceManager.createInstanceWithContext(
            "com.sun.star.frame.Desktop", ctx
        )

    # -- one document ----------------------------------------------------------------------

    def convert(self, req: dict[str, Any]) -> dict[str, Any]:
        src = Path(req["src"]).as_uri()
        dst = Path(req["dst"]).as_uri()
        load = props(
            Hidden=True,
            ReadOnly=True,
            MacroExecutionMode=NEVER_EXECUTE,
            UpdateDocMode=NO_UPDATE,
            # a wrong password fails the load instead of asking (there is no one to ask)
            Password="",
            RepairPackage=False,
            Silent=True,
            FilterName=req["filter"],
        )
        try:
            doc = self.desktop.loadComponentFromURL(src, "_blank", 0, load)
        except Exception as exc:
            text = str(getattr(exc, "Message", "") or exc)
            if "password" in text.lower() or "wrongpassword" in text.lower():
                return {"ok": False, "error": "password", "detail": text[:300]}
            return {"ok": False, "error": "load", "detail": f"{type(exc).__name__}: {text[:300]}"}
        if doc is None:
            return {"ok": False, "error": "load", "detail": "no document"}
        warnings: list[str] = []
        try:
            family = req["family"]
            if family == "calc":
                self._prepare_calc(doc, req, warnings)
            elif family == "writer":
                self._rule_writer_tables(doc)
            elif family == "impress":
                self._rule_impress_tables(doc)
            export = {
                "writer": "writer_pdf_Export",
                "calc": "calc_pdf_Export",
                "impress": "impress_pdf_Export",
            }[family]
            filter_data = uno.Any(
                "[]com.sun.star.beans.PropertyValue",
                props(
                    # one page more than allowed: the engine then knows the limit was exceeded
                    PageRange=f"1-{int(req['max_pages']) + 1}",
                    ExportNotes=False,
                    ExportBookmarks=False,
                    UseTaggedPDF=False,
                    ExportLinksRelativeFsys=False,
                    ReduceImageResolution=True,
                    MaxImageResolution=300,
                ),
            )
            uno.invoke(
                doc,
                "storeToURL",
                (dst, props(FilterName=export, Overwrite=True, FilterData=filter_data)),
            )
        except Exception as exc:
            return {
                "ok": False,
                "error": "export",
                "detail": f"{type(exc).__name__}: {str(exc)[:300]}",
            }
        finally:
            try:
                doc.close(True)
            except Exception:
                with contextlib.suppress(Exception):
                    doc.dispose()
        return {"ok": True, "warnings": warnings}

    def _prepare_calc(self, doc: Any, req: dict[str, Any], warnings: list[str]) -> None:
        """Print each sheet's used range with its grid (so the PDF path sees ruled tables),
        capped at max_rows x max_cols; sheets are printed one after another."""
        max_rows, max_cols = int(req["max_rows"]), int(req["max_cols"])
        styles = doc.getStyleFamilies().getByName("PageStyles")
        seen: set[str] = set()
        sheets = doc.getSheets()
        for i in range(sheets.getCount()):
            sheet = sheets.getByIndex(i)
            name = sheet.PageStyle
            if name not in seen:
                seen.add(name)
                style = styles.getByName(name)
                style.PrintGrid = True
                style.PrintHeaders = False
                style.PrintAnnotations = False
                style.HeaderIsOn = False
                style.FooterIsOn = False
            cursor = sheet.createCursor()
            cursor.gotoEndOfUsedArea(False)
            addr = cursor.getRangeAddress()
            rows, cols = addr.EndRow + 1, addr.EndColumn + 1
            if rows > max_rows or cols > max_cols:
                warnings.append(
                    f"sheet {sheet.getName()!r}: its used range has {rows:,} rows and {cols:,}"
                    f" columns; only the first {min(rows, max_rows):,} rows and"
                    f" {min(cols, max_cols):,} columns are extracted"
                )
                area = sheet.getCellRangeByPosition(
                    0, 0, min(cols, max_cols) - 1, min(rows, max_rows) - 1
                ).getRangeAddress()
                sheet.setPrintAreas((area,))

    def _rule_writer_tables(self, doc: Any) -> None:
        """Give every text table thin borders on all cells, so the rendering has the ruling
        lines the PDF path's table detection reads (merged cells keep their spans)."""
        if not hasattr(doc, "getTextTables"):
            return
        line = uno.createUnoStruct("com.sun.star.table.BorderLine2")
        line.OuterLineWidth = 9
        line.LineWidth = 9
        tables = doc.getTextTables()
        for i in range(tables.getCount()):
            table = tables.getByIndex(i)
            for cell_name in table.getCellNames():
                cell = table.getCellByName(cell_name)
                for side in ("LeftBorder", "RightBorder", "TopBorder", "BottomBorder"):
                    cell.setPropertyValue(side, line)

    def _rule_impress_tables(self, doc: Any) -> None:
        if not hasattr(doc, "getDrawPages"):
            return
        line = uno.createUnoStruct("com.sun.star.table.BorderLine2")
        line.OuterLineWidth = 9
        line.LineWidth = 9
        pages = doc.getDrawPages()
        for p in range(pages.getCount()):
            page = pages.getByIndex(p)
            for s in range(page.getCount()):
                shape = page.getByIndex(s)
                if shape.getShapeType() != "com.sun.star.drawing.TableShape":
                    continue
                model = shape.Model
                for r in range(model.getRows().getCount()):
                    for c in range(model.getColumns().getCount()):
                        cell = model.getCellByPosition(c, r)
                        for side in ("LeftBorder", "RightBorder", "TopBorder", "BottomBorder"):
                            cell.setPropertyValue(side, line)


def main() -> int:
    soffice, profile, pipe = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    out = sys.stdout
    server = Server(soffice, profile, pipe)
    try:
        server.start()
    except Exception as exc:
        out.write(json.dumps({"ok": False, "error": "start", "detail": str(exc)}) + "\n")
        out.flush()
        return 1
    out.write(
        json.dumps({"ok": True, "ready": True, "pid": server.proc.pid if server.proc else None})
        + "\n"
    )
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if req.get("op") == "ping":
                resp: dict[str, Any] = {"ok": True}
            elif req.get("op") == "convert":
                resp = server.convert(req)
            else:
                resp = {"ok": False, "error": "internal", "detail": "unknown op"}
        except Exception:
            resp = {"ok": False, "error": "internal", "detail": traceback.format_exc()[-500:]}
        out.write(json.dumps(resp) + "\n")
        out.flush()
    with contextlib.suppress(Exception):
        server.desktop.terminate()
    if server.proc is not None:
        try:
            server.proc.wait(5)
        except subprocess.TimeoutExpired:
            server.proc.kill()
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
