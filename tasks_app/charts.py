"""Charts drawn on the server as inline SVG: no JavaScript library, no CDN.

Each line carries a class as well as its colour: the admin's stylesheet
(taskq/admin.css) recolours them, and the grid and the labels, for the dark
theme; the attributes are what a page without it shows.
"""

from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape

from django.utils.safestring import SafeString, mark_safe

DONE_COLOUR = "#2e7d32"
FAILED_COLOUR = "#c62828"
EXPIRED_COLOUR = "#e65100"
# A time label every this many minutes, on the clock's round minutes.
TICK_MINUTES = 10


def _points(values: Sequence[int], width: float, height: float, top: float, peak: int) -> str:
    step = width / max(len(values) - 1, 1)
    return " ".join(
        f"{i * step:.1f},{top + height - (v / peak) * height:.1f}" for i, v in enumerate(values)
    )


def _series(
    done: Sequence[int], failed: Sequence[int], expired: Sequence[int] | None
) -> list[tuple[str, str, Sequence[int]]]:
    series = [("done", DONE_COLOUR, done), ("failed", FAILED_COLOUR, failed)]
    if expired is not None:
        series.append(("expired", EXPIRED_COLOUR, expired))
    return series


def throughput_chart(
    done: Sequence[int],
    failed: Sequence[int],
    *,
    start: datetime,
    expired: Sequence[int] | None = None,
    width: int = 720,
    height: int = 200,
) -> SafeString:
    """Leases ended per minute, a point per minute from `start` (UTC), with
    the count axis on the left and clock times every TICK_MINUTES below."""
    series = _series(done, failed, expired)
    peak = max([v for _, _, values in series for v in values] + [1])
    # Room for the labels at the largest size the stylesheet gives them.
    left, right, top, bottom = 48, 12, 20, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    minutes = len(done)
    step = plot_w / max(minutes - 1, 1)

    grid = []
    for value in sorted({0, peak // 2, peak}):
        y = top + plot_h - value / peak * plot_h
        grid.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 8}" y="{y + 5:.1f}" text-anchor="end" class="axis">{value}</text>'
        )
    ticks = []
    for i in range(minutes):
        minute = start + timedelta(minutes=i)
        # The last point is labelled "now"; a round minute too close to it
        # would print over it.
        if minute.minute % TICK_MINUTES or i > minutes - 8:
            continue
        x = left + i * step
        ticks.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h + 4}" class="grid"/>'
            f'<text x="{x:.1f}" y="{top + plot_h + 20}" text-anchor="middle" class="axis">'
            f"{minute:%H:%M}</text>"
        )
    ticks.append(
        f'<text x="{left + plot_w}" y="{top + plot_h + 20}" text-anchor="end" class="axis">'
        "now</text>"
        f'<text x="{left + plot_w}" y="{height - 6}" text-anchor="end" class="axis">'
        "per minute, times in UTC</text>"
    )
    lines = "".join(
        f'<polyline fill="none" stroke="{colour}" stroke-width="2" class="line-{name}" '
        f'transform="translate({left} 0)" '
        f'points="{_points(values, plot_w, plot_h, top, peak)}"><title>{escape(name)} per minute'
        "</title></polyline>"
        for name, colour, values in series
    )
    names = ", ".join(name for name, _, _ in series)
    return mark_safe(
        f'<svg class="taskq-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Leases ended per minute ({escape(names)}), the last {minutes} minutes '
        f'from {start:%H:%M} UTC" xmlns="http://www.w3.org/2000/svg">'
        "<style>.grid{stroke:#ddd;stroke-width:1}.axis{font:12px sans-serif;fill:#666}</style>"
        f"{''.join(grid)}{''.join(ticks)}{lines}</svg>"
    )


def sparkline(
    done: Sequence[int],
    failed: Sequence[int],
    expired: Sequence[int] | None = None,
    *,
    width: int = 120,
) -> SafeString:
    height = 24
    series = _series(done, failed, expired)
    peak = max([v for _, _, values in series for v in values] + [1])
    lines = "".join(
        f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" class="line-{name}" '
        f'points="{_points(values, width, height - 2, 1, peak)}"/>'
        for name, colour, values in series
    )
    return mark_safe(
        f'<svg class="taskq-sparkline" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg" aria-hidden="true">{lines}</svg>'
    )
