"""Draws a comparison grid: labelled columns (adapter x strength) and rows (seeds), with an
optional line of text under each column (its metrics)."""
from __future__ import annotations

import re

from PIL import Image, ImageDraw, ImageFont

PAD = 6
HEADER = 28
# Text wraps at a column's width, but a column is never narrower than this (plus padding),
# so a 64 px cell still reads "input" and a metric per line.
MIN_TEXT_WIDTH = 112
TEXT = (0, 0, 0)
NOTE = (70, 70, 70)


def _font(size: int = 14):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale into a cell (up or down), keeping the aspect ratio, and letterbox."""
    factor = min(width / image.width, height / image.height)
    scaled = image.convert("RGB").resize(
        (max(1, round(image.width * factor)), max(1, round(image.height * factor))),
        Image.Resampling.LANCZOS)
    cell = Image.new("RGB", (width, height), (255, 255, 255))
    cell.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return cell


# How a too-long text is broken, coarsest first: between metrics, between words, after a
# hyphen, underscore, dot or slash inside a name, and at last between any two characters.
_BREAKS = (lambda t: t.split(" · "), lambda t: t.split(" "),
           lambda t: re.findall(r"[^-_./]+[-_./]*|[-_./]+", t), list)
_JOINS = (" · ", " ", "", "")


def wrap(text: str, font, width: float, level: int = 0) -> list[str]:
    """`text` as lines no wider than `width` (in the font's pixels), broken as coarsely as
    fits; a single character wider than `width` stays on its own line."""
    if font.getlength(text) <= width or level == len(_BREAKS):
        return [text]
    lines: list[str] = []
    line = None
    for part in _BREAKS[level](text):
        joined = part if line is None else line + _JOINS[level] + part
        if font.getlength(joined) <= width:
            line = joined
            continue
        if line is not None:
            lines.append(line)
        *full, line = wrap(part, font, width, level + 1)
        lines += full
    return lines + ([line] if line is not None else [])


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag|")
    return bottom - top + 3


def _text_block(draw, lines: list[str], x_center: float, top: float, font, line_h: int,
                fill=TEXT) -> None:
    for i, line in enumerate(lines):
        draw.text((x_center, top + i * line_h), line, fill=fill, font=font, anchor="ma")


Box = tuple[int, int, int, int]


def draw_grid(rows: list[list[Image.Image]], column_labels: list[str], row_labels: list[str],
              cell: tuple[int, int] | None = None, footers: list[str] | None = None,
              footer_label: str = "") -> tuple[Image.Image, list[list[Box]]]:
    """rows[r][c] is the image at row r, column c. Cells are `cell` sized (default: the
    largest image); images of another size are scaled in. `footers` (one text per column,
    "" for none) go under each column's last image, `footer_label` beside them. Labels and
    footers wrap to the column's width. Returns the grid and where each cell went (left,
    top, right, bottom)."""
    if not rows or any(len(r) != len(column_labels) for r in rows) or len(rows) != len(row_labels):
        raise ValueError("grid shape does not match its labels")
    if footers is not None and len(footers) != len(column_labels):
        raise ValueError("one footer per column")
    cell_w, cell_h = cell or (max(im.width for row in rows for im in row),
                              max(im.height for row in rows for im in row))
    font = _font()
    small = _font(12)
    line_h, small_h = _line_height(font), _line_height(small)
    label_w = max(int(font.getlength(t)) for t in [*row_labels, footer_label]) + 2 * PAD
    col_w = max(cell_w, MIN_TEXT_WIDTH + 2 * PAD)
    heads = [wrap(t, font, col_w - 2 * PAD) for t in column_labels]
    feet = [wrap(t, small, col_w - 2 * PAD) if t else [] for t in footers or []]
    header = max(HEADER, max(len(h) for h in heads) * line_h + 2 * PAD)
    footer = max((len(f) for f in feet), default=0) * small_h
    footer += PAD if footer else 0
    width = label_w + len(column_labels) * (col_w + PAD) + PAD
    top_of_feet = header + len(rows) * (cell_h + PAD)
    grid = Image.new("RGB", (width, top_of_feet + footer + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, lines in enumerate(heads):
        x = label_w + c * (col_w + PAD)
        _text_block(draw, lines, x + col_w / 2, (header - len(lines) * line_h) / 2, font, line_h)
    for c, lines in enumerate(feet):
        x = label_w + c * (col_w + PAD)
        _text_block(draw, lines, x + col_w / 2, top_of_feet, small, small_h, NOTE)
    if footer and footer_label:
        draw.text((PAD, top_of_feet), footer_label, fill=NOTE, font=font, anchor="la")
    boxes = []
    for r, (row, text) in enumerate(zip(rows, row_labels)):
        y = header + r * (cell_h + PAD)
        draw.text((PAD, y + cell_h / 2), text, fill=TEXT, font=font, anchor="lm")
        boxes.append([])
        for c, image in enumerate(row):
            x = label_w + c * (col_w + PAD) + (col_w - cell_w) // 2
            same = image.size == (cell_w, cell_h)
            grid.paste(image.convert("RGB") if same else _fit(image, cell_w, cell_h), (x, y))
            boxes[-1].append((x, y, x + cell_w, y + cell_h))
    return grid, boxes
