"""A health check's report as Markdown and as PDF (fpdf2), in the reader's language.

The PDF embeds a CJK font when the system has one (WenQuanYi Micro Hei, Noto Sans CJK) so Chinese renders; without
one it falls back to DejaVu Sans, then to the core Helvetica with the text reduced to Latin-1 (never an error)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from django.utils.translation import gettext as _

from deployments.monitoring.healthcheck import SECTION_TITLES, SEVERITIES
from deployments.monitoring.models import HealthCheckRun

logging.getLogger("fontTools").setLevel(logging.WARNING)  # fpdf2's font subsetting logs every glyph at INFO

# (path, collection font number) tried in order: the first that exists is embedded.
UNICODE_FONTS = (
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 0),
)


def _severity_label(severity: str) -> str:
    return {"critical": _("critical"), "warning": _("warning"), "info": _("info")}.get(severity, severity)


def _title(run: HealthCheckRun) -> str:
    return _("Health check #%(id)s") % {"id": run.pk}


def _summary_lines(run: HealthCheckRun) -> list[str]:
    when = run.finished_at or run.started_at or run.created_at
    counts = (run.report or {}).get("counts") or {}
    return [
        _("State: %(state)s") % {"state": run.get_state_display()},
        _("Started by: %(who)s")
        % {"who": run.requested_by.get_username() if run.requested_by else run.get_trigger_display()},
        _("At: %(when)s") % {"when": f"{when:%Y-%m-%d %H:%M} UTC"},
        _("Findings: %(n)s (%(detail)s)")
        % {
            "n": run.findings_count,
            "detail": ", ".join(f"{counts.get(s, 0)} {_severity_label(s)}" for s in SEVERITIES),
        },
    ]


def _section_lines(name: str, section: dict) -> list[str]:
    """A section's evidence as short lines (the findings say what is wrong; this is what was looked at)."""
    lines: list[str] = []
    if name == "gpus":
        for host in section.get("hosts", []):
            gpus = ", ".join(f"{g['index']}: {g['name']} ({g['health']})" for g in host["gpus"]) or "-"
            lines.append(f"{host['host']} — driver {host['driver'] or '?'}, CUDA {host['cuda'] or '?'} — {gpus}")
    elif name == "integrity":
        for row in section.get("artifacts", []):
            state = _("corrupt") if row["problems"] else (_("ok") if row["finished"] else _("not finished"))
            lines.append(f"{row['name']}: {row['files']} files, {row['bytes'] / 1e9:.2f} GB — {state}")
    elif name == "disk":
        for host, usage in sorted(section.get("stores", {}).items()):
            lines.append(f"{host} {usage['path']}: {usage['free'] / 1e9:.1f} GB free of {usage['total'] / 1e9:.1f} GB")
    elif name == "audit":
        lines.append(section.get("chain", ""))
        if section.get("export_dir"):
            lines.append(f"{section['export_dir']}: {section.get('export_age_days')} d")
    elif name == "deployments":
        for row in section.get("deployments", []):
            flags = f" flags: {', '.join(row['flags'])}" if row["flags"] else ""
            lines.append(f"{row['name']} ({row['state']}, {row['host'] or '-'}): {row['restarts']} restarts{flags}")
    elif name == "certificates":
        for row in section.get("certificates", []):
            lines.append(f"{row['path']}: {row.get('expires') or row.get('error')}")
    elif name == "backups":
        lines.append(section.get("newest") or (_("not configured") if not section.get("configured") else "-"))
    else:
        lines.append(json.dumps(section, sort_keys=True)[:500])
    return [line for line in lines if line]


def report_markdown(run: HealthCheckRun) -> str:
    out = [f"# {_title(run)}", ""]
    out += [f"- {line}" for line in _summary_lines(run)]
    out += ["", f"## {_('Findings')}", ""]
    if not run.findings:
        out.append(_("No findings."))
    for item in run.findings:
        out.append(
            f"- **{_severity_label(item['severity'])}** · {item['check']} · {item['subject']}: {item['message']}"
        )
        if item.get("next_step"):
            out.append(f"  - {_('Next step')}: {item['next_step']}")
    sections = (run.report or {}).get("sections", {})
    for name, title in SECTION_TITLES.items():
        if name in sections:
            out += ["", f"## {title}", ""]
            out += [f"- {line}" for line in _section_lines(name, sections[name])] or ["-"]
    return "\n".join(out) + "\n"


def _font(pdf) -> tuple[str, bool]:
    """The family to write with, and whether it is a Unicode font."""
    for path, number in UNICODE_FONTS:
        if Path(path).is_file():
            try:
                pdf.add_font("report", "", path, collection_font_number=number)
                return "report", True
            except Exception:  # noqa: S112 - a broken font file: try the next one
                continue
    return "helvetica", False


def report_pdf(run: HealthCheckRun) -> bytes:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    family, unicode = _font(pdf)

    def text(value: str) -> str:
        return value if unicode else value.encode("latin-1", "replace").decode("latin-1")

    def write(value: str, size: float = 10, height: float = 5.5) -> None:
        pdf.set_font(family, size=size)
        pdf.multi_cell(0, height, text(value), new_x="LMARGIN", new_y="NEXT")

    pdf.set_title(text(_title(run)))
    write(_title(run), 18, 10)
    for line in _summary_lines(run):
        write(line)
    pdf.ln(3)
    write(_("Findings"), 14, 8)
    if not run.findings:
        write(_("No findings."))
    for item in run.findings:
        write(f"[{_severity_label(item['severity'])}] {item['check']} · {item['subject']}: {item['message']}")
        if item.get("next_step"):
            write(f"    {_('Next step')}: {item['next_step']}", 9)
    sections = (run.report or {}).get("sections", {})
    for name, title in SECTION_TITLES.items():
        if name in sections:
            pdf.ln(3)
            write(str(title), 14, 8)
            for line in _section_lines(name, sections[name]) or ["-"]:
                write(line, 9)
    return bytes(pdf.output())
