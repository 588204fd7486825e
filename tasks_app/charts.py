"""Charts drawn on the server as inline SVG: no JavaScript library, no CDN."""

from collections.abc import Sequence
from html import escape

from django.utils.safestring import SafeString, mark_safe

DONE_COLOUR = "#2e7d32"
FAILED_COLOUR = "#c62828"


def _points(values: Sequence[int], width: float, height: float, top: float, peak: int) -> str:
    step = width / max(len(values) - 1, 1)
    return " ".join(
        f"{i * step:.1f},{top + height - (v / peak) * height:.1f}" for i, v in enumerate(values)
    )


def throughput_chart(
    done: Sequence[int], failed: Sequence[int], *, width: int = 640, height: int = 160
) -> SafeString:
    """Done and failed per minute over the chart window, with axis labels."""
    peak = max([*done, *failed, 1])
    plot_h = height - 30
    minutes = len(done)
    grid = "".join(
        f'<line x1="0" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        for y in (10, 10 + plot_h / 2, 10 + plot_h)
    )
    labels = (
        f'<text x="2" y="22" class="axis">{peak}/min</text>'
        f'<text x="0" y="{height - 4}" class="axis">-{minutes} min</text>'
        f'<text x="{width}" y="{height - 4}" text-anchor="end" class="axis">now</text>'
    )
    lines = "".join(
        f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
        f'points="{_points(values, width, plot_h, 10, peak)}"><title>{escape(name)}</title>'
        "</polyline>"
        for name, colour, values in (
            ("done per minute", DONE_COLOUR, done),
            ("failed per minute", FAILED_COLOUR, failed),
        )
    )
    return mark_safe(
        f'<svg class="taskq-chart" viewBox="0 0 {width} {height}" width="100%" '
        f'height="{height}" role="img" aria-label="Tasks done and failed per minute, '
        f'last {minutes} minutes" xmlns="http://www.w3.org/2000/svg">'
        f"<style>.grid{{stroke:#ddd;stroke-width:1}}.axis{{font:11px sans-serif;fill:#666}}"
        f"</style>{grid}{lines}{labels}</svg>"
    )


def sparkline(done: Sequence[int], failed: Sequence[int], *, width: int = 120) -> SafeString:
    height = 24
    peak = max([*done, *failed, 1])
    return mark_safe(
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg" aria-hidden="true">'
        f'<polyline fill="none" stroke="{DONE_COLOUR}" stroke-width="1.5" '
        f'points="{_points(done, width, height - 2, 1, peak)}"/>'
        f'<polyline fill="none" stroke="{FAILED_COLOUR}" stroke-width="1.5" '
        f'points="{_points(failed, width, height - 2, 1, peak)}"/></svg>'
    )
