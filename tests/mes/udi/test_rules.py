"""Pure GS1 / UDI rules (mes/udi/rules.py): scan parsing over published GS1 example strings in
every form a scanner or a person produces, the checks biip lacks (UDI-1 check digit, AI 01
association, CSET 82 and length (UDI-2), separator suspected, AIM prefix), DD=00 dates, and
the element string / HRI of our labels (UDI-3, UDI-4) read back through ``parse_scan``.

Expected values are written out by hand from the GS1 rules, not computed with the module.
"""

from __future__ import annotations

import random
from datetime import date, datetime

import pytest

from mes.udi.rules import (
    CSET82,
    GS,
    ScanOutcome,
    UdiScan,
    element_string,
    escape_raw,
    expiry_date_for,
    hri_lines,
    hri_text,
    parse_scan,
    scan_mismatches,
    suspected_split,
    unescape_raw,
)

GTIN = "09506000134352"  # GS1 example GTIN (GS1 Digital Link / DataMatrix guideline)


def assert_ok(scan: UdiScan) -> None:
    assert scan.errors == [], scan.errors
    assert scan.warnings == [], scan.warnings
    assert scan.ok
    assert scan.outcome == ScanOutcome.ok


# --- published examples --------------------------------------------------------------------------

EXAMPLE_1 = {
    "gtin": GTIN,
    "lot": "ABC123",
    "serial": None,
    "production_date": None,
    "expiry_date": date(2020, 12, 25),
    "element_string": "01095060001343521720122510ABC123",
    "hri": "(01)09506000134352(17)2020-12-25(10)ABC123",
}
EXAMPLE_2 = {
    "gtin": "09501101020917",
    "lot": "ABCD1234",
    "serial": "10",
    "production_date": None,
    "expiry_date": date(2019, 5, 8),
    "element_string": "01095011010209171719050810ABCD1234\x1d2110",
    "hri": "(01)09501101020917(17)2019-05-08(10)ABCD1234(21)10",
}
EXAMPLE_3 = {  # biip's documentation example: GTIN, best-before (15), lot
    "gtin": "07032069804988",
    "lot": "0329",
    "serial": None,
    "production_date": None,
    "expiry_date": None,
    "element_string": "010703206980498815210526100329",
    "hri": "(01)07032069804988(15)2021-05-26(10)0329",
}


@pytest.mark.parametrize(
    ("raw", "expected", "symbology"),
    [
        ("(01)09506000134352(17)201225(10)ABC123", EXAMPLE_1, None),
        ("]d201095060001343521720122510ABC123", EXAMPLE_1, "]d2"),
        ("]C101095060001343521720122510ABC123", EXAMPLE_1, "]C1"),
        ("]Q301095060001343521720122510ABC123", EXAMPLE_1, "]Q3"),
        ("01095060001343521720122510ABC123", EXAMPLE_1, None),
        ("]d2\x1d01095060001343521720122510ABC123\r\n", EXAMPLE_1, "]d2"),
        ("(01) 09506000134352 (17) 2020-12-25 (10) ABC123", EXAMPLE_1, None),
        ("]d201095011010209171719050810ABCD1234\x1d2110", EXAMPLE_2, "]d2"),
        ("]d201095011010209171719050810ABCD1234|2110", EXAMPLE_2, "]d2"),
        ("01095011010209171719050810ABCD1234|2110|", EXAMPLE_2, None),
        ("(01)09501101020917(17)190508(10)ABCD1234(21)10", EXAMPLE_2, None),
        ("]C1010703206980498815210526100329", EXAMPLE_3, "]C1"),
        ("(01)07032069804988(15)210526(10)0329", EXAMPLE_3, None),
    ],
)
def test_published_examples_in_every_form(
    raw: str, expected: dict[str, object], symbology: str | None
) -> None:
    scan = parse_scan(raw)
    assert_ok(scan)
    assert scan.symbology_id == symbology
    assert scan.is_hri == raw.lstrip().startswith("(")
    for name, value in expected.items():
        assert getattr(scan, name) == value, name


def test_other_ais_are_kept_in_elements() -> None:
    scan = parse_scan("]C1010703206980498815210526100329")
    assert scan.elements == (("01", "07032069804988"), ("15", "210526"), ("10", "0329"))


# --- symbology identifiers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "symbology", "words"),
    [
        ("]d101095060001343521720122510ABC123", "]d1", ["Plain DataMatrix (]d1)", "FNC1"]),
        ("]Q101095060001343521720122510ABC123", "]Q1", ["]Q1 is not accepted"]),
        ("]C001095060001343521720122510ABC123", "]C0", ["]C0 is not accepted"]),
        ("]e00109506000134352", "]e0", ["]e0 is not accepted"]),
        ("]d", None, ["incomplete symbology identifier"]),
    ],
)
def test_non_gs1_symbologies_are_refused(raw: str, symbology: str | None, words: list[str]) -> None:
    scan = parse_scan(raw)
    assert not scan.ok
    assert scan.outcome == ScanOutcome.rejected
    assert scan.symbology_id == symbology
    assert scan.gtin is None
    assert len(scan.errors) == 1
    for word in words:
        assert word in scan.errors[0]


def test_prefix_without_data_is_refused() -> None:
    scan = parse_scan("]d2")
    assert scan.errors == ["The scan holds no data after the symbology identifier ]d2."]


def test_encoded_hri_brackets_are_refused() -> None:
    scan = parse_scan("]d2(01)09506000134352(10)ABC123")
    assert not scan.ok
    assert "brackets" in scan.errors[0]


@pytest.mark.parametrize("raw", ["", "   ", "\r\n"])
def test_empty_scan(raw: str) -> None:
    assert parse_scan(raw).errors == ["The scan is empty."]


def test_digital_link_uri_is_refused_with_a_reason() -> None:
    scan = parse_scan("https://id.gs1.org/01/09506000134352/10/ABC123")
    assert not scan.ok
    assert "Digital Link" in scan.errors[0]


# --- check digit, associations, structure --------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "]d20109506000134353",
        "]d2010950600013435317201225",
        "(01)09506000134353(10)ABC123",
    ],
)
def test_bad_gtin_check_digit_is_an_error(raw: str) -> None:
    scan = parse_scan(raw)
    assert not scan.ok
    assert scan.gtin == "09506000134353"  # what was read, for the operator to see
    assert any("AI (01)" in e and "check digit is 3, expected 2" in e for e in scan.errors)


@pytest.mark.parametrize(
    ("raw", "orphans"),
    [
        ("]d210ABC123", ["10"]),
        ("]d217201225", ["17"]),
        ("]d211200101", ["11"]),
        ("]d21721010110LOT1\x1d21SN1", ["17", "10", "21"]),
        ("(10)ABC123(21)SN1", ["10", "21"]),
    ],
)
def test_lot_serial_and_dates_need_a_gtin(raw: str, orphans: list[str]) -> None:
    scan = parse_scan(raw)
    assert not scan.ok
    flagged = sorted(ai for ai in orphans if any(f"AI ({ai})" in e for e in scan.errors))
    assert flagged == sorted(orphans)
    assert all("needs AI (01) GTIN" in e for e in scan.errors)


def test_a_scan_without_any_gtin_identifies_nothing() -> None:
    scan = parse_scan("]C100106141412345678908")  # an SSCC only
    assert not scan.ok
    assert scan.errors == [
        "The scan holds no GTIN (AI 01), so it does not identify a device (UDI-DI)."
    ]


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("hello", ["does not start with a GS1 Application Identifier"]),
        ("]d20109506000134352171313001", ["AI (17) expiry date", "'131300'", "YYMMDD"]),
        ("]d2010950600013435217200230", ["AI (17) expiry date", "'200230'"]),
        ("(01)09506000134352(17)2020-02-30", ["AI (17) expiry date", "not a calendar date"]),
        ("(01)09506000134352(17)2099-01-01", ["cannot be carried as YYMMDD"]),
        ("(01)09506000134352(9999)X", ["(9999) is not a known GS1 Application Identifier"]),
        ("(01)09506000134352(7)X", ["AI (01) GTIN: '09506000134352(7)X' is not 14 digits"]),
        ("01095060001343521", ["does not start with a known GS1 Application Identifier"]),
        ("(01)0950600013435", ["AI (01) GTIN", "not 14 digits"]),
    ],
)
def test_unreadable_data_is_explained(raw: str, words: list[str]) -> None:
    scan = parse_scan(raw)
    assert not scan.ok
    assert scan.element_string is None
    assert scan.hri is None
    message = " ".join(scan.errors)
    for word in words:
        assert word in message, message


def test_same_ai_twice_with_different_values() -> None:
    scan = parse_scan("(01)09506000134352(10)A1(10)B2")
    assert not scan.ok
    assert "AI (10) lot appears twice" in scan.errors[0]


def test_expiry_before_production_date() -> None:
    scan = parse_scan("(01)09506000134352(11)210101(17)200101")
    assert scan.errors == [
        "AI (17) expiry date 2020-01-01 is before AI (11) production date 2021-01-01."
    ]


# --- dates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yymmdd", "expected"),
    [
        ("251200", date(2025, 12, 31)),
        ("240200", date(2024, 2, 29)),
        ("230200", date(2023, 2, 28)),
        ("250400", date(2025, 4, 30)),
        ("250415", date(2025, 4, 15)),
    ],
)
def test_day_00_means_last_day_of_month(yymmdd: str, expected: date) -> None:
    scan = parse_scan(f"]d201{GTIN}11{yymmdd}17{yymmdd}")
    assert_ok(scan)
    assert scan.production_date == expected
    assert scan.expiry_date == expected
    assert scan.element_string == f"01{GTIN}11{yymmdd}17{yymmdd}"  # as encoded
    assert scan.hri == f"(01){GTIN}(11){expected.isoformat()}(17){expected.isoformat()}"


# --- CSET 82 and length (UDI-2) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (f"]d201{GTIN}10AB#C", ["AI (10) lot", "'#'", "CSET 82"]),
        (f"]d201{GTIN}10AB C", ["AI (10) lot", "' '", "CSET 82"]),
        (f"]d201{GTIN}10ABC\x1d21SN@1", ["AI (21) serial number", "'@'", "CSET 82"]),
        (f"]d201{GTIN}10ABC\x1d21S\u00e9", ["'\u00e9'", "CSET 82"]),
        (
            "(01)\u0660\u0669\u0665\u0660\u0666\u0660\u0660\u0660\u0661\u0663\u0664"
            "\u0663\u0665\u0662",
            ["cannot hold", "CSET 82"],
        ),
        (f"]d201{GTIN}10AB\tC", ["\\x09", "CSET 82"]),
        (f"]d201{GTIN}10{'A' * 21}", ["AI (10) lot is longer than 20 characters"]),
        (f"]d201{GTIN}10ABC\x1d21{'9' * 21}", ["AI (21) serial number is longer than 20"]),
        (f"(01){GTIN}(10)A B", ["AI (10) lot 'A B' contains a space"]),
        (f"(01){GTIN}(10)AB|C", ["AI (10) lot 'AB|C' contains '|'", "CSET 82"]),
        (f"(01){GTIN}(21){'X' * 21}", ["AI (21) serial number", "21 characters", "at most 20"]),
        (f"(01){GTIN}(10)", ["AI (10) lot is empty"]),
    ],
)
def test_lot_and_serial_must_be_cset82_and_short(raw: str, words: list[str]) -> None:
    scan = parse_scan(raw)
    assert not scan.ok
    message = " ".join(scan.errors)
    for word in words:
        assert word in message, message


def test_every_cset82_character_is_accepted_in_a_lot() -> None:
    chars = "".join(sorted(CSET82))
    assert len(chars) == 82
    for start in range(0, 82, 20):
        lot = chars[start : start + 20]
        scan = parse_scan(f"]d201{GTIN}10{lot}\x1d21SN1")
        assert scan.ok, (lot, scan.errors)
        assert (scan.lot, scan.serial) == (lot, "SN1")


# --- keyboard-wedge separator loss ---------------------------------------------------------------


def test_swallowed_separator_is_flagged() -> None:
    scan = parse_scan(f"]d201{GTIN}10LOT42A21SN0001")
    assert scan.ok  # readable, but doubtful
    assert scan.outcome == ScanOutcome.suspect
    assert scan.separator_suspected
    assert scan.lot == "LOT42A21SN0001"
    assert scan.serial is None
    assert len(scan.warnings) == 1
    assert "Separator suspected" in scan.warnings[0]
    assert "'LOT42A'" in scan.warnings[0]
    assert "'SN0001'" in scan.warnings[0]


def test_swallowed_separator_is_an_error_when_a_serial_is_required() -> None:
    scan = parse_scan(f"]d201{GTIN}10LOT42A21SN0001", required_ais=["01", "10", "21"])
    assert not scan.ok
    assert scan.separator_suspected
    assert len(scan.errors) == 1
    assert "Separator suspected" in scan.errors[0]


@pytest.mark.parametrize(
    "raw",
    [
        f"]d201{GTIN}10LOT42A\x1d21SN0001",  # separator kept: serial read
        f"]d201{GTIN}10LOT42A|21SN0001",  # wedge substitute
        f"(01){GTIN}(10)LOT42A21SN0001",  # typed explicitly as one lot
        f"]d201{GTIN}10LOT2021",  # nothing after "21"
        f"]d201{GTIN}10A21BC",  # too short to be a serial
        f"]d201{GTIN}10LOT21ABCD",  # no digit: not a plausible serial
    ],
)
def test_separator_not_suspected(raw: str) -> None:
    scan = parse_scan(raw)
    assert not scan.separator_suspected
    assert scan.warnings == []


@pytest.mark.parametrize(
    ("lot", "split"),
    [
        ("LOT42A21SN0001", ("LOT42A", "SN0001")),
        ("B2105-17", ("B", "05-17")),
        ("21ABC123", None),
        ("LOT21", None),
        ("X21ABC", None),
    ],
)
def test_suspected_split(lot: str, split: tuple[str, str] | None) -> None:
    assert suspected_split(lot) == split


# --- required AIs (UDI-4) ------------------------------------------------------------------------


def test_required_ais_must_match_exactly() -> None:
    raw = f"]d201{GTIN}1720122510ABC123"
    assert parse_scan(raw, required_ais=["01", "17", "10"]).ok
    missing = parse_scan(raw, required_ais=["01", "17", "10", "21"])
    assert missing.errors == ["AI (21) serial number is required for this item but missing."]
    extra = parse_scan(raw, required_ais=["01", "10"])
    assert extra.errors == ["AI (17) expiry date is not one of this item's required AIs (UDI-4)."]


# --- generation (UDI-3) and round trip -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "aidc", "hri"),
    [
        ({}, f"01{GTIN}", f"(01){GTIN}"),
        ({"lot": "ABC123"}, f"01{GTIN}10ABC123", f"(01){GTIN}(10)ABC123"),
        ({"serial": "SN1"}, f"01{GTIN}21SN1", f"(01){GTIN}(21)SN1"),
        (
            {"lot": "ABC123", "serial": "SN1"},
            f"01{GTIN}10ABC123\x1d21SN1",
            f"(01){GTIN}(10)ABC123(21)SN1",
        ),
        (
            {
                "serial": "SN1",
                "lot": "L-7",
                "expiry_date": date(2028, 2, 29),
                "production_date": date(2026, 3, 1),
            },
            f"01{GTIN}11260301172802291" + "0L-7\x1d21SN1",
            f"(01){GTIN}(11)2026-03-01(17)2028-02-29(10)L-7(21)SN1",
        ),
        (
            {"expiry_date": date(2030, 1, 31), "lot": "9"},
            f"01{GTIN}1730013110" + "9",
            f"(01){GTIN}(17)2030-01-31(10)9",
        ),
    ],
)
def test_element_string_and_hri_order(fields: dict[str, object], aidc: str, hri: str) -> None:
    assert element_string(GTIN, **fields) == aidc  # type: ignore[arg-type]
    assert hri_text(GTIN, **fields) == hri  # type: ignore[arg-type]
    assert "".join(hri_lines(GTIN, **fields)) == hri  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("gtin", "fields", "field_name"),
    [
        ("09506000134353", {}, "gtin"),
        ("9506000134352", {}, "gtin"),
        (GTIN, {"lot": "AB#C"}, "lot"),
        (GTIN, {"lot": ""}, "lot"),
        (GTIN, {"lot": "A" * 21}, "lot"),
        (GTIN, {"serial": "SN 1"}, "serial"),
        (GTIN, {"serial": "S|1"}, "serial"),
        (GTIN, {"production_date": datetime(2026, 1, 1)}, "production_date"),  # noqa: DTZ001
        (GTIN, {"expiry_date": date(2025, 1, 1), "production_date": date(2026, 1, 1)}, "expiry"),
    ],
)
def test_generation_refuses_bad_values(
    gtin: str, fields: dict[str, object], field_name: str
) -> None:
    with pytest.raises(ValueError, match=f"^{field_name}"):
        element_string(gtin, **fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"^{field_name}"):
        hri_text(gtin, **fields)  # type: ignore[arg-type]


LABELS = [
    {"lot": "ABC123"},
    {"lot": "LOT42A", "serial": "SN0001"},
    {"lot": "21", "serial": "21"},
    {"serial": "0000000000000000000A"},
    {"lot": "A(1)B", "serial": "x/y.z"},
    {"expiry_date": date(2027, 12, 31), "production_date": date(2025, 12, 31)},
    {
        "lot": "PLGA-90:10",
        "serial": "S%&'*+,-./:;<=>?_\"!",
        "production_date": date(2026, 2, 28),
        "expiry_date": date(2029, 2, 28),
    },
]


def _check_round_trip(scan: UdiScan, fields: dict[str, object]) -> None:
    assert scan.ok, scan.errors
    assert scan.gtin == GTIN
    for name in ("lot", "serial", "production_date", "expiry_date"):
        assert getattr(scan, name) == fields.get(name), name


@pytest.mark.parametrize("fields", LABELS)
def test_generated_strings_read_back(fields: dict[str, object]) -> None:
    aidc = element_string(GTIN, **fields)  # type: ignore[arg-type]
    hri = hri_text(GTIN, **fields)  # type: ignore[arg-type]
    for raw in (aidc, "]d2" + aidc, "]C1" + aidc, "]d2" + aidc.replace(GS, "|")):
        scan = parse_scan(raw)
        _check_round_trip(scan, fields)
        assert scan.element_string == aidc
        assert scan.hri == hri
    typed = parse_scan(hri)
    _check_round_trip(typed, fields)
    assert typed.element_string == aidc
    assert typed.hri == hri


def test_random_cset82_values_read_back() -> None:
    rng = random.Random(20260201)
    alphabet = sorted(CSET82)
    for _ in range(300):
        lot = "".join(rng.choices(alphabet, k=rng.randint(1, 20)))
        serial = "".join(rng.choices(alphabet, k=rng.randint(1, 20)))
        fields: dict[str, object] = {"lot": lot, "serial": serial}
        aidc = element_string(GTIN, lot=lot, serial=serial)
        scan = parse_scan("]d2" + aidc)
        _check_round_trip(scan, fields)
        assert scan.element_string == aidc


# --- helpers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("]d2010950\x1d21X", "]d2010950\\x1d21X"),
        ("A\r\n", "A\\x0d\\x0a"),
        ("back\\slash", "back\\\\slash"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("plain |(01)", "plain |(01)"),
    ],
)
def test_escape_raw_is_reversible(raw: str, escaped: str) -> None:
    assert escape_raw(raw) == escaped
    assert unescape_raw(escaped) == raw


def test_scan_mismatches_field_by_field() -> None:
    scan = parse_scan(f"]d201{GTIN}1720122510ABC124")
    problems = scan_mismatches(
        scan, gtin=GTIN, lot="ABC123", expiry_date=date(2020, 12, 25), serial="SN1"
    )
    assert problems == [
        "lot (10) reads 'ABC124', expected 'ABC123'",
        "serial number (21) reads nothing, expected 'SN1'",
    ]
    assert scan_mismatches(scan, gtin=GTIN, lot="ABC124", expiry_date=date(2020, 12, 25)) == []


def test_expiry_from_shelf_life() -> None:
    assert expiry_date_for(date(2026, 1, 31), 365) == date(2027, 1, 31)
    with pytest.raises(ValueError, match="UDI-7"):
        expiry_date_for(date(2026, 1, 31), 0)
