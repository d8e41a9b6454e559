"""Pure GS1 / UDI rules (DOMAIN 6): scan parsing on top of biip, the checks biip lacks, and the
element string and HRI of our own labels.

- UDI-1 GTIN-14 check digit (``mes.material.rules.gtin_problem``).
- UDI-2 lot (10) and serial (21) are CSET 82 and at most 20 characters.
- UDI-3 one stored date: YYMMDD in the AIDC, YYYY-MM-DD in the HRI.
- UDI-4 the AIDC holds exactly the required AIs (``required_ais``).
- UDI-5 / UDI-6 a decoded symbol or a label-check scan is compared field by field
  (``scan_mismatches``).
- UDI-7 expiry = basis date + validated shelf life (``expiry_date_for``).
- ID-1 every scan attempt is answered with a typed ``UdiScan`` the service logs.

No I/O and no clock reads here. One caveat comes from biip: the two-digit year of a date AI is
placed in the GS1 century window (-49/+50 years) around the *system* date (GS1 General
Specifications 7.12).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from biip import ParseConfig, ParseError
from biip.gs1_application_identifiers import GS1ApplicationIdentifier
from biip.gs1_element_strings import GS1ElementString, GS1ElementStrings
from biip.gs1_messages import GS1Message

from mes.material.rules import gtin_problem

GS = "\x1d"
"""ASCII group separator: how scanners transmit FNC1 between fields."""

WEDGE_GS = "|"
"""What keyboard-wedge scanners are configured to send for GS (outside CSET 82; PITFALLS)."""

SEPARATORS = (GS, WEDGE_GS)
PARSE_CONFIG = ParseConfig(separator_chars=SEPARATORS)

ACCEPTED_SYMBOLOGIES: dict[str, str] = {
    "]d2": "GS1 DataMatrix",
    "]C1": "GS1-128",
    "]Q3": "GS1 QR Code",
}

CSET82 = frozenset(
    "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
)
"""GS1 AI encodable character set 82 (GS1 General Specifications 7.11, figure 7.11-1)."""

MAX_PI_LENGTH = 20
PI_AIS = ("10", "21")
"""Lot and serial: X..20 in CSET 82 (UDI-2)."""
NEEDS_GTIN = ("10", "11", "17", "21")
"""On our labels these AIs are only meaningful with AI (01) in the same symbol (DOMAIN 6)."""

DATE_AIS = frozenset({"11", "12", "13", "15", "16", "17"})
DUPLICATE_WINDOW = timedelta(seconds=2)
"""Repeat scans of the same data by the same user within this window are dropped (DOMAIN 6)."""

AI_NAMES: dict[str, str] = {
    "00": "SSCC",
    "01": "GTIN",
    "02": "GTIN of contained items",
    "10": "lot",
    "11": "production date",
    "12": "due date",
    "13": "packaging date",
    "15": "best-before date",
    "16": "sell-by date",
    "17": "expiry date",
    "21": "serial number",
}

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_HRI_AI = re.compile(r"\(\s*(\d{2,4})\s*\)")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


class ScanOutcome(StrEnum):
    """What a scan attempt meant, as stored on ``ScanEvent.outcome``."""

    ok = "ok"
    rejected = "rejected"
    suspect = "suspect"


@dataclass(frozen=True)
class UdiScan:
    """One parsed scan or typed HRI. Fields show what was read; rely on them only when ``ok``.

    ``element_string`` is normalised (GS after every variable-length field that is not last) and
    ``hri`` is the bracketed form with dates as YYYY-MM-DD (UDI-3); both are ``None`` when the
    data could not be read to the end. ``elements`` lists every (AI, value) read, in order.
    """

    symbology_id: str | None = None
    gtin: str | None = None
    lot: str | None = None
    serial: str | None = None
    production_date: date | None = None
    expiry_date: date | None = None
    element_string: str | None = None
    hri: str | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    elements: tuple[tuple[str, str], ...] = ()
    is_hri: bool = False
    separator_suspected: bool = False

    @property
    def ok(self) -> bool:
        """No errors: the data identifies a device as read (warnings may still apply)."""
        return not self.errors

    @property
    def outcome(self) -> ScanOutcome:
        if self.errors:
            return ScanOutcome.rejected
        if self.warnings:
            return ScanOutcome.suspect
        return ScanOutcome.ok

    def as_json(self) -> dict[str, Any]:
        """JSON-ready content (dates as ISO text) for ``ScanEvent.parsed``."""
        return {
            "symbology_id": self.symbology_id,
            "gtin": self.gtin,
            "lot": self.lot,
            "serial": self.serial,
            "production_date": _iso(self.production_date),
            "expiry_date": _iso(self.expiry_date),
            "element_string": self.element_string,
            "hri": self.hri,
            "warnings": list(self.warnings),
            "elements": [list(pair) for pair in self.elements],
            "is_hri": self.is_hri,
            "separator_suspected": self.separator_suspected,
        }


def _iso(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- small helpers -------------------------------------------------------------------------------


def ai_name(ai: str) -> str:
    """Operator-readable name of an AI: ``lot``, ``expiry date``, or biip's data title."""
    if ai in AI_NAMES:
        return AI_NAMES[ai]
    try:
        return GS1ApplicationIdentifier.extract(ai).data_title
    except ParseError:
        return "data"


def pi_problem(value: str, name: str) -> str | None:
    """UDI-2: a lot or serial is 1..20 characters of CSET 82, or why not."""
    if not value:
        return f"{name} is empty"
    bad = sorted({ch for ch in value if ch not in CSET82})
    if bad:
        shown = ", ".join(repr(ch) if ch.isprintable() else escape_raw(ch) for ch in bad)
        return (
            f"{name} '{escape_raw(value)}' contains {shown}, which GS1 does not allow "
            "(allowed: letters, digits and !\"%&'()*+,-./:;<=>?_ - CSET 82)"
        )
    if len(value) > MAX_PI_LENGTH:
        return f"{name} '{value}' has {len(value)} characters; GS1 allows at most {MAX_PI_LENGTH}"
    return None


def escape_raw(raw: str) -> str:
    """Scan text with control and other invisible characters written as ``\\x1d``-style
    escapes (and ``\\`` doubled), so a stored scan shows exactly what the scanner sent.
    Reversed by ``unescape_raw``."""
    parts: list[str] = []
    for ch in raw:
        code = ord(ch)
        if ch == "\\":
            parts.append("\\\\")
        elif unicodedata.category(ch).startswith("C") or (ch.isspace() and ch != " "):
            if code <= 0xFF:
                parts.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                parts.append(f"\\u{code:04x}")
            else:
                parts.append(f"\\U{code:08x}")
        else:
            parts.append(ch)
    return "".join(parts)


def unescape_raw(escaped: str) -> str:
    """The original scan text of ``escape_raw`` output."""

    def _one(match: re.Match[str]) -> str:
        token = match.group(1)
        return "\\" if token == "\\" else chr(int(token[1:], 16))

    return _ESCAPE.sub(_one, escaped)


def display_gs(element_string: str) -> str:
    """An element string with each GS shown as ``<GS>`` for people to read."""
    return element_string.replace(GS, "<GS>")


def expiry_date_for(basis: date, shelf_life_days: int) -> date:
    """UDI-7: the expiry date is the basis date plus the validated shelf life, never typed."""
    if shelf_life_days <= 0:
        raise ValueError("shelf_life_days must be a positive number of days (UDI-7)")
    return basis + timedelta(days=shelf_life_days)


# --- parsing -------------------------------------------------------------------------------------


def _symbology_problem(prefix: str) -> str | None:
    if prefix in ACCEPTED_SYMBOLOGIES:
        return None
    accepted = "GS1 DataMatrix (]d2), GS1-128 (]C1) or GS1 QR Code (]Q3)"
    if prefix == "]d1":
        return (
            "Plain DataMatrix (]d1) is not a GS1 symbol: it was printed without FNC1, so its "
            f"data cannot be trusted as GS1 Application Identifiers. UDI labels must be {accepted}."
        )
    if len(prefix) < 3:
        return f"The scan starts with an incomplete symbology identifier '{escape_raw(prefix)}'."
    return f"Symbology {escape_raw(prefix)} is not accepted: UDI scans must be {accepted}."


def _snippet(text: str, limit: int = 24) -> str:
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return escape_raw(cut)


def _explain_failure(
    rest: str, previous: GS1ElementString | None, *, delimited: bool = False
) -> str:
    """Why biip could not read an element string starting at ``rest``, in plain words.
    ``delimited``: ``rest`` is exactly one typed element (HRI), so show all of its value."""
    try:
        ai = GS1ApplicationIdentifier.extract(rest)
    except ParseError:
        if previous is None:
            return (
                f"The scan does not start with a GS1 Application Identifier "
                f"('{_snippet(rest)}'): it is not GS1 data."
            )
        return (
            f"Cannot read '{_snippet(rest)}' after AI ({previous.ai.ai}) "
            f"{ai_name(previous.ai.ai)}: it does not start with a known GS1 Application "
            "Identifier."
        )
    value = rest[len(ai.ai) :]
    for sep in SEPARATORS:
        value = value.split(sep, 1)[0]
    name = ai_name(ai.ai)
    if ai.ai in DATE_AIS:
        shown = value if delimited else value[:6]
        return f"AI ({ai.ai}) {name}: '{_snippet(shown)}' is not a valid YYMMDD date."
    if ai.ai in ("01", "02", "03"):
        shown = value if delimited else value[:14]
        return f"AI ({ai.ai}) {name}: '{_snippet(shown)}' is not 14 digits."
    if ai.ai in PI_AIS:
        problem = pi_problem(value, f"AI ({ai.ai}) {name}")
        if problem is not None:
            return problem[0].upper() + problem[1:] + "."
    return f"AI ({ai.ai}) {name}: '{_snippet(value)}' does not match the GS1 format {ai.format}."


def _explain_unterminated(element: GS1ElementString, rest: str) -> str:
    """A variable-length element followed by more data without a separator."""
    label = f"AI ({element.ai.ai}) {ai_name(element.ai.ai)}"
    if rest[0] not in CSET82:
        return (
            f"{label} '{element.value}{_snippet(rest, 8)}' contains {escape_raw(rest[0])!r}, "
            "which GS1 does not allow (CSET 82)."
        )
    limit = f"{MAX_PI_LENGTH} characters" if element.ai.ai in PI_AIS else element.ai.format
    return (
        f"{label} is longer than {limit}, or the group separator (GS) after "
        f"'{element.value}' was lost. If a keyboard-wedge scanner is used, configure it to send "
        "'|' for GS."
    )


def _read_aidc(data: str, errors: list[str]) -> tuple[list[GS1ElementString], bool]:
    """Element strings of scanned data, in order; second value: the data was read to the end."""
    elements: list[GS1ElementString] = []
    rest = data.lstrip("".join(SEPARATORS))
    while rest:
        previous = elements[-1] if elements else None
        try:
            element = GS1ElementString.extract(rest, config=PARSE_CONFIG)
        except ParseError:
            errors.append(_explain_failure(rest, previous))
            return elements, False
        elements.append(element)
        rest = rest[len(element) :]
        if rest and rest[0] in SEPARATORS:
            rest = rest.lstrip("".join(SEPARATORS))
        elif rest and element.ai.separator_required:
            errors.append(_explain_unterminated(element, rest))
            return elements, False
    return elements, True


def _read_hri(text: str, errors: list[str]) -> tuple[list[GS1ElementString], bool]:
    """Element strings of typed HRI such as ``(01)09506000134352(17)2025-12-31(10)A1``.

    Works like biip's ``GS1Message.parse_hri`` (which strips every space and names no AI in its
    errors), element by element so each message names its AI. Dates may be typed as YYMMDD or
    YYYY-MM-DD (UDI-3). A value holding ``(`` cannot be typed in this form.
    """
    marks = list(_HRI_AI.finditer(text))
    if not marks or marks[0].start() != 0:
        errors.append(
            "Typed text must look like (01)09506000134352(17)2025-12-31(10)LOT1: "
            "each AI in brackets followed by its value."
        )
        return [], False
    elements: list[GS1ElementString] = []
    complete = True
    for index, mark in enumerate(marks):
        end = marks[index + 1].start() if index + 1 < len(marks) else len(text)
        number, value = mark.group(1), text[mark.end() : end].strip()
        try:
            ai: GS1ApplicationIdentifier | None = GS1ApplicationIdentifier.extract(number)
        except ParseError:
            ai = None
        if ai is None or ai.ai != number:
            errors.append(f"({number}) is not a known GS1 Application Identifier.")
            complete = False
            continue
        name = ai_name(number)
        if any(ch.isspace() for ch in value):
            errors.append(
                f"AI ({number}) {name} '{escape_raw(value)}' contains a space; GS1 data has "
                "no spaces."
            )
            complete = False
            continue
        if number in PI_AIS and (problem := pi_problem(value, f"AI ({number}) {name}")):
            errors.append(problem + ".")
            complete = False
            continue
        typed: date | None = None
        if number in DATE_AIS and _ISO_DATE.fullmatch(value):
            try:
                typed = date.fromisoformat(value)
            except ValueError:
                errors.append(f"AI ({number}) {name}: {value} is not a calendar date.")
                complete = False
                continue
            value = typed.strftime("%y%m%d")
        try:
            element = GS1ElementString.parse(number + value, config=PARSE_CONFIG)
        except ParseError:
            previous = elements[-1] if elements else None
            errors.append(_explain_failure(number + value, previous, delimited=True))
            complete = False
            continue
        if typed is not None and element.date != typed:
            errors.append(
                f"AI ({number}) {name} {typed.isoformat()} cannot be carried as YYMMDD: "
                f"it would read back as {_iso(element.date)}."
            )
            complete = False
            continue
        elements.append(element)
    return elements, complete


def _foreign_characters(text: str) -> str:
    """Characters no GS1 data holds: anything but printable ASCII, GS and spaces. biip's
    patterns use ``\\d``, which would take non-ASCII digits (such as Arabic-Indic) as digits."""
    foreign = sorted({ch for ch in text if not (" " <= ch <= "~" or ch == GS)})
    return ", ".join(repr(ch) if ch.isprintable() else escape_raw(ch) for ch in foreign)


def suspected_split(lot: str) -> tuple[str, str] | None:
    """The (lot, serial) a lot value probably hid when a scanner dropped the GS between
    ``(10)LOT42A`` and ``(21)SN0001``: ``21`` followed by 3-20 characters with a digit."""
    start = lot.find("21", 1)
    while start != -1:
        head, tail = lot[:start], lot[start + 2 :]
        if 3 <= len(tail) <= MAX_PI_LENGTH and any(ch.isdigit() for ch in tail):
            return head, tail
        start = lot.find("21", start + 1)
    return None


def _hri_part(element: GS1ElementString) -> str:
    if element.ai.ai in DATE_AIS and element.date is not None and len(element.value) == 6:
        return f"({element.ai.ai}){element.date.isoformat()}"
    return element.as_hri()


def parse_scan(raw: str, *, required_ais: Collection[str] | None = None) -> UdiScan:
    """Parse one scan (or typed HRI) into a ``UdiScan`` with every problem named (DOMAIN 6).

    Accepted: GS1 data with or without an AIM prefix (``]d2``, ``]C1``, ``]Q3``; ``]d1`` and
    any other prefix refused), GS (0x1D) or ``|`` as the separator, and the bracketed HRI form.
    Beyond biip: elements carrying a ``*_error`` (UDI-1 check digit) are errors; AIs 10, 11,
    17 and 21 need AI 01; lot and serial are CSET 82 and at most 20 characters (UDI-2); a
    variable-length field followed by data without GS is an error; a lot that seems to have
    swallowed ``21`` + serial is flagged "separator suspected" (an error when ``required_ais``
    includes 21, else a warning). With ``required_ais`` the scan must hold exactly those AIs
    (UDI-4). DD=00 in a date is the last day of the month. Characters outside printable ASCII
    (other than GS) are refused up front.
    """
    text = raw.strip()
    if not text:
        return UdiScan(errors=["The scan is empty."])
    symbology_id: str | None = None
    if text.startswith("]"):
        prefix = text[:3]
        problem = _symbology_problem(prefix)
        if problem is not None:
            return UdiScan(symbology_id=prefix if len(prefix) == 3 else None, errors=[problem])
        symbology_id = prefix
        text = text[3:].strip()
        if not text:
            return UdiScan(
                symbology_id=symbology_id,
                errors=[f"The scan holds no data after the symbology identifier {prefix}."],
            )
    foreign = _foreign_characters(text)
    if foreign:
        return UdiScan(
            symbology_id=symbology_id,
            errors=[f"The scan contains {foreign}, which GS1 data cannot hold (CSET 82)."],
        )
    errors: list[str] = []
    is_hri = text.startswith("(")
    if is_hri and symbology_id is not None:
        return UdiScan(
            symbology_id=symbology_id,
            errors=[
                "The symbol encodes the HRI brackets '(' and ')' around its AIs; brackets must "
                "never be encoded, so this label was generated wrongly."
            ],
        )
    if text.lower().startswith(("http://", "https://")):
        return UdiScan(
            symbology_id=symbology_id,
            errors=[
                "A web address (GS1 Digital Link) is not accepted here; scan the GS1 "
                "DataMatrix or type the UDI as (01)...(17)...(10)..."
            ],
        )
    if is_hri:
        elements, complete = _read_hri(text, errors)
        had_separator = False
    else:
        elements, complete = _read_aidc(text, errors)
        had_separator = any(sep in text.strip("".join(SEPARATORS)) for sep in SEPARATORS)
    return _assess(
        symbology_id,
        elements,
        complete=complete,
        errors=errors,
        is_hri=is_hri,
        had_separator=had_separator,
        required_ais=required_ais,
    )


def _element_errors(element: GS1ElementString) -> Iterable[str]:
    ai, value = element.ai.ai, element.value
    label = f"AI ({ai}) {ai_name(ai)}"
    if ai == "01":
        problem = gtin_problem(value)
        if problem is not None:
            yield f"{label} {value}: {problem}."
            return
    for reported in (element.gtin_error, element.sscc_error, element.gln_error):
        if reported:
            yield f"{label} {value}: {reported}"
    if ai in PI_AIS:
        problem = pi_problem(value, label)
        if problem is not None:
            yield problem + " (UDI-2)."


def _assess(
    symbology_id: str | None,
    elements: list[GS1ElementString],
    *,
    complete: bool,
    errors: list[str],
    is_hri: bool,
    had_separator: bool,
    required_ais: Collection[str] | None,
) -> UdiScan:
    warnings: list[str] = []
    by_ai: dict[str, GS1ElementString] = {}
    for element in elements:
        ai = element.ai.ai
        prior = by_ai.get(ai)
        if prior is None:
            by_ai[ai] = element
            errors.extend(_element_errors(element))
        elif prior.value != element.value:
            errors.append(
                f"AI ({ai}) {ai_name(ai)} appears twice with different values "
                f"('{prior.value}' and '{element.value}')."
            )

    def value_of(ai: str) -> str | None:
        found = by_ai.get(ai)
        return found.value if found is not None else None

    def date_of(ai: str) -> date | None:
        found = by_ai.get(ai)
        return found.date if found is not None else None

    production, expiry = date_of("11"), date_of("17")
    if production is not None and expiry is not None and expiry < production:
        errors.append(
            f"AI (17) expiry date {expiry.isoformat()} is before AI (11) production date "
            f"{production.isoformat()}."
        )

    suspected = False
    if complete:
        if "01" not in by_ai:
            orphans = [ai for ai in NEEDS_GTIN if ai in by_ai]
            errors.extend(
                f"AI ({ai}) {ai_name(ai)} needs AI (01) GTIN in the same scan, and there is none."
                for ai in orphans
            )
            if not orphans:
                errors.append(
                    "The scan holds no GTIN (AI 01), so it does not identify a device (UDI-DI)."
                )
        required = set(required_ais) if required_ais is not None else None
        lot = value_of("10")
        split = None
        if lot is not None and "21" not in by_ai and not is_hri and not had_separator:
            split = suspected_split(lot)
        if split is not None:
            suspected = True
            message = (
                f"Separator suspected: lot (10) '{lot}' looks like lot '{split[0]}' followed by "
                f"serial number (21) '{split[1]}' with the group separator lost (keyboard-wedge "
                "scanner?). Configure the scanner to send '|' for GS, or rescan with the camera."
            )
            (errors if required is not None and "21" in required else warnings).append(message)
        if required is not None:
            for ai in sorted(required - by_ai.keys()):
                if not (ai == "21" and suspected):
                    errors.append(f"AI ({ai}) {ai_name(ai)} is required for this item but missing.")
            for ai in sorted(by_ai.keys() - required):
                errors.append(
                    f"AI ({ai}) {ai_name(ai)} is not one of this item's required AIs (UDI-4)."
                )

    message_ok = complete and bool(elements)
    strings = GS1ElementStrings(elements)
    return UdiScan(
        symbology_id=symbology_id,
        gtin=value_of("01"),
        lot=value_of("10"),
        serial=value_of("21"),
        production_date=production,
        expiry_date=expiry,
        element_string=GS1Message.from_element_strings(strings).value if message_ok else None,
        hri="".join(_hri_part(e) for e in elements) if message_ok else None,
        errors=errors,
        warnings=warnings,
        elements=tuple((e.ai.ai, e.value) for e in elements),
        is_hri=is_hri,
        separator_suspected=suspected,
    )


# --- generation ----------------------------------------------------------------------------------


def _label_fields(
    gtin: str,
    lot: str | None,
    serial: str | None,
    production_date: date | None,
    expiry_date: date | None,
) -> list[tuple[str, str, date | None]]:
    """(AI, AIDC value, date) in the encoding order of DOMAIN 6: 01, 11, 17, 10, 21."""
    problem = gtin_problem(gtin)
    if problem is not None:
        raise ValueError(f"gtin: {problem}")
    for name, value in (("lot", lot), ("serial", serial)):
        if value is not None:
            problem = pi_problem(value, name)
            if problem is not None:
                raise ValueError(f"{name}: {problem} (UDI-2)")
    for name, day in (("production_date", production_date), ("expiry_date", expiry_date)):
        if isinstance(day, datetime):
            raise ValueError(f"{name}: pass a calendar date, not a datetime (UDI-3)")
    if production_date is not None and expiry_date is not None and expiry_date < production_date:
        raise ValueError("expiry_date: the expiry date is before the production date")
    fields: list[tuple[str, str, date | None]] = [("01", gtin, None)]
    if production_date is not None:
        fields.append(("11", production_date.strftime("%y%m%d"), production_date))
    if expiry_date is not None:
        fields.append(("17", expiry_date.strftime("%y%m%d"), expiry_date))
    if lot is not None:
        fields.append(("10", lot, None))
    if serial is not None:
        fields.append(("21", serial, None))
    return fields


def element_string(
    gtin: str,
    *,
    lot: str | None = None,
    serial: str | None = None,
    production_date: date | None = None,
    expiry_date: date | None = None,
) -> str:
    """The AIDC element string of our labels (what a scanner sends after ``]d2``): AIs in the
    order 01, 11, 17, 10, GS, 21; dates as YYMMDD (UDI-3); GS only after a variable-length
    field that is not last. Raises ValueError naming the field (UDI-1, UDI-2)."""
    fields = _label_fields(gtin, lot, serial, production_date, expiry_date)
    parts: list[str] = []
    for index, (ai, value, _) in enumerate(fields):
        parts.append(ai + value)
        if ai in ("10", "21") and index < len(fields) - 1:
            parts.append(GS)
    return "".join(parts)


def hri_lines(
    gtin: str,
    *,
    lot: str | None = None,
    serial: str | None = None,
    production_date: date | None = None,
    expiry_date: date | None = None,
) -> list[str]:
    """One human-readable line per AI, same order as the AIDC, dates as YYYY-MM-DD from the
    same stored date (UDI-3, UDI-4)."""
    fields = _label_fields(gtin, lot, serial, production_date, expiry_date)
    return [f"({ai}){day.isoformat() if day else value}" for ai, value, day in fields]


def hri_text(
    gtin: str,
    *,
    lot: str | None = None,
    serial: str | None = None,
    production_date: date | None = None,
    expiry_date: date | None = None,
) -> str:
    """The bracketed HRI of our labels, e.g. ``(01)09506000134352(17)2025-12-31(10)ABC123``
    (UDI-3). ``parse_scan`` reads it back."""
    return "".join(
        hri_lines(
            gtin,
            lot=lot,
            serial=serial,
            production_date=production_date,
            expiry_date=expiry_date,
        )
    )


def scan_mismatches(
    scan: UdiScan,
    *,
    gtin: str,
    lot: str | None = None,
    serial: str | None = None,
    production_date: date | None = None,
    expiry_date: date | None = None,
    element_string: str | None = None,
) -> list[str]:
    """UDI-5 / UDI-6: every way a decoded symbol or label-check scan differs from what was
    intended, field by field; empty when it matches exactly."""
    problems = [f"the scan was refused: {error}" for error in scan.errors]
    problems += [f"the scan is doubtful: {warning}" for warning in scan.warnings]
    expected: list[tuple[str, object, object]] = [
        ("GTIN (01)", gtin, scan.gtin),
        ("lot (10)", lot, scan.lot),
        ("serial number (21)", serial, scan.serial),
        ("production date (11)", production_date, scan.production_date),
        ("expiry date (17)", expiry_date, scan.expiry_date),
    ]
    for label, want, got in expected:
        if want != got:
            problems.append(f"{label} reads {_shown(got)}, expected {_shown(want)}")
    if element_string is not None and scan.element_string != element_string:
        problems.append(
            f"element string reads {_shown(scan.element_string)}, expected {_shown(element_string)}"
        )
    return problems


def _shown(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, date):
        return value.isoformat()
    return f"'{display_gs(str(value))}'"
