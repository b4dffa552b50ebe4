"""A few synthetic pairs (a shape recoloured) so a newcomer can try training at once."""
from __future__ import annotations

import io

from PIL import Image, ImageDraw

from ..store import Store
from .checks import DEFAULT_MAX_PIXELS
from .ingest import ingest
from .report import ImportReport
from .sources import Candidate, bytes_ref

SIZE = 256  # a multiple of 16: trains at exactly this size
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 70),
           "yellow": (240, 210, 40), "purple": (140, 60, 190), "orange": (245, 140, 30)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ((245, 245, 240), (210, 225, 240), (235, 225, 210))


def _draw(shape: str, colour: tuple[int, int, int], background: tuple[int, int, int], offset: int) -> bytes:
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    x0, y0 = 56 + offset, 64 + offset // 2
    box = (x0, y0, x0 + 120, y0 + 120)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x0 + 60, y0), (x0, y0 + 120), (x0 + 120, y0 + 120)], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def sample_candidates(count: int = 8) -> list[Candidate]:
    names = list(COLOURS)
    out = []
    for n in range(count):
        shape = SHAPES[n % len(SHAPES)]
        before, after = names[n % len(names)], names[(n + 2 + n // len(names)) % len(names)]
        background, offset = BACKGROUNDS[n % len(BACKGROUNDS)], (n * 13) % 40
        sid = f"sample_{n:03d}"
        out.append(Candidate(
            row=sid, sample_id=sid, meta={"origin": "sample pairs"},
            source=bytes_ref(f"{sid} source", _draw(shape, COLOURS[before], background, offset)),
            target=bytes_ref(f"{sid} target", _draw(shape, COLOURS[after], background, offset)),
            instruction=f"make the {before} {shape} {after}"))
    return out


def add_synthetic_pairs(store: Store, project: str, count: int = 8,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> ImportReport:
    """Import `count` sample pairs; the last is marked as a validation pair (for sample edits)."""
    report = ingest(store, project, sample_candidates(count), ImportReport(), total=count,
                    max_pixels=max_pixels)
    last = f"sample_{count - 1:03d}"
    pair = store.pairs.find(project, last)
    if report.added and count > 1 and pair:
        store.pairs.set_split(project, [pair["id"]], "validation")
        report.notes.append(f"{last} is marked as a validation pair (held out, used for sample edits)")
    return report
