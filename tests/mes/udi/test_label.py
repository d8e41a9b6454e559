"""UDI labels (mes/udi/label.py): one set of stored values gives the AIDC, the HRI lines and the
encoder input (UDI-3, UDI-4); rendered GS1 DataMatrix symbols (PNG and SVG) decode back with
zxing-cpp as ``]d2`` with exactly the intended elements, and a symbol that does not is refused
(UDI-5)."""

from __future__ import annotations

import io
from datetime import date

import pytest
import zxingcpp
from PIL import Image

from mes.udi.label import (
    SymbolVerificationFailed,
    UdiLabel,
    build_label,
    decode_image,
    render_datamatrix,
    symbol_problems,
    verify_symbol,
)
from mes.udi.rules import parse_scan

GTIN = "09506000134352"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def label() -> UdiLabel:
    return build_label(
        GTIN,
        lot="LOT42A",
        serial="SN0001",
        production_date=date(2026, 3, 1),
        expiry_date=date(2029, 2, 28),
    )


def test_label_content(label: UdiLabel) -> None:
    assert label.element_string == "0109506000134352112603011729022810LOT42A\x1d21SN0001"
    assert label.element_string_display == "0109506000134352112603011729022810LOT42A<GS>21SN0001"
    assert label.hri_lines == [
        "(01)09506000134352",
        "(11)2026-03-01",
        "(17)2029-02-28",
        "(10)LOT42A",
        "(21)SN0001",
    ]
    assert label.hri == "".join(label.hri_lines)
    assert label.aidc_data == "[01]09506000134352[11]260301[17]290228[10]LOT42A[21]SN0001"


def test_label_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match=r"^gtin"):
        build_label("09506000134353", lot="A")
    with pytest.raises(ValueError, match=r"^lot"):
        build_label(GTIN, lot="A#1")


def test_label_holds_exactly_the_required_ais() -> None:
    build_label(GTIN, lot="A1", expiry_date=date(2030, 1, 1), required_ais=["01", "17", "10"])
    with pytest.raises(ValueError, match=r"^serial: AI \(21\) is required"):
        build_label(GTIN, lot="A1", required_ais=["01", "10", "21"])
    with pytest.raises(ValueError, match=r"^expiry_date: AI \(17\) is not a required AI"):
        build_label(GTIN, lot="A1", expiry_date=date(2030, 1, 1), required_ais=["01", "10"])


def test_png_decodes_as_the_intended_elements(label: UdiLabel) -> None:
    png = render_datamatrix(label, "png", scale=3)
    assert png.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(png)) as image:
        width, height = image.size
    assert width == height  # square ECC 200, never a DMRE rectangle
    scan = verify_symbol(png)
    assert scan.errors == []
    assert scan.warnings == []
    assert scan.symbology_id == "]d2"
    assert scan.element_string == label.element_string
    assert (scan.gtin, scan.lot, scan.serial) == (GTIN, "LOT42A", "SN0001")
    assert (scan.production_date, scan.expiry_date) == (date(2026, 3, 1), date(2029, 2, 28))
    assert scan.hri == label.hri
    assert symbol_problems(label, scan) == []


def test_png_is_read_by_an_independent_decoder_call(label: UdiLabel) -> None:
    """zxing-cpp in its default HRI text mode shows the AIs a scanner would report."""
    png = render_datamatrix(label, "png")
    with Image.open(io.BytesIO(png)) as image:
        found = zxingcpp.read_barcodes(image)
    assert len(found) == 1
    assert found[0].format == zxingcpp.BarcodeFormat.DataMatrix
    assert found[0].symbology_identifier == "]d2"
    assert found[0].text == "(01)09506000134352(11)260301(17)290228(10)LOT42A(21)SN0001"
    assert found[0].bytes == label.element_string.encode("ascii")


def test_svg_is_rendered_and_checked(label: UdiLabel) -> None:
    svg = render_datamatrix(label, "svg", scale=2).decode("utf-8")
    assert svg.startswith("<?xml")
    assert "<svg" in svg
    assert "<path" in svg


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"lot": "A(1)B", "serial": "x/y.z"},
        {"lot": "21", "serial": "21"},
        {"serial": "S%&'*+,-./:;<=>?_\"!"},
        {"expiry_date": date(2030, 2, 28), "lot": "A" * 20, "serial": "9" * 20},
    ],
)
def test_any_valid_label_renders_and_verifies(fields: dict[str, object]) -> None:
    label = build_label(GTIN, **fields)  # type: ignore[arg-type]
    scan = verify_symbol(render_datamatrix(label, "png"))
    assert scan.ok, scan.errors
    assert scan.element_string == label.element_string
    render_datamatrix(label, "svg")


def test_a_symbol_that_reads_back_differently_is_refused() -> None:
    """2099 is carried as YY=99 and read back in the GS1 century window as 1999 (UDI-5)."""
    label = build_label(GTIN, lot="A1", expiry_date=date(2099, 1, 1))
    with pytest.raises(SymbolVerificationFailed, match="expiry date") as caught:
        render_datamatrix(label, "png")
    assert caught.value.rule == "UDI-5"


def test_plain_datamatrix_is_not_accepted_as_a_udi_symbol() -> None:
    """A DataMatrix without FNC1 (as pylibdmtx writes) decodes as ]d1 and is refused."""
    plain = zxingcpp.create_barcode("0109506000134352", zxingcpp.BarcodeFormat.DataMatrix)
    image = Image.fromarray(plain.to_image(scale=4))
    scan = decode_image(image)
    assert scan.symbology_id == "]d1"
    assert not scan.ok
    label = build_label(GTIN)
    problems = symbol_problems(label, scan)
    assert problems[0] == "the symbol decodes as ]d1, not ]d2 (GS1 DataMatrix)"


def test_verify_symbol_reports_unreadable_images() -> None:
    assert verify_symbol(b"not an image").errors[0].startswith("The image could not be read")
    blank = io.BytesIO()
    Image.new("L", (60, 60), 255).save(blank, format="PNG")
    assert verify_symbol(blank.getvalue()).errors == [
        "No DataMatrix symbol could be decoded from the image."
    ]


def test_symbol_problems_name_each_field(label: UdiLabel) -> None:
    other = parse_scan("]d20109506000134352112603011729022810LOT42B\x1d21SN0001")
    assert symbol_problems(label, other) == [
        "lot (10) reads 'LOT42B', expected 'LOT42A'",
        "element string reads '0109506000134352112603011729022810LOT42B<GS>21SN0001', "
        "expected '0109506000134352112603011729022810LOT42A<GS>21SN0001'",
    ]


def test_scale_is_bounded(label: UdiLabel) -> None:
    with pytest.raises(ValueError, match="scale"):
        render_datamatrix(label, "png", scale=0)
