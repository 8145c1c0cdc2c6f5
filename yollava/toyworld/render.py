"""Drawing toy-world scene graphs with PIL: backgrounds, family silhouettes, patterns, accessories."""

from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageDraw

from yollava.toyworld.world import PlacedSubject, Scene

RGB = tuple[int, int, int]

# Saturated, well separated colours: at 64 px a body is ~10x15 px, so hues must differ at a glance.
PALETTE: dict[str, RGB] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 165, 60),
    "blue": (40, 90, 225),
    "purple": (140, 60, 190),
    "pink": (245, 130, 190),
    "brown": (125, 75, 35),
    "white": (248, 248, 248),
    "black": (20, 20, 20),
}
DARK: RGB = (45, 45, 45)
LIGHT: RGB = (250, 250, 250)
SKIN: RGB = (235, 195, 155)
PART_GRAY: RGB = (90, 90, 95)
LEAF: RGB = (30, 120, 40)
# (sky or wall, ground or floor) per background; chosen to sit apart from the subject palette.
BACKGROUND_COLORS: dict[str, tuple[RGB, RGB]] = {
    "park": ((150, 200, 235), (105, 165, 85)),
    "beach": ((165, 215, 245), (232, 212, 160)),
    "room": ((222, 212, 190), (160, 118, 82)),
    "street": ((188, 198, 208), (105, 105, 112)),
    "snow": ((210, 222, 235), (243, 246, 250)),
    "night": ((22, 28, 62), (52, 56, 62)),
}


def _luminance(color: RGB) -> float:
    return 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]


def _contrast(color: RGB) -> RGB:
    """Dark on light colours, light on dark ones: used for patterns and outlines."""
    return DARK if _luminance(color) > 140 else LIGHT


def _outline(color: RGB) -> RGB:
    return (130, 130, 135) if _luminance(color) < 50 else DARK


@lru_cache(maxsize=512)
def _background(name: str, horizon: int, size: int) -> Image.Image:
    """The empty scene (cached: 6 backgrounds x ~15 horizons per size, ~12 KB each at 64 px)."""
    top, ground = BACKGROUND_COLORS[name]
    image = Image.new("RGB", (size, size), top)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, horizon, size, size), fill=ground)
    step = max(4, size // 8)
    if name == "park":
        for x in range(step // 2, size, step):
            draw.line((x, horizon + 3, x + 1, horizon + 1), fill=(80, 135, 65))
    elif name == "beach":
        draw.rectangle((0, horizon - max(2, size // 20), size, horizon - 1), fill=(70, 140, 200))
    elif name == "room":
        for y in range(horizon + step, size, step):
            draw.line((0, y, size, y), fill=(140, 100, 70))
    elif name == "street":
        mid = (horizon + size) // 2
        for x in range(0, size, 2 * step):
            draw.line((x, mid, x + step, mid), fill=(235, 235, 235))
    elif name == "snow":
        draw.line((0, horizon, size, horizon), fill=(190, 200, 215))
    elif name == "night":
        for i in range(size // 6):
            x, y = (i * 37) % size, (i * 23) % max(1, horizon - 2)
            draw.point((x, y), fill=(240, 240, 200))
    return image


@lru_cache(maxsize=256)
def _pattern_tile(pattern: str, color: RGB, period: int, size: int) -> Image.Image:
    """A size x size swatch of the body colour with its pattern, cropped per body (cheap: cached)."""
    tile = Image.new("RGB", (size, size), color)
    draw = ImageDraw.Draw(tile)
    ink = _contrast(color)
    half = max(1, period // 2)
    if pattern == "striped":
        for x in range(0, size, period):
            draw.rectangle((x, 0, x + half - 1, size), fill=ink)
    elif pattern == "dotted":
        radius = max(1, period // 4)
        for y in range(half, size, period):
            for x in range(half, size, period):
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink)
    elif pattern == "checkered":
        for y in range(0, size, half):
            for x in range((y // half) % 2 * half, size, period):
                draw.rectangle((x, y, x + half - 1, y + half - 1), fill=ink)
    return tile


def _shape_points(shape: str, box: tuple[int, int, int, int]) -> list[tuple[int, int]] | None:
    """Polygon of a body shape inside ``box`` (inclusive corners); None for the ellipse."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangular":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    return None


def _draw_body(
    image: Image.Image, draw: ImageDraw.ImageDraw, placed: PlacedSubject, body: tuple[int, int, int, int]
) -> None:
    subject = placed.subject
    color = PALETTE[subject.color]
    outline = _outline(color)
    points = _shape_points(subject.shape, body)
    if subject.pattern == "plain":
        if points is None:
            draw.ellipse(body, fill=color, outline=outline)
        else:
            draw.polygon(points, fill=color, outline=outline)
        return
    x0, y0, x1, y1 = body
    width, height = x1 - x0 + 1, y1 - y0 + 1
    mask = Image.new("L", (width, height), 0)
    mask_draw = ImageDraw.Draw(mask)
    local = (0, 0, width - 1, height - 1)
    local_points = _shape_points(subject.shape, local)
    if local_points is None:
        mask_draw.ellipse(local, fill=255)
    else:
        mask_draw.polygon(local_points, fill=255)
    # The period follows the image size, not the body, so a pattern reads the same at every scale.
    period = max(4, image.width // 14)
    tile = _pattern_tile(subject.pattern, color, period, image.width)
    image.paste(tile.crop((0, 0, width, height)), (x0, y0), mask)
    if points is None:
        draw.ellipse(body, outline=outline)
    else:
        draw.polygon(points, outline=outline)


def _draw_subject(image: Image.Image, draw: ImageDraw.ImageDraw, placed: PlacedSubject) -> None:
    """Family parts, the patterned body, then the accessory, all inside ``placed.box``."""
    subject = placed.subject
    bx0, by0, bx1, by1 = placed.box
    w, h = bx1 - bx0, by1 - by0

    def at(fx: float, fy: float) -> tuple[int, int]:
        return (bx0 + round(fx * (w - 1)), by0 + round(fy * (h - 1)))

    def rect(fx0: float, fy0: float, fx1: float, fy1: float) -> tuple[int, int, int, int]:
        return (*at(fx0, fy0), *at(fx1, fy1))

    line = max(1, round(h / 22))
    family = subject.family
    # Content starts at 0.18 h: the band above is where a hat sits (hat_x is its centre).
    hat_x, hat_bottom = 0.5, 0.24
    if family == "person":
        draw.line((*at(0.32, 0.78), *at(0.32, 1.0)), fill=DARK, width=line + 1)
        draw.line((*at(0.68, 0.78), *at(0.68, 1.0)), fill=DARK, width=line + 1)
        body = rect(0.0, 0.40, 1.0, 0.82)
        draw.ellipse(rect(0.28, 0.18, 0.72, 0.42), fill=SKIN, outline=DARK)
        hat_bottom = 0.22
    elif family == "pet":
        for fx in (0.1, 0.3, 0.52, 0.72):
            draw.line((*at(fx, 0.7), *at(fx, 1.0)), fill=DARK, width=line + 1)
        draw.line((*at(0.8, 0.5), *at(1.0, 0.28)), fill=DARK, width=line + 1)
        draw.polygon([at(0.04, 0.42), at(0.12, 0.2), at(0.22, 0.42)], fill=DARK)
        draw.polygon([at(0.24, 0.42), at(0.32, 0.2), at(0.42, 0.42)], fill=DARK)
        body = rect(0.0, 0.36, 0.84, 0.8)
        hat_x, hat_bottom = 0.22, 0.3
    elif family == "object":
        draw.ellipse(rect(0.55, 0.4, 0.98, 0.82), outline=DARK, width=line + 1)
        body = rect(0.0, 0.28, 0.76, 1.0)
        hat_x, hat_bottom = 0.38, 0.3
    elif family == "landmark":
        draw.polygon([at(0.5, 0.18), at(0.68, 0.42), at(0.32, 0.42)], fill=PART_GRAY)
        draw.rectangle(rect(0.0, 0.86, 1.0, 1.0), fill=PART_GRAY)
        body = rect(0.1, 0.4, 0.9, 0.87)
        hat_bottom = 0.26
    elif family == "vehicle":
        body = rect(0.0, 0.3, 1.0, 0.8)
        hat_bottom = 0.32
    else:  # plant
        draw.line((*at(0.5, 0.55), *at(0.5, 1.0)), fill=LEAF, width=line + 1)
        draw.ellipse(rect(0.08, 0.7, 0.48, 0.86), fill=LEAF)
        draw.ellipse(rect(0.52, 0.62, 0.92, 0.78), fill=LEAF)
        body = rect(0.0, 0.18, 1.0, 0.62)
    _draw_body(image, draw, placed, body)
    if family == "vehicle":
        # Wheels over the body's lower edge, as on a car.
        for fx0, fx1 in ((0.08, 0.38), (0.62, 0.92)):
            draw.ellipse(rect(fx0, 0.64, fx1, 1.0), fill=DARK, outline=PART_GRAY)
    if subject.accessory == "none":
        return
    ink = PALETTE[subject.accessory_color]
    edge = _outline(ink)
    x0, y0, x1, y1 = body
    bw, bh = x1 - x0, y1 - y0
    if subject.accessory == "hat":
        cx, base = at(hat_x, hat_bottom)
        brim, crown = max(2, round(0.2 * h)), max(1, round(0.12 * h))
        top = max(by0, base - round(0.2 * h))
        draw.rectangle((cx - crown, top, cx + crown, base), fill=ink, outline=edge)
        draw.rectangle((cx - brim, base - max(1, round(0.04 * h)), cx + brim, base), fill=ink, outline=edge)
    elif subject.accessory == "scarf":
        top = y0 + round(0.08 * bh)
        bottom = top + max(2, round(0.24 * bh))
        draw.rectangle((x0 + round(0.1 * bw), top, x1 - round(0.1 * bw), bottom), fill=ink, outline=edge)
    elif subject.accessory == "bag":
        left, top = x1 - round(0.42 * bw), y0 + round(0.45 * bh)
        draw.line((left + round(0.1 * bw), y0 + round(0.1 * bh), left + round(0.1 * bw), top), fill=edge, width=line)
        draw.rectangle((left, top, x1 - round(0.06 * bw), y1 - round(0.08 * bh)), fill=ink, outline=edge)
    else:  # flag
        pole = x0 + round(0.12 * bw)
        top = by0 + round(0.02 * h)
        draw.line((pole, y0 + round(0.5 * bh), pole, top), fill=DARK, width=line)
        right = min(bx1 - 1, pole + max(3, round(0.34 * h)))
        draw.rectangle((pole + 1, top, right, top + max(2, round(0.18 * h))), fill=ink, outline=edge)


def render_scene(scene: Scene) -> Image.Image:
    """Draw a scene graph; a pure function of it, so the same graph always gives the same pixels.

    Args:
        scene: the scene graph (main subject first).

    Returns:
        An RGB image of ``scene.image_size`` pixels square.
    """
    image = _background(scene.background, scene.horizon, scene.image_size).copy()
    draw = ImageDraw.Draw(image)
    # Distractors first, main subject last: it is never hidden behind another subject.
    for placed in (*scene.distractors, scene.main):
        _draw_subject(image, draw, placed)
    return image

