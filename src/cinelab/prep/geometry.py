"""Box geometry shared by the preprocessing of every image kind (boxes are (y0, x0, y1, x1),
half-open: image[y0:y1, x0:x1])."""

from __future__ import annotations

Box = tuple[int, int, int, int]


def square_box(box: Box, shape: tuple[int, ...], margin: float = 0.0) -> Box:
    """`box` grown by margin x its longer side, made square and moved inside the image."""
    y0, x0, y1, x1 = box
    height, width = shape[:2]
    side = max(y1 - y0, x1 - x0) * (1.0 + 2.0 * margin)
    side = int(min(round(side), height, width))
    top = int(round((y0 + y1 - side) / 2.0))
    left = int(round((x0 + x1 - side) / 2.0))
    top = min(max(top, 0), height - side)
    left = min(max(left, 0), width - side)
    return top, left, top + side, left + side
