"""Draw the layout of the Cloud Monitoring dashboard (terraform/dashboard.json.tftpl) as an SVG:
one box per tile where the dashboard puts it, with its title, its series and the alert threshold
it shows. The README's "Operating it" section shows the result, docs/dashboard.svg.

    python scripts/dashboard_figure.py           # writes docs/dashboard.svg
    python scripts/dashboard_figure.py --check   # exit 1 when docs/dashboard.svg is out of date
"""

from __future__ import annotations

import json
import re
import sys
from html import escape
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "terraform" / "dashboard.json.tftpl"
FIGURE = REPO / "docs" / "dashboard.svg"

UNIT = 20  # pixels per grid unit across; a row unit is half of it
ROW = 10
PAD = 6
PLOT_LABELS = {"LINE": "line", "STACKED_BAR": "stacked bars", "STACKED_AREA": "stacked area"}


def layout(template: str) -> dict[str, Any]:
    """The template as JSON, without Terraform: a bare placeholder value (a threshold) becomes 0,
    one inside a string stays as written, `$${label}` (a legend's label) is shown as {label}."""
    text = re.sub(r":\s*\$\{[^}]+\}", ": 0", template)
    return json.loads(text.replace("$${", "{"))


def _series(widget: dict[str, Any]) -> list[str]:
    if "alertChart" in widget:
        return ["the alert policy's state and incidents"]
    out = []
    for ds in widget.get("xyChart", {}).get("dataSets", []):
        legend = ds.get("legendTemplate", "")
        legend = re.sub(r"\{(\w+)\}", r"by \1", legend)
        out.append(f"{legend} ({PLOT_LABELS.get(ds.get('plotType', 'LINE'), 'line')})")
    return out


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def svg(dashboard: dict[str, Any]) -> str:
    mosaic = dashboard["mosaicLayout"]
    tiles = mosaic["tiles"]
    width = mosaic["columns"] * UNIT
    height = max(t.get("yPos", 0) + t["height"] for t in tiles) * ROW
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" '
        f'viewBox="0 0 {width} {height + 40}" font-family="Helvetica, Arial, sans-serif">',
        f'<rect width="{width}" height="{height + 40}" fill="#f1f3f4"/>',
        f'<text x="{PAD}" y="26" font-size="16" font-weight="bold" fill="#202124">'
        "Cloud Monitoring dashboard (terraform/dashboard.json.tftpl): the layout</text>",
    ]
    for tile in tiles:
        x, y = tile.get("xPos", 0) * UNIT, tile.get("yPos", 0) * ROW + 40
        w, h = tile["width"] * UNIT, tile["height"] * ROW
        widget = tile["widget"]
        out.append(f'<rect x="{x + PAD / 2}" y="{y + PAD / 2}" width="{w - PAD}" height="{h - PAD}" rx="4" '
                   'fill="#ffffff" stroke="#dadce0"/>')
        ty = y + PAD + 16
        for line in _wrap(widget["title"], w // 8):
            out.append(f'<text x="{x + 2 * PAD}" y="{ty}" font-size="13" font-weight="bold" fill="#202124">'
                       f"{escape(line)}</text>")
            ty += 16
        axis = widget.get("xyChart", {}).get("yAxis", {}).get("label")
        if axis:
            out.append(f'<text x="{x + 2 * PAD}" y="{ty}" font-size="11" fill="#5f6368">y: {escape(axis)}</text>')
            ty += 15
        for s in _series(widget):
            out.append(f'<text x="{x + 2 * PAD}" y="{ty}" font-size="11" fill="#1a73e8">&#8226; {escape(s)}</text>')
            ty += 14
        for t in widget.get("xyChart", {}).get("thresholds", []):
            ly = y + h - 2 * PAD - 6
            out.append(f'<line x1="{x + 2 * PAD}" y1="{ly}" x2="{x + w - 2 * PAD}" y2="{ly}" stroke="#d93025" '
                       'stroke-dasharray="6 4"/>')
            out.append(f'<text x="{x + w - 2 * PAD}" y="{ly - 4}" font-size="11" fill="#d93025" text-anchor="end">'
                       f"{escape(t.get('label', 'alert'))} threshold</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    figure = svg(layout(TEMPLATE.read_text()))
    if "--check" in argv:
        if not FIGURE.exists() or FIGURE.read_text() != figure:
            print(f"{FIGURE.relative_to(REPO)} is out of date: run python scripts/dashboard_figure.py")
            return 1
        return 0
    FIGURE.write_text(figure)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
