"""Drawing synthetic dermoscopy-like lesions with numpy (for `bottleneck demo` and the tests).

Per-class looks follow the dermoscopy textbook: nv round, symmetric, uniform brown; mel larger,
asymmetric, ragged, several colours; bcc pink, pearly, translucent, with thin red branching vessels.
See demo.py for how lesions become a HAM10000-style dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

# The lesion is drawn on a larger canvas and each photo is a rotated, shifted crop of it, so that
# re-photographing never reveals an empty corner: 1.45 covers a 15 degree turn plus a 5% shift.
_CANVAS = 1.45
_MAX_TURN_DEG = 15.0
_MAX_SHIFT = 0.05


@dataclass(frozen=True)
class _Look:
    """Every per-class number in one place: shape, opacity and the metadata that goes with the class."""

    share: int  # images = share * images_per_class
    radius: tuple[float, float]  # lesion radius range, as a fraction of the image side
    aspect: float  # up to this much elongation of the ellipse
    lobes: tuple[float, float]  # amplitude range of the 1st-4th border harmonics: asymmetry
    ragged: float  # strength of the 2-D noise that notches the border: an irregular, ragged border
    edge: float  # border blur in lesion radii: nevi fade out smoothly
    edge_wobble: float  # how much the blur changes around the border: melanoma is sharp here, fuzzy there
    opacity: tuple[float, float]  # bcc is translucent, skin shows through
    dx_type: tuple[tuple[str, float], ...]
    age: tuple[float, float]  # mean, sd in years
    localization: tuple[tuple[str, float], ...]


LOOKS = MappingProxyType({
    "bcc": _Look(share=1, radius=(0.16, 0.27), aspect=0.3, lobes=(0.02, 0.08), ragged=0.06, edge=0.06,
                 edge_wobble=0.3, opacity=(0.6, 0.85), dx_type=(("histo", 1.0),), age=(66.0, 12.0),
                 localization=(("face", 0.3), ("back", 0.25), ("trunk", 0.12), ("neck", 0.08), ("scalp", 0.07),
                               ("upper extremity", 0.1), ("chest", 0.08))),
    "mel": _Look(share=1, radius=(0.2, 0.32), aspect=0.35, lobes=(0.05, 0.15), ragged=0.18, edge=0.035,
                 edge_wobble=0.6, opacity=(0.9, 0.98), age=(61.0, 15.0),
                 dx_type=(("histo", 0.9), ("consensus", 0.05), ("confocal", 0.05)),
                 localization=(("back", 0.3), ("lower extremity", 0.2), ("upper extremity", 0.15), ("trunk", 0.1),
                               ("face", 0.1), ("chest", 0.08), ("abdomen", 0.07))),
    "nv": _Look(share=2, radius=(0.14, 0.26), aspect=0.25, lobes=(0.0, 0.03), ragged=0.02, edge=0.07,
                edge_wobble=0.2, opacity=(0.85, 0.97), age=(45.0, 15.0),
                dx_type=(("follow_up", 0.55), ("histo", 0.3), ("consensus", 0.15)),
                localization=(("back", 0.25), ("lower extremity", 0.2), ("trunk", 0.2), ("abdomen", 0.12),
                              ("upper extremity", 0.12), ("chest", 0.06), ("foot", 0.05))),
})

# RGB colours, 0-255.
_SKIN_TONES = np.array([[232, 186, 162], [222, 165, 140], [240, 202, 182], [205, 146, 120], [226, 176, 160]],
                       np.float32)
_HAIR = np.array([62, 44, 36], np.float32)
_VESSEL = np.array([178, 32, 44], np.float32)


# _CANVAS * image_size; channel-first keeps numpy's inner loops long (a trailing axis of 3 is slow).
# Scalars stay Python floats (math, not np.cos): a numpy float64 scalar would silently promote every
# float32 field it touches to float64, and double the time.


@dataclass(frozen=True)
class Canvas:
    """Pixel grids every lesion of one dataset uses, computed once."""

    size: int  # photo side
    side: int  # drawing side
    xx: np.ndarray  # (side, side) float32 pixel x
    yy: np.ndarray  # (side, side) float32 pixel y
    corner: np.ndarray  # (size, size) float32: 0 at the photo centre, 1 in its corners

    @classmethod
    def for_size(cls, size: int) -> Canvas:
        side = int(math.ceil(size * _CANVAS / 2)) * 2
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
        py, px = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
        corner = (px**2 + py**2) / (size**2 / 2)
        return cls(size, side, xx, yy, corner)


def to_image(rgb: np.ndarray):
    """(3, H, W) float32 -> RGB PIL image, rounded and clipped to 0..255."""
    from PIL import Image

    planes = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return Image.merge("RGB", [Image.fromarray(plane) for plane in planes])


def _rgb(colour) -> np.ndarray:
    """An RGB triple as (3, 1, 1) float32, to broadcast over a (3, H, W) field."""
    return np.asarray(colour, np.float32).reshape(3, 1, 1)


def _smooth_noise(rng: np.random.Generator, side: int, cells: int) -> np.ndarray:
    """(side, side) float32 value noise, mean 0 and sd 1: random values on a (cells+1)^2 grid,
    smoothstep-interpolated. Two octaves, so blotches have soft but not perfectly round edges."""
    out = np.zeros((side, side), np.float32)
    for octave, weight in ((cells, 1.0), (cells * 2, 0.5)):
        grid = rng.standard_normal((octave + 1, octave + 1), dtype=np.float32)
        t = np.linspace(0, octave, side, dtype=np.float32)
        i0 = np.minimum(t.astype(np.intp), octave - 1)
        f = (t - i0).astype(np.float32)
        f = f * f * (3 - 2 * f)
        g = 1 - f
        # Separable: along x on the small grid, then along y by whole rows. Gathers, not a matrix
        # product, so no BLAS threads and the same bits on every run.
        cols = grid[:, i0] * g + grid[:, i0 + 1] * f  # (octave+1, side)
        out += weight * (cols[i0] * g[:, None] + cols[i0 + 1] * f[:, None])
    out -= out.mean()
    return out / (out.std() + 1e-6)


def _harmonics(rng: np.random.Generator, ks: np.ndarray, amps: np.ndarray, angles: np.ndarray) -> np.ndarray:
    phases = rng.uniform(0, 2 * np.pi, len(ks))
    return (amps[:, None] * np.cos(np.outer(ks, angles) + phases[:, None])).sum(axis=0).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(x, -30, 30)))


def _blend(under: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(3, H, W) under, (3, 1, 1) or (3, H, W) colour, (H, W) weight 0..1."""
    return under + (colour - under) * weight


def draw_lesion(rng: np.random.Generator, dx: str, canvas: Canvas) -> np.ndarray:
    """The base drawing of one lesion on skin: (3, side, side) float32 RGB. Every photo of it is cut from it."""
    look, size, side = LOOKS[dx], canvas.size, canvas.side
    skin = _draw_skin(rng, side)

    # Geometry in the lesion's own frame: rotated, stretched into an ellipse, border a radial function.
    centre = (side / 2 + rng.uniform(-0.08, 0.08) * size, side / 2 + rng.uniform(-0.08, 0.08) * size)
    radius = rng.uniform(*look.radius) * size
    turn, aspect = rng.uniform(0, 2 * math.pi), 1 + rng.uniform(0, look.aspect)
    dx_, dy_ = canvas.xx - centre[0], canvas.yy - centre[1]
    along = (dx_ * math.cos(turn) + dy_ * math.sin(turn)) / aspect
    across = dy_ * math.cos(turn) - dx_ * math.sin(turn)
    rho, theta = np.sqrt(along * along + across * across), np.arctan2(across, along)

    # The border as a table over 720 angles: low harmonics make it lopsided; 2-D noise then notches it.
    angles = np.linspace(-np.pi, np.pi, 720, endpoint=False)
    low = np.arange(1, 5)
    border = np.maximum(1 + _harmonics(rng, low, rng.uniform(*look.lobes, len(low)), angles), 0.35)
    edge = look.edge * np.exp(look.edge_wobble * _harmonics(rng, low, np.full(4, 0.5), angles))
    k = ((theta + math.pi) * (720 / (2 * math.pi))).astype(np.intp) % 720
    notches = np.exp(look.ragged * rng.uniform(0.5, 1.0) * _smooth_noise(rng, side, 7))
    u = rho / (radius * border[k]) * notches  # < 1 inside the lesion
    alpha = rng.uniform(*look.opacity) * _sigmoid((1 - u) / edge[k])
    axis = rng.uniform(0, 2 * math.pi)  # a direction for colours that gather on one side (asymmetry)
    side_pos = (dx_ * math.cos(axis) + dy_ * math.sin(axis)) / radius

    if dx == "nv":
        colour = _nevus_colour(rng, u, side)
    elif dx == "mel":
        colour = _melanoma_colour(rng, u, side_pos, side)
    else:
        colour = _bcc_colour(rng, radius, centre, canvas)
    image = _blend(skin, colour, alpha)
    if dx == "bcc":
        vessels = _vessels(rng, centre, radius, side) * _sigmoid((1.1 - u) / 0.05)
        image = _blend(image, _rgb(_VESSEL * rng.uniform(0.85, 1.1)), 0.85 * vessels)
    if rng.uniform() < 0.3:  # hair crosses lesions of every class
        image = _blend(image, _rgb(_HAIR * rng.uniform(0.7, 1.3)), 0.85 * _hairs(rng, side))
    return image


def _draw_skin(rng: np.random.Generator, side: int) -> np.ndarray:
    tone = _rgb(_SKIN_TONES[rng.integers(len(_SKIN_TONES))] + 6 * rng.standard_normal(3, dtype=np.float32))
    shade = 1 + 0.04 * _smooth_noise(rng, side, 3)  # uneven illumination and skin thickness
    redness = 6 * _smooth_noise(rng, side, 4)  # patchy erythema: more red, a little less green and blue
    grain = 2.5 * _smooth_noise(rng, side, max(4, side // 6)) + 2.5 * rng.standard_normal((side, side), np.float32)
    return tone * shade + (grain + redness * _rgb((1.0, -0.4, -0.4)))


def _hue_jitter(rng: np.random.Generator, colour, brightness: tuple[float, float]) -> np.ndarray:
    """(3, 1, 1): the colour a little brighter or darker, and a little off in hue."""
    return _rgb(colour) * (rng.uniform(*brightness) * (1 + 0.04 * rng.standard_normal(3, np.float32)).reshape(3, 1, 1))


def _nevus_colour(rng, u, side) -> np.ndarray:
    """Uniform medium brown; a little darker or lighter towards the centre, faint texture."""
    brown = _hue_jitter(rng, (150, 100, 70), (0.55, 1.1))  # some nevi are dark
    centre_shift = rng.uniform(-0.12, 0.12) * (1 - np.clip(u, 0, 1))
    texture = 0.05 * _smooth_noise(rng, side, 5)
    return brown * (1 + centre_shift + texture)


def _melanoma_colour(rng, u, side_pos, side) -> np.ndarray:
    """Dark brown with patches of light brown, black, blue-grey and red; not every melanoma has all."""
    colour = _hue_jitter(rng, (108, 64, 44), (0.8, 1.25)) * (1 + 0.1 * _smooth_noise(rng, side, 5))
    lopsided = rng.uniform(0.6, 1.4)
    zones = (  # (colour, chance present, strength, bias field, threshold)
        ((168, 120, 86), 0.6, 0.8, 0.0, 0.6),
        ((38, 26, 26), 0.7, 0.9, lopsided * side_pos, 0.3),  # black gathers on one side
        ((112, 120, 134), 0.6, 0.65, -0.8 * u, 0.4),  # blue-grey veil, towards the centre
        ((158, 78, 72), 0.5, 0.7, 1.2 * (u - 0.7), 0.8),  # red, towards the rim
    )
    for zone_colour, chance, strength, bias, threshold in zones:
        present = float(rng.uniform() < chance)
        weight = present * strength * _sigmoid((_smooth_noise(rng, side, 4) + bias - threshold) / 0.25)
        colour = _blend(colour, _hue_jitter(rng, zone_colour, (0.85, 1.1)), weight)
    return colour


def _bcc_colour(rng, radius, centre, canvas: Canvas) -> np.ndarray:
    """Pearly pink with white sheen; sometimes blue-grey ovoid nests or a small dark-red ulcer."""
    side = canvas.side
    colour = _hue_jitter(rng, (232, 166, 172), (0.88, 1.04)) * (1 + 0.04 * _smooth_noise(rng, side, 5))
    sheen = 0.5 * _sigmoid((_smooth_noise(rng, side, 6) - 0.8) / 0.4)
    colour = _blend(colour, _rgb((252, 238, 236)), sheen)
    n_nests = int(rng.integers(1, 5)) if rng.uniform() < 0.35 else 0
    for _ in range(n_nests):
        r, a = rng.uniform(0, 0.6) * radius, rng.uniform(0, 2 * math.pi)
        cx, cy = centre[0] + r * math.cos(a), centre[1] + r * math.sin(a)
        blob = _spot(canvas, cx, cy, rng.uniform(0.08, 0.16) * radius)
        colour = _blend(colour, _rgb((98, 108, 134)), 0.85 * blob)
    if rng.uniform() < 0.2:
        ulcer = _spot(canvas, centre[0], centre[1], rng.uniform(0.12, 0.25) * radius)
        colour = _blend(colour, _rgb((122, 52, 46)), 0.8 * ulcer)
    return colour


def _spot(canvas: Canvas, cx: float, cy: float, sd: float) -> np.ndarray:
    return np.exp(((canvas.xx - cx) ** 2 + (canvas.yy - cy) ** 2) * (-0.5 / sd**2))


def _line_mask(side: int, polylines: list[tuple[list[tuple[float, float]], int]]) -> np.ndarray:
    """Draw polylines at twice the resolution and box-downsample: thin anti-aliased lines, (side, side) 0..1."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (2 * side, 2 * side), 0)
    draw = ImageDraw.Draw(img)
    for points, width in polylines:
        draw.line([(2 * x, 2 * y) for x, y in points], fill=255, width=width, joint="curve")
    small = img.resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, np.float32) * (1 / 255)


def _vessels(rng, centre, radius, side) -> np.ndarray:
    """Arborising telangiectasia: a few random walks from the rim inwards that fork as they go."""
    lines: list[tuple[list[tuple[float, float]], int]] = []
    n_roots = 0 if rng.uniform() < 0.1 else int(rng.integers(2, 5))
    stack = []
    for _ in range(n_roots):
        a = rng.uniform(0, 2 * math.pi)
        r = rng.uniform(0.5, 0.9) * radius
        start = (centre[0] + r * math.cos(a), centre[1] + r * math.sin(a))
        stack.append((start, a + math.pi + rng.normal(0, 0.6), int(rng.integers(6, 12)), 2))
    while stack and len(lines) < 40:
        (x, y), heading, steps, width = stack.pop()
        points = [(x, y)]
        for _ in range(steps):
            heading += rng.normal(0, 0.35)
            step = rng.uniform(0.07, 0.13) * radius
            x, y = x + step * math.cos(heading), y + step * math.sin(heading)
            points.append((x, y))
            if steps > 2 and rng.uniform() < 0.25:
                fork = heading + (1 if rng.uniform() < 0.5 else -1) * rng.uniform(0.4, 0.9)
                stack.append(((x, y), fork, steps // 2, width))
        lines.append((points, width))
    return _line_mask(side, lines)


def _hairs(rng, side) -> np.ndarray:
    """One to three thin dark hairs: quadratic curves from one canvas edge to another."""
    lines = []
    for _ in range(int(rng.integers(1, 4))):
        p0, p2 = rng.uniform(0, side, 2), rng.uniform(0, side, 2)
        p0[rng.integers(2)] = 0  # start on the left or top edge
        p2[rng.integers(2)] = side  # end on the right or bottom edge
        p1 = rng.uniform(0, side, 2)
        t = np.linspace(0, 1, 24)[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # (24, 2)
        lines.append(([(float(x), float(y)) for x, y in curve], int(rng.integers(2, 4))))
    return _line_mask(side, lines)


def photograph(rng: np.random.Generator, base, canvas: Canvas, vignetting: float):
    """One photo of the lesion: the base drawing turned and shifted a little, with its own exposure,
    white balance, vignetting and sensor noise. Returns a (size, size) RGB PIL image."""
    from PIL import Image

    size, side = canvas.size, canvas.side
    # One affine resample straight into the (size, size) crop: output pixel p comes from the base at
    # (side/2, side/2) + R(turn) (p - (size/2, size/2) - shift).
    turn = math.radians(rng.uniform(-_MAX_TURN_DEG, _MAX_TURN_DEG))
    c, s = math.cos(turn), math.sin(turn)
    ox = size / 2 + rng.uniform(-_MAX_SHIFT, _MAX_SHIFT) * size
    oy = size / 2 + rng.uniform(-_MAX_SHIFT, _MAX_SHIFT) * size
    matrix = (c, -s, side / 2 - c * ox + s * oy, s, c, side / 2 - s * ox - c * oy)
    crop = base.transform((size, size), Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR)
    rgb = np.stack([np.asarray(plane, np.float32) for plane in crop.split()])  # (3, size, size)
    exposure = rng.uniform(0.95, 1.05) * (1 + 0.015 * rng.standard_normal(3, np.float32))  # and white balance
    # Dermatoscope vignetting: darker towards the corners, a little differently in each photo.
    light = 1 - (vignetting + rng.uniform(-0.03, 0.03)) * canvas.corner**1.25
    rgb = rgb * light * exposure.reshape(3, 1, 1) + 1.5 * rng.standard_normal(rgb.shape, np.float32)
    return to_image(rgb)


def lesion_photograph(rng: np.random.Generator, dx: str, size: int, vignetting: float = 0.3):
    """One lesion of class `dx` drawn and photographed once: a (size x size) RGB PIL image (the benchmarks' and
    tests' distinct images, each a lesion of its own)."""
    canvas = Canvas.for_size(size)
    return photograph(rng, to_image(draw_lesion(rng, dx, canvas)), canvas, vignetting).convert("RGB")
