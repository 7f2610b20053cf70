"""JUnit XML, the one writer: a suite of test cases (passed, failed or skipped) as bytes, for the
CI gates (``deepcompress check``, qualify, nightly). Every text is made safe for XML 1.0 first: a
name read from a file or a device may hold any character."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Sequence

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot hold shown as \\xNN (a file name may hold any)."""
    return _XML_BAD.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


@dataclass(frozen=True)
class Case:
    """One test case. ``skipped``: why it was not decided (it neither passed nor failed);
    ``message`` and ``kind``: a failure's one line and type; ``detail``: a failure's text, or what
    a passing case prints (its numbers)."""

    classname: str
    name: str
    ok: bool = True
    message: str = ""
    kind: str = "Failure"
    detail: str = ""
    skipped: str = ""
    seconds: float | None = None


def _time(seconds: float | None) -> dict[str, str]:
    return {} if seconds is None else {"time": f"{seconds:.3f}"}


def junit_xml(suite: str, cases: Sequence[Case], seconds: float | None = None) -> bytes:
    root = ET.Element("testsuite", name=xml_text(suite), tests=str(len(cases)),
                      failures=str(sum(not c.ok and not c.skipped for c in cases)),
                      skipped=str(sum(bool(c.skipped) for c in cases)), **_time(seconds))
    for c in cases:
        case = ET.SubElement(root, "testcase", classname=xml_text(c.classname),
                             name=xml_text(c.name), **_time(c.seconds))
        if c.skipped:
            ET.SubElement(case, "skipped", message=xml_text(c.skipped))
        elif not c.ok:
            failure = ET.SubElement(case, "failure", message=xml_text(c.message), type=c.kind)
            failure.text = xml_text(c.detail) or None
        elif c.detail:
            ET.SubElement(case, "system-out").text = xml_text(c.detail)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
