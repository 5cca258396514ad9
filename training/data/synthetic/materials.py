"""Colours, lighting and screen-space textures; colour ranges are shared across classes so that shape
and context, not colour, decide the class.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

# Texture fields in screen space; a material picks one and an amplitude.
FLAT, FINE, BLOTCH, HSTRIPE, VSTRIPE, BRICK = range(6)


def _jitter(rng, rgb, amount=0.06):
    """A colour varied per channel; values past 255 are clipped when the image is composed."""
    return np.asarray(rgb, float) * (1 + rng.uniform(-amount, amount, 3))


def _grey(rng, lo, hi, tint=0.05):
    return _jitter(rng, [rng.uniform(lo, hi)] * 3, tint)


def _masonry(rng):
    """Facade and wall colours come from the same families, so colour cannot tell them apart."""
    family = rng.integers(6)
    if family == 0:
        return _grey(rng, 80, 200)
    if family == 1:  # sandstone / beige
        g = rng.uniform(130, 215)
        return _jitter(rng, [g + 18, g, g - 28])
    if family == 2:  # brick
        return _jitter(rng, [rng.uniform(120, 175), rng.uniform(60, 90), rng.uniform(45, 70)])
    if family == 3:  # brown / dark
        g = rng.uniform(55, 110)
        return _jitter(rng, [g + 12, g, g - 10])
    if family == 4:  # white / cream
        return _grey(rng, 190, 240, 0.04)
    hue = rng.uniform(0, 180)
    hsv = np.uint8([[[hue, rng.uniform(30, 90), rng.uniform(150, 230)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(float)


def _paint(rng):
    family = rng.choice(8, p=[0.2, 0.18, 0.22, 0.1, 0.1, 0.08, 0.06, 0.06])
    table = [(225, 225, 225), (25, 25, 28), (140, 142, 148), (150, 25, 25), (30, 50, 120),
             (70, 75, 80), (30, 80, 50), (200, 160, 40)]
    return _jitter(rng, table[family], 0.15)


def _leaf(rng):
    return _jitter(rng, [rng.uniform(35, 95), rng.uniform(65, 135), rng.uniform(20, 60)], 0.1)


def _grass(rng):
    if rng.random() < 0.3:  # dry grass and soil
        return _jitter(rng, [rng.uniform(120, 165), rng.uniform(115, 150), rng.uniform(70, 100)])
    return _jitter(rng, [rng.uniform(70, 140), rng.uniform(105, 165), rng.uniform(45, 95)], 0.1)


def _cloth(rng):
    if rng.random() < 0.5:
        return _grey(rng, 20, 200)
    return _jitter(rng, rng.uniform(20, 220, 3), 0.1)


@dataclass
class _Light:
    kind: str
    gain: float
    tint: np.ndarray
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    clouds: float
    sun_side: int
    face: dict[str, float]
    noise: float
    gamma: float
    blur: float
    vignette: float

    @property
    def lamps_on(self) -> bool:
        return self.kind in ("dusk", "night")


def _lighting(rng) -> _Light:
    kind = str(rng.choice(["sunny", "overcast", "dusk", "night"], p=[0.45, 0.3, 0.15, 0.1]))
    exposure = rng.uniform(0.75, 1.3)
    sun = int(rng.choice([-1, 1]))
    if kind == "sunny":
        gain, tint, clouds = 1.0, [1.0, 1.0, 0.97], rng.uniform(0, 0.5)
        top = [rng.uniform(50, 110), rng.uniform(110, 165), rng.uniform(190, 245)]
        horizon = [rng.uniform(165, 215), rng.uniform(195, 228), rng.uniform(225, 252)]
        lit, dark = 1.05, 0.62
    elif kind == "overcast":
        gain, tint, clouds = 0.85, [0.97, 1.0, 1.03], rng.uniform(0.2, 0.7)
        g = rng.uniform(150, 220)
        top, horizon = [g - 10, g - 5, g + 5], [g + 15, g + 15, g + 18]
        lit, dark = 0.95, 0.85
    elif kind == "dusk":
        gain, tint, clouds = 0.6, [1.12, 0.95, 0.78], rng.uniform(0, 0.4)
        top = [rng.uniform(50, 90), rng.uniform(55, 90), rng.uniform(110, 160)]
        horizon = [rng.uniform(220, 250), rng.uniform(130, 180), rng.uniform(70, 110)]
        lit, dark = 1.0, 0.7
    else:
        gain, tint, clouds = 0.3, [1.0, 0.95, 0.88], rng.uniform(0, 0.2)
        top = [rng.uniform(4, 15), rng.uniform(6, 20), rng.uniform(18, 40)]
        horizon = [rng.uniform(30, 60), rng.uniform(28, 50), rng.uniform(35, 65)]
        lit, dark = 0.95, 0.9
    # The sun on the right lights faces whose normal points right (+x): left-hand facades.
    face = {"-x": dark if sun > 0 else lit, "+x": lit if sun > 0 else dark, "-z": rng.uniform(0.8, 1.0), "+y": 1.05}
    return _Light(
        kind=kind, gain=gain * exposure,
        tint=np.array(tint, np.float32) * rng.uniform(0.94, 1.06, 3).astype(np.float32),
        sky_top=np.array(top, np.float32) * exposure, sky_horizon=np.array(horizon, np.float32) * exposure,
        clouds=clouds, sun_side=sun, face=face, noise=rng.uniform(1.5, 6.0) * (2.0 if kind == "night" else 1.0),
        gamma=rng.uniform(0.85, 1.15), blur=rng.uniform(0.3, 0.9), vignette=rng.uniform(0.0, 0.3))


def _textures(rng, height: int, width: int) -> np.ndarray:
    """Screen-space texture fields, roughly zero-mean and unit-scale, indexed by FLAT..BRICK."""
    scale = max(1.0, width / 256)
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    fine = rng.standard_normal((height, width), dtype=np.float32)
    low = rng.standard_normal((max(2, height // 8), max(2, width // 8)), dtype=np.float32)
    low = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    tex = np.zeros((6, height, width), np.float32)
    tex[FINE] = fine
    tex[BLOTCH] = 0.8 * low + 0.5 * fine
    tex[HSTRIPE] = np.sin(2 * np.pi * rows / (rng.uniform(3, 6) * scale)) + 0.3 * fine
    tex[VSTRIPE] = np.sign(np.sin(2 * np.pi * cols / (rng.uniform(2.5, 5) * scale))) + 0.3 * fine
    brick_h = rng.uniform(2.5, 4.0) * scale
    course = np.floor(rows / brick_h)
    along = cols + (course % 2) * 1.1 * brick_h  # every other course shifted by half a brick
    mortar = (rows % brick_h < 1.0) | (along % (2.2 * brick_h) < 1.0)
    shade = (course * 7 + np.floor(along / (2.2 * brick_h)) * 13) % 5 - 2  # bricks differ a little in tone
    tex[BRICK] = np.where(mortar, -1.5, 0.3 * fine + 0.2 * shade)
    return tex


@dataclass
class _Materials:
    """The material table: ids index colour, texture kind, amplitude and emissive flag."""
    colour: list = field(default_factory=lambda: [np.zeros(3)])  # id 0 is the sky
    kind: list = field(default_factory=lambda: [FLAT])
    amp: list = field(default_factory=lambda: [0.0])
    emissive: list = field(default_factory=lambda: [True])

    def add(self, rgb, kind: int = FINE, amp: float = 0.06, emissive: bool = False) -> int:
        self.colour.append(np.asarray(rgb, float))
        self.kind.append(kind)
        self.amp.append(amp)
        self.emissive.append(emissive)
        return len(self.colour) - 1
