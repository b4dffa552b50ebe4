"""Draws a comparison grid: labelled columns (adapter x strength) and rows (seeds)."""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

PAD = 6
HEADER = 28


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


Box = tuple[int, int, int, int]


def draw_grid(rows: list[list[Image.Image]], column_labels: list[str], row_labels: list[str],
              cell: tuple[int, int] | None = None) -> tuple[Image.Image, list[list[Box]]]:
    """rows[r][c] is the image at row r, column c. Cells are `cell` sized (default: the
    largest image); images of another size are scaled in. Returns the grid and where each
    cell went (left, top, right, bottom)."""
    if not rows or any(len(r) != len(column_labels) for r in rows) or len(rows) != len(row_labels):
        raise ValueError("grid shape does not match its labels")
    cell_w, cell_h = cell or (max(im.width for row in rows for im in row),
                              max(im.height for row in rows for im in row))
    font = _font()
    label_w = max(int(font.getlength(t)) for t in row_labels) + 2 * PAD
    # Columns are as wide as their widest label, so small cells do not overlap labels.
    col_w = max(cell_w, max(int(font.getlength(t)) for t in column_labels) + 2 * PAD)
    width = label_w + len(column_labels) * (col_w + PAD) + PAD
    height = HEADER + len(rows) * (cell_h + PAD) + PAD
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(column_labels):
        x = label_w + c * (col_w + PAD)
        draw.text((x + col_w / 2, HEADER / 2), text, fill=(0, 0, 0), font=font, anchor="mm")
    boxes = []
    for r, (row, text) in enumerate(zip(rows, row_labels)):
        y = HEADER + r * (cell_h + PAD)
        draw.text((PAD, y + cell_h / 2), text, fill=(0, 0, 0), font=font, anchor="lm")
        boxes.append([])
        for c, image in enumerate(row):
            x = label_w + c * (col_w + PAD) + (col_w - cell_w) // 2
            same = image.size == (cell_w, cell_h)
            grid.paste(image.convert("RGB") if same else _fit(image, cell_w, cell_h), (x, y))
            boxes[-1].append((x, y, x + cell_w, y + cell_h))
    return grid, boxes

