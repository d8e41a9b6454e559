"""UDI label content and GS1 DataMatrix symbols (UDI-3, UDI-4, UDI-5).

``build_label`` turns one set of stored values into the AIDC element string, the HRI lines and
the encoder input, all from the same dates (UDI-3). ``render_datamatrix`` encodes with
zxing-cpp in GS1 mode (FNC1 first: ``]d2``), decodes what it produced and refuses to hand out a
symbol that does not read back as the intended elements (UDI-5).

Rendering and decoding are CPU work and synchronous: call them from a worker thread
(``asyncio.to_thread`` / ``run_in_threadpool``), never directly inside ``async def``.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Collection
from datetime import date
from typing import Any, ClassVar, Literal

import zxingcpp
from PIL import Image, ImageDraw, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict

from mes.errors import MesError
from mes.udi import rules
from mes.udi.rules import UdiScan

MAX_SCALE = 40
_DATAMATRIX = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.DataMatrix)
_SVG_NS = "{http://www.w3.org/2000/svg}"
_SVG_RECT = re.compile(r"M(\d+) (\d+)h(\d+)v(\d+)h-(\d+)Z")
_AI_FIELDS = {
    "01": "gtin",
    "11": "production_date",
    "17": "expiry_date",
    "10": "lot",
    "21": "serial",
}
"""AI -> ``build_label`` argument, in the encoding order of DOMAIN 6."""


class SymbolVerificationFailed(MesError):
    """A generated symbol did not decode as the intended GS1 elements (UDI-5): never print it."""

    status_code: ClassVar[int] = 500
    title: ClassVar[str] = "Label symbol verification failed"
    slug: ClassVar[str] = "label-verification-failed"


class UdiLabel(BaseModel):
    """What one UDI label carries. ``element_string`` is the AIDC data a scanner returns (GS as
    0x1D; ``element_string_display`` shows it as ``<GS>``), ``hri_lines`` the printed text with
    dates as YYYY-MM-DD, and ``aidc_data`` the encoder input."""

    model_config = ConfigDict(frozen=True)

    gtin: str
    lot: str | None
    serial: str | None
    production_date: date | None
    expiry_date: date | None
    element_string: str
    element_string_display: str
    hri: str
    hri_lines: list[str]
    aidc_data: str


def build_label(
    gtin: str,
    *,
    lot: str | None = None,
    serial: str | None = None,
    production_date: date | None = None,
    expiry_date: date | None = None,
    required_ais: Collection[str] | None = None,
) -> UdiLabel:
    """The label of one unit or package from its stored values (UDI-1, UDI-2, UDI-3).

    With ``required_ais`` (the trade item's AIs) the label must carry exactly those (UDI-4).
    ``aidc_data`` uses zint's square-bracket AI form (``[01]...[10]...``): round brackets are
    CSET 82 characters a lot may contain, square brackets are not. Raises ValueError naming
    the field.
    """
    values: dict[str, Any] = {
        "lot": lot,
        "serial": serial,
        "production_date": production_date,
        "expiry_date": expiry_date,
    }
    if required_ais is not None:
        present = {"01"} | {ai for ai, name in _AI_FIELDS.items() if values.get(name) is not None}
        wanted = set(required_ais)
        for ai in sorted(wanted - present):
            raise ValueError(f"{_AI_FIELDS.get(ai, ai)}: AI ({ai}) is required for this item")
        for ai in sorted(present - wanted):
            raise ValueError(f"{_AI_FIELDS[ai]}: AI ({ai}) is not a required AI of this item")
    data = rules.element_string(gtin, **values)
    lines = rules.hri_lines(gtin, **values)
    aidc = "".join(f"[{ai}]{value}" for ai, value in _aidc_pairs(gtin, values))
    return UdiLabel(
        gtin=gtin,
        lot=lot,
        serial=serial,
        production_date=production_date,
        expiry_date=expiry_date,
        element_string=data,
        element_string_display=rules.display_gs(data),
        hri="".join(lines),
        hri_lines=lines,
        aidc_data=aidc,
    )


def _aidc_pairs(gtin: str, values: dict[str, Any]) -> list[tuple[str, str]]:
    pairs = [("01", gtin)]
    for ai in ("11", "17", "10", "21"):
        value = values[_AI_FIELDS[ai]]
        if value is None:
            continue
        pairs.append((ai, value.strftime("%y%m%d") if isinstance(value, date) else value))
    return pairs


def _encode(label: UdiLabel) -> zxingcpp.Barcode:
    try:
        # force_square: left to itself zxing-cpp 3.1 may pick a DMRE (rectangular extension)
        # size, which many scanners cannot read and which zxing-cpp decodes as ]d8, not ]d2.
        return zxingcpp.create_barcode(
            label.aidc_data, zxingcpp.BarcodeFormat.DataMatrix, gs1=True, force_square=True
        )
    except ValueError as exc:
        raise SymbolVerificationFailed(
            f"the DataMatrix encoder refused the label data: {exc}", rule="UDI-5"
        ) from exc


def _to_pil(image: zxingcpp.Image) -> Image.Image:
    # zxingcpp.Image exposes the array interface (8-bit grey); no numpy needed.
    return Image.fromarray(image)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _rasterize_svg(svg: str) -> Image.Image:
    """Draw the SVG zxing-cpp (zint) writes: a white background rect and one path of
    axis-aligned module rectangles. Anything else is refused, so an SVG we cannot check is
    never handed out (UDI-5)."""
    root = ET.fromstring(svg)
    width, height = int(root.attrib["width"]), int(root.attrib["height"])
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    paths = list(root.iter(f"{_SVG_NS}path"))
    if len(paths) != 1:
        raise ValueError(f"expected one path in the SVG, found {len(paths)}")
    commands = paths[0].attrib.get("d", "")
    rects = list(_SVG_RECT.finditer(commands))
    if "".join(m.group(0) for m in rects) != commands:
        raise ValueError("the SVG path holds commands other than module rectangles")
    for m in rects:
        x, y, w, h, back = (int(g) for g in m.groups())
        if back != w:
            raise ValueError("the SVG path holds a rectangle that does not close")
        draw.rectangle((x, y, x + w - 1, y + h - 1), fill=0)
    return canvas


def decode_image(image: Image.Image) -> UdiScan:
    """Decode the one DataMatrix in ``image`` the way a scanner reports it (AIM symbology
    identifier + data, GS between fields) and parse it."""
    found = zxingcpp.read_barcodes(image, formats=_DATAMATRIX, text_mode=zxingcpp.TextMode.Plain)
    if not found:
        return UdiScan(errors=["No DataMatrix symbol could be decoded from the image."])
    if len(found) > 1:
        return UdiScan(errors=[f"The image holds {len(found)} symbols; expected exactly one."])
    symbol = found[0]
    return rules.parse_scan(symbol.symbology_identifier + symbol.bytes.decode("latin-1"))


def verify_symbol(png_bytes: bytes) -> UdiScan:
    """UDI-5: decode a rendered PNG and parse what it holds (refused or unreadable images come
    back as a ``UdiScan`` with errors)."""
    try:
        with Image.open(io.BytesIO(png_bytes)) as opened:
            image = opened.convert("L")
    except (UnidentifiedImageError, OSError) as exc:
        return UdiScan(errors=[f"The image could not be read: {exc}"])
    return decode_image(image)


def symbol_problems(label: UdiLabel, scan: UdiScan) -> list[str]:
    """UDI-5: why a decoded symbol is not the intended one (empty when it is)."""
    problems = rules.scan_mismatches(
        scan,
        gtin=label.gtin,
        lot=label.lot,
        serial=label.serial,
        production_date=label.production_date,
        expiry_date=label.expiry_date,
        element_string=label.element_string,
    )
    if scan.symbology_id != "]d2":
        shown = scan.symbology_id or "nothing"
        problems.insert(0, f"the symbol decodes as {shown}, not ]d2 (GS1 DataMatrix)")
    return problems


def render_datamatrix(label: UdiLabel, fmt: Literal["png", "svg"], scale: int = 4) -> bytes:
    """The label's GS1 DataMatrix as PNG or SVG bytes (``scale`` pixels per module), verified
    by decoding before it is returned (UDI-5). Raises ``SymbolVerificationFailed`` when the
    symbol does not decode as ``]d2`` with exactly the label's elements. Synchronous CPU work."""
    if not 1 <= scale <= MAX_SCALE:
        raise ValueError(f"scale: must be 1..{MAX_SCALE} pixels per module")
    barcode = _encode(label)
    png = _png(_to_pil(barcode.to_image(scale=scale)))
    problems = symbol_problems(label, verify_symbol(png))
    output = png
    if fmt == "svg":
        svg = barcode.to_svg(scale=scale)
        try:
            drawn = _rasterize_svg(svg)
        except (ValueError, KeyError, ET.ParseError) as exc:
            problems.append(f"the SVG could not be checked: {exc}")
        else:
            problems += [f"SVG: {p}" for p in symbol_problems(label, decode_image(drawn))]
        output = svg.encode("utf-8")
    if problems:
        raise SymbolVerificationFailed(
            "the generated symbol does not read back as the label: " + "; ".join(problems),
            rule="UDI-5",
        )
    return output
