"""Inline SVG charts for the console, rendered on the server (no script needed to read them)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 480, 120, 4


def period_days(start: date, end: date, limit: int = 62) -> list[date]:
    """Every day of the period (at most `limit`: a yearly period shows its last weeks)."""
    days = [start + timedelta(days=n) for n in range((end - start).days)]
    return days[-limit:]


def cumulative(days: Sequence[date], daily: dict[str, float]) -> list[float]:
    """Usage so far at the end of each day, from the usage of each day (`YYYY-MM-DD` -> amount)."""
    running, totals = 0.0, []
    for day in days:
        running += daily.get(day.isoformat(), 0.0)
        totals.append(running)
    return totals


def usage_chart(label: str, days: Sequence[date], totals: Sequence[float], limit: int | None) -> Markup:
    """Bars of the usage so far on each day of the period, and the limit as a dashed line."""
    top = max([*totals, float(limit or 0), 1.0])
    step = (WIDTH - 2 * PAD) / max(len(days), 1)
    bars = []
    for n, (day, total) in enumerate(zip(days, totals, strict=True)):
        height = (HEIGHT - 2 * PAD) * total / top
        x, y = PAD + n * step, HEIGHT - PAD - height
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(step - 1, 1):.1f}" height="{height:.1f}">'
            f"<title>{escape(day.isoformat())}: {total:g}</title></rect>"
        )
    line = ""
    if limit is not None:
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * limit / top
        line = f'<line class="limit" x1="{PAD}" x2="{WIDTH - PAD}" y1="{y:.1f}" y2="{y:.1f}"/>'
    title = escape(f"{label}: usage by day of the period" + (f", limit {limit}" if limit is not None else ""))
    return Markup(
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">'
        f"<title>{title}</title>{''.join(bars)}{line}</svg>"
    )
