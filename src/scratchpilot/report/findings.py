"""What every report is made of: findings (one checked fact each), and the finished :class:`Report`.

A finding is a dict with ``check``, ``severity`` (ok/info/warning/error), ``split``, ``message``,
``count`` and details; tests and scripts read them from ``report.json["findings"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import html as H


class ReportError(ValueError):
    """Input a report cannot be made from; the message names it and says why."""


@dataclass
class Report:
    """A finished report: ``data`` (JSON-able figures), ``html`` (the page), ``markdown`` (the summary)."""

    data: dict
    html: str
    markdown: str


def finding(check: str, severity: str, split: str | None, message: str, count: int = 0, **details) -> dict:
    return {"check": check, "severity": severity, "split": split, "message": message, "count": int(count),
            **details}


_finding = finding  # the name the report modules use


def findings_markdown(findings: list[dict]) -> list[str]:
    """One Markdown list item per finding, worst first."""
    order = list(H.SEVERITIES)
    lines = []
    for f in sorted(findings, key=lambda f: order.index(f["severity"])):
        where = f" ({f['split']})" if f.get("split") else ""
        lines.append(f"- **{f['severity']}**{where}: {f['message']}")
    return lines
