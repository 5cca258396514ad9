"""Embedded synthetic driving scenes and a dashcam video, written in the Cityscapes layout.

Each scene is a small 3-D street (road, kerbed sidewalks, frontage blocks, traffic, people, poles)
seen through a pinhole car camera, so size, position and occlusion follow from perspective; one set
of polygons fills both the label map and a material map, so ground truth is exact. Colours and
textures come from ranges shared across classes (grey road and paving, masonry buildings and walls)
so that shape and context, not colour, decide the class. The video renders one such street while
the camera drives through it, which makes it temporally coherent by construction.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from training.data.cityscapes import CLASSES, train_ids_to_label_ids
from training.params import ParamsError, SyntheticParams

CITIES = {"train": ("synthville", "pixelburg", "rasterdam"), "val": ("mockholm", "polygonia")}
_SPLIT_CODE = {"train": 0, "val": 1}
_VIDEO_CODE = 2
_FRAME = 19  # Cityscapes annotates the 20th frame of each snippet

_ID = {name: index for index, name in enumerate(CLASSES)}
ROAD, SIDEWALK, BUILDING, WALL, FENCE = (_ID[n] for n in ("road", "sidewalk", "building", "wall", "fence"))
POLE, LIGHT, SIGN = (_ID[n] for n in ("pole", "traffic light", "traffic sign"))
VEGETATION, TERRAIN = _ID["vegetation"], _ID["terrain"]
SKY, PERSON, RIDER, CAR, TRUCK = (_ID[n] for n in ("sky", "person", "rider", "car", "truck"))
BUS, TRAIN, MOTORCYCLE, BICYCLE = (_ID[n] for n in ("bus", "train", "motorcycle", "bicycle"))

NEAR = 0.5     # m: geometry closer to the camera is clipped away
VIEW = 160.0   # m: depth ahead of the camera that is populated with objects
BEHIND = 20.0  # m: objects start this far behind the camera, so long ones reach into view
FAR = 3000.0   # m: ground planes run this far, which projects to within a pixel of the horizon
_SHIFT = 4     # fixed-point bits for sub-pixel polygon vertices (smooth motion in the video)
_POOL_MIN = 64  # below this many images a process pool costs more than it saves

# Texture fields in screen space; a material picks one and an amplitude.
FLAT, FINE, BLOTCH, HSTRIPE, VSTRIPE, BRICK = range(6)


class SyntheticDataError(ParamsError):
    """Unusable synthetic-data parameters; the message names the key and the fix."""


# ---------------------------------------------------------------- camera and painter

@dataclass
class _Camera:
    focal: float    # px
    cx: float       # px, column of the vanishing point
    horizon: float  # px, row of the horizon
    height: float   # m above the road
    x: float        # m, lateral position (road centre line at 0, right positive)
    z: float = 0.0  # m travelled


def _clip_near(pts: np.ndarray, z_min: float) -> np.ndarray:
    """Sutherland-Hodgman against the plane z = z_min (keeps the part in front of the camera)."""
    z = pts[:, 2]
    if z.min() >= z_min:
        return pts
    if z.max() < z_min:
        return pts[:0]
    out = []
    for a, b in zip(pts, np.roll(pts, -1, axis=0)):
        if a[2] >= z_min:
            out.append(a)
        if (a[2] >= z_min) != (b[2] >= z_min):
            out.append(a + (z_min - a[2]) / (b[2] - a[2]) * (b - a))
    return np.array(out)


def _xface(x, y0, y1, z0, z1):
    return np.array([(x, y0, z0), (x, y1, z0), (x, y1, z1), (x, y0, z1)], float)


def _zface(z, x0, x1, y0, y1):
    return np.array([(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)], float)


def _ground(x0, x1, z0, z1, y=0.0):
    return np.array([(x0, y, z0), (x1, y, z0), (x1, y, z1), (x0, y, z1)], float)


_UNIT_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 14, endpoint=False)),
                         np.sin(np.linspace(0, 2 * np.pi, 14, endpoint=False))], axis=1)


def _disc(x, y, z, r, along: bool, ry: float | None = None):
    """A vertical disc: in the plane x = const when `along` the road, else in z = const."""
    pts = np.empty((len(_UNIT_CIRCLE), 3))
    pts[:, 1] = y + _UNIT_CIRCLE[:, 1] * (r if ry is None else ry)
    if along:
        pts[:, 0] = x
        pts[:, 2] = z + _UNIT_CIRCLE[:, 0] * r
    else:
        pts[:, 0] = x + _UNIT_CIRCLE[:, 0] * r
        pts[:, 2] = z
    return pts


class _Painter:
    """Fills label, material and shade maps with the same projected polygons.

    Drawing calls are recorded in painter's order and projected together in `finish`: one
    vectorised projection is much cheaper than one per small polygon.
    """

    def __init__(self, cam: _Camera, height: int, width: int, face_shade: dict[str, float]):
        self.cam = cam
        self.face = face_shade
        self.label = np.full((height, width), SKY, np.uint8)
        self.material = np.zeros((height, width), np.uint16)
        self.shade = np.ones((height, width), np.float32)
        self._ops: list[tuple[str, np.ndarray, int, int, float]] = []

    def project(self, pts: np.ndarray) -> np.ndarray:
        c = self.cam
        scale = (c.focal * (1 << _SHIFT)) / (pts[..., 2] - c.z)
        uv = np.empty(pts.shape[:-1] + (2,))
        np.multiply(pts[..., 0] - c.x, scale, out=uv[..., 0])
        np.multiply(c.height - pts[..., 1], scale, out=uv[..., 1])
        uv += (c.cx * (1 << _SHIFT), c.horizon * (1 << _SHIFT))
        return np.rint(uv, out=uv).astype(np.int32)

    def pixels(self, metres: float, z: float) -> float:
        return self.cam.focal * metres / max(z - self.cam.z, NEAR)

    def poly(self, pts, cls: int, mat: int, shade: float = 1.0) -> None:
        pts = _clip_near(np.asarray(pts, float), self.cam.z + NEAR)
        if len(pts) >= 3:
            self._ops.append(("fill", pts, cls, mat, shade))

    def polys(self, batch: np.ndarray, cls: int, mat: int, shade: float = 1.0) -> None:
        """Many small, non-overlapping polygons (windows, dashes) in one call per map."""
        batch = batch[batch[:, :, 2].min(axis=1) > self.cam.z + NEAR] if len(batch) else batch
        if len(batch):
            self._ops.append(("many", batch, cls, mat, shade))

    def shadow(self, pts, factor: float) -> None:
        pts = _clip_near(np.asarray(pts, float), self.cam.z + NEAR)
        if len(pts) >= 3:
            self._ops.append(("shadow", pts, 0, 0, factor))

    def line(self, a, b, width_m: float, cls: int, mat: int) -> None:
        pts = np.array([a, b], float)
        if pts[:, 2].min() >= self.cam.z + NEAR:
            self._ops.append(("line", pts, cls, mat, width_m))

    def ring(self, pts, width_m: float, cls: int, mat: int) -> None:
        """A closed outline (a tyre) of a given width in metres."""
        if pts[:, 2].min() >= self.cam.z + NEAR:
            self._ops.append(("ring", pts, cls, mat, width_m))

    def finish(self) -> None:
        """Project everything recorded and fill the maps in the order it was drawn."""
        if not self._ops:
            return
        flat = np.concatenate([op[1].reshape(-1, 3) for op in self._ops])
        projected = self.project(flat)
        depth = flat[:, 2] - self.cam.z
        start = 0
        for kind, pts, cls, mat, value in self._ops:
            stop = start + pts.size // 3
            q = projected[start:stop]
            if kind == "fill":
                for img, v in ((self.label, cls), (self.material, mat), (self.shade, value)):
                    cv2.fillConvexPoly(img, q, v, cv2.LINE_8, _SHIFT)
            elif kind == "many":
                q = list(q.reshape(pts.shape[0], pts.shape[1], 2))
                for img, v in ((self.label, cls), (self.material, mat), (self.shade, value)):
                    cv2.fillPoly(img, q, v, cv2.LINE_8, _SHIFT)
            elif kind == "shadow":
                cv2.fillConvexPoly(self.shade, q, value, cv2.LINE_8, _SHIFT)
            else:
                thickness = max(1, round(self.cam.focal * value / depth[start:stop].mean()))
                for img, v in ((self.label, cls), (self.material, mat), (self.shade, 1.0)):
                    cv2.polylines(img, [q], kind == "ring", v, thickness, cv2.LINE_8, _SHIFT)
            start = stop
        self._ops.clear()

    def box(self, x0, x1, y0, y1, z0, z1, cls, side, end=None, top=None) -> None:
        """The faces of an axis-aligned box that look towards the camera."""
        c = self.cam
        if c.x < x0:
            self.poly(_xface(x0, y0, y1, z0, z1), cls, side, self.face["-x"])
        elif c.x > x1:
            self.poly(_xface(x1, y0, y1, z0, z1), cls, side, self.face["+x"])
        if c.height > y1:
            self.poly(_ground(x0, x1, z0, z1, y1), cls, side if top is None else top, self.face["+y"])
        if c.z < z0:
            self.poly(_zface(z0, x0, x1, y0, y1), cls, side if end is None else end, self.face["-z"])


# ---------------------------------------------------------------- colours and lighting

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


# ---------------------------------------------------------------- world objects

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


@dataclass
class _Vehicle:
    cls: int
    x: float       # centre
    z: float       # near end at t = 0
    speed: float   # m/s along z
    length: float
    width: float
    height: float
    facing: int    # +1: we see its rear (same direction), -1: its front
    body: int
    glass: int
    tyre: int
    lamp: int
    plate: int
    extra: int     # cargo box / destination display

    def near(self, t):
        return self.z + self.speed * t

    def extent(self, t):
        return self.x - self.width / 2, self.x + self.width / 2, self.near(t), self.near(t) + self.length

    def draw(self, p: _Painter, t: float) -> None:
        z0 = self.near(t)
        x0, x1 = self.x - self.width / 2, self.x + self.width / 2
        p.shadow(_ground(x0 - 0.15, x1 + 0.15, z0 - 0.1, z0 + self.length + 0.1), 0.45)
        if p.pixels(self.width, z0) < 6:  # a few pixels across: details would not show
            p.box(x0, x1, 0.3, self.height, z0, z0 + self.length, self.cls, self.body)
            return
        getattr(self, "_draw_" + CLASSES[self.cls])(p, x0, x1, z0, z0 + self.length)

    def _side_plane(self, p, x0, x1):
        if p.cam.x < x0:
            return x0 - 0.02
        if p.cam.x > x1:
            return x1 + 0.02
        return None

    def _tyres_under(self, p, x0, x1, z, r):
        """The near axle's tyres, seen under the bumper; drawn before the body."""
        for xa, xb in ((x0 + 0.08, x0 + 0.45), (x1 - 0.45, x1 - 0.08)):
            p.poly(_zface(z, xa, xb, 0, 2 * r), self.cls, self.tyre)

    def _side_wheels(self, p, x0, x1, centres, r):
        side = self._side_plane(p, x0, x1)
        for zc in centres if side is not None else ():
            p.poly(_disc(side, r, zc, r, along=True), self.cls, self.tyre)
            p.poly(_disc(side, r, zc, 0.5 * r, along=True), self.cls, self.plate)

    def _lamps(self, p, x0, x1, z0, y0, y1):
        p.poly(_zface(z0 - 0.01, x0 + 0.06, x0 + 0.38, y0, y1), self.cls, self.lamp)
        p.poly(_zface(z0 - 0.01, x1 - 0.38, x1 - 0.06, y0, y1), self.cls, self.lamp)

    def _draw_car(self, p, x0, x1, z0, z1):
        belt = 0.62 * self.height
        self._tyres_under(p, x0, x1, z0 + 0.5, 0.32)
        p.box(x0, x1, 0.28, belt, z0, z1, CAR, self.body)
        self._side_wheels(p, x0, x1, (z0 + 0.8, z1 - 0.8), 0.32)
        cz0, cz1 = (z0 + 0.9, z1 - 1.3) if self.facing > 0 else (z0 + 1.3, z1 - 0.9)
        p.box(x0 + 0.1, x1 - 0.1, belt, self.height, cz0, cz1, CAR, self.glass, top=self.body)
        self._lamps(p, x0, x1, z0, belt - 0.2, belt - 0.06)
        p.poly(_zface(z0 - 0.01, self.x - 0.26, self.x + 0.26, 0.38, 0.5), CAR, self.plate)

    def _draw_truck(self, p, x0, x1, z0, z1):
        cab = 2.2
        self._tyres_under(p, x0, x1, z0 + 0.6, 0.5)
        p.box(x0 + 0.3, x1 - 0.3, 0.45, 1.05, z0 + 0.2, z1 - 0.2, TRUCK, self.tyre)
        cab_part = (x0 + 0.05, x1 - 0.05, 0.45, min(2.9, self.height), z1 - cab, z1)
        cargo_part = (x0, x1, 1.05, self.height, z0, z1 - cab - 0.3)
        if self.facing < 0:
            cab_part = cab_part[:4] + (z0, z0 + cab)
            cargo_part = cargo_part[:4] + (z0 + cab + 0.3, z1)
        for part in (cab_part, cargo_part) if self.facing > 0 else (cargo_part, cab_part):
            p.box(*part, TRUCK, self.body if part is cab_part else self.extra)
        self._side_wheels(p, x0, x1, (z0 + 1.0, z1 - 1.2) if self.facing > 0 else (z0 + 1.2, z1 - 1.0), 0.5)
        if self.facing < 0:
            p.poly(_zface(z0 - 0.01, x0 + 0.2, x1 - 0.2, 1.6, 2.6), TRUCK, self.glass)
        self._lamps(p, x0, x1, z0, 0.7, 0.95)

    def _draw_bus(self, p, x0, x1, z0, z1):
        self._tyres_under(p, x0, x1, z0 + 2.1, 0.5)
        p.box(x0, x1, 0.3, self.height, z0, z1, self.cls, self.body)
        self._side_wheels(p, x0, x1, (z0 + 2.6, z1 - 3.0), 0.5)
        side = self._side_plane(p, x0, x1)
        if side is not None:
            p.poly(_xface(side, 1.2, self.height - 0.45, z0 + 0.6, z1 - 0.6), self.cls, self.glass)
        low = 0.9 if self.facing < 0 else 1.5
        p.poly(_zface(z0 - 0.01, x0 + 0.15, x1 - 0.15, low, self.height - 0.4), self.cls, self.glass)
        p.poly(_zface(z0 - 0.02, x0 + 0.4, x1 - 0.4, self.height - 0.38, self.height - 0.1), self.cls, self.extra)
        self._lamps(p, x0, x1, z0, 0.5, 0.8)

    def _draw_train(self, p, x0, x1, z0, z1):
        self._draw_bus(p, x0, x1, z0, z1)
        mid = 0.5 * (z0 + z1)
        top = self.height
        for dz in (-0.9, 0.9):
            p.line((self.x, top, mid), (self.x, top + 1.1, mid + dz), 0.06, TRAIN, self.tyre)
        p.line((self.x - 0.8, top + 1.1, mid), (self.x + 0.8, top + 1.1, mid), 0.06, TRAIN, self.tyre)


def _person_parts(h: float, phase: float):
    """A standing figure facing the camera: (material key, 2-D polygon in metres) per part."""
    swing = 0.05 * h * math.sin(phase)
    parts = [
        ("legs", [(-0.095 * h, 0.52 * h), (-0.005 * h, 0.52 * h), (-0.03 * h - swing, 0), (-0.1 * h - swing, 0)]),
        ("legs", [(0.005 * h, 0.52 * h), (0.095 * h, 0.52 * h), (0.1 * h + swing, 0), (0.03 * h + swing, 0)]),
        ("top", [(-0.165 * h, 0.8 * h), (-0.11 * h, 0.8 * h),
                 (-0.12 * h + swing, 0.46 * h), (-0.165 * h + swing, 0.46 * h)]),
        ("top", [(0.11 * h, 0.8 * h), (0.165 * h, 0.8 * h),
                 (0.165 * h - swing, 0.46 * h), (0.12 * h - swing, 0.46 * h)]),
        ("top", [(-0.11 * h, 0.48 * h), (0.11 * h, 0.48 * h), (0.13 * h, 0.82 * h), (-0.13 * h, 0.82 * h)]),
    ]
    return parts


@dataclass
class _Person:
    x: float
    z: float
    vx: float
    vz: float
    height: float
    back: bool
    mats: dict  # top, legs, skin, hair
    phase: float

    def near(self, t):
        return self.z + self.vz * t

    def extent(self, t):
        x = self.x + self.vx * t
        return x - 0.2 * self.height, x + 0.2 * self.height, self.near(t), self.near(t)

    def draw(self, p: _Painter, t: float) -> None:
        x, z = self.x + self.vx * t, self.near(t)
        moving = abs(self.vx) + abs(self.vz) > 0
        h = self.height
        if p.pixels(h, z) < 8:  # a few pixels tall: a silhouette is all that would show
            p.poly(_zface(z, x - 0.13 * h, x + 0.13 * h, 0, 0.95 * h), PERSON, self.mats["top"])
            return
        p.shadow(_ground(x - 0.3, x + 0.3, z - 0.25, z + 0.25), 0.6)
        for name, pts in _person_parts(h, self.phase + (7.0 * t if moving else 0.0)):
            p.poly(np.array([(x + a, b, z) for a, b in pts]), PERSON, self.mats[name])
        p.poly(_disc(x, 0.895 * h, z, 0.065 * h, along=False), PERSON, self.mats["hair"])
        if not self.back:  # a face under the hair
            p.poly(_disc(x, 0.885 * h, z, 0.055 * h, along=False), PERSON, self.mats["skin"])


@dataclass
class _TwoWheeler:
    """A bicycle or motorcycle, ridden along the road or parked side-on, optionally with a rider."""
    cls: int       # BICYCLE or MOTORCYCLE
    x: float
    z: float       # rear wheel contact point at t = 0
    speed: float
    along: bool    # travelling along the road (seen from behind) or side-on
    ridden: bool
    mats: dict     # frame, tyre, top, legs, helmet

    @property
    def length(self):
        return 1.05 if self.cls == BICYCLE else 1.4

    def near(self, t):
        return self.z + self.speed * t

    def extent(self, t):
        z = self.near(t)
        if self.along:
            return self.x - 0.4, self.x + 0.4, z, z + self.length
        return self.x - 0.3, self.x + self.length + 0.3, z, z

    def _point(self, z, s, y):
        return (self.x, y, z + s) if self.along else (self.x + s, y, z)

    def draw(self, p: _Painter, t: float) -> None:
        z = self.near(t)
        r = 0.34 if self.cls == BICYCLE else 0.32
        wheels = (0.0, self.length)
        p.shadow(_ground(self.x - 0.3, self.x + 0.3 + (0 if self.along else self.length), z - 0.2,
                         z + 0.2 + (self.length if self.along else 0)), 0.6)
        if self.cls == MOTORCYCLE:
            if self.along:
                p.box(self.x - 0.3, self.x + 0.3, 0.35, 0.9, z + 0.1, z + self.length - 0.1, MOTORCYCLE,
                      self.mats["frame"])
                p.poly(_zface(z, self.x - 0.08, self.x + 0.08, 0, 0.4), MOTORCYCLE, self.mats["tyre"])
            for s in wheels:
                cx, cy, cz = self._point(z, s, r)
                p.poly(_disc(cx, cy, cz, r, self.along), MOTORCYCLE, self.mats["tyre"])
            body = [(0.1, 0.45), (0.35, 0.8), (0.7, 0.95), (1.15, 0.95), (1.3, 0.6), (0.9, 0.35), (0.45, 0.35)]
            p.poly(np.array([self._point(z, s, y) for s, y in body]), MOTORCYCLE, self.mats["frame"])
            seat_y = 0.95
        else:
            for s in wheels:
                cx, cy, cz = self._point(z, s, r)
                p.ring(_disc(cx, cy, cz, r, self.along), 0.05, BICYCLE, self.mats["tyre"])
            frame = [((0.42, 0.3), (0.32, 0.88)), ((0.32, 0.88), (0.95, 0.85)), ((0.42, 0.3), (0.92, 0.74)),
                     ((0.42, 0.3), (0.0, r)), ((0.32, 0.88), (0.0, r)), ((0.95, 0.85), (self.length, r)),
                     ((0.9, 1.0), (0.95, 0.85))]
            for (s0, y0), (s1, y1) in frame:
                p.line(self._point(z, s0, y0), self._point(z, s1, y1), 0.045, BICYCLE, self.mats["frame"])
            seat_y = 0.88
        if self.ridden:
            self._draw_rider(p, z, seat_y)

    def _draw_rider(self, p, z, seat_y):
        m = self.mats
        if self.along:  # seen from behind: a back, a helmet and legs either side of the frame
            zr = z + 0.35 * self.length
            x = self.x
            p.poly(np.array([(x - 0.1, seat_y + 0.55, zr), (x - 0.14, seat_y - 0.3, zr), (x - 0.06, seat_y - 0.65, zr),
                             (x - 0.02, seat_y, zr)]), RIDER, m["legs"])
            p.poly(np.array([(x + 0.1, seat_y + 0.55, zr), (x + 0.14, seat_y - 0.3, zr), (x + 0.06, seat_y - 0.65, zr),
                             (x + 0.02, seat_y, zr)]), RIDER, m["legs"])
            p.poly(_zface(zr, x - 0.2, x + 0.2, seat_y, seat_y + 0.62), RIDER, m["top"])
            p.poly(_disc(x, seat_y + 0.75, zr, 0.13, along=False), RIDER, m["helmet"])
            return
        def pt(s, y):
            return self._point(z, s, y)

        p.line(pt(0.3, seat_y), pt(0.55, seat_y - 0.2), 0.14, RIDER, m["legs"])
        p.line(pt(0.55, seat_y - 0.2), pt(0.45, 0.3), 0.12, RIDER, m["legs"])
        p.line(pt(0.28, seat_y + 0.05), pt(0.58, seat_y + 0.6), 0.32, RIDER, m["top"])
        p.line(pt(0.58, seat_y + 0.55), pt(0.9 if self.cls == BICYCLE else 1.05, seat_y + 0.12), 0.09, RIDER, m["top"])
        cx, cy, cz = pt(0.66, seat_y + 0.8)
        p.poly(_disc(cx, cy, cz, 0.13, along=self.along), RIDER, m["helmet"])


@dataclass
class _Pole:
    x: float
    z: float
    side: int      # +1 right of the road, -1 left
    kind: str      # lamp | sign | light | mast
    height: float
    metal: int
    head: int      # lamp head, sign face or light housing
    accent: int    # sign rim / symbol, or the lit lamp of a traffic light
    shape: str = "circle"
    reach: float = 0.0  # how far a mast arm reaches over the road
    lit: int = 0   # which lamp of a traffic light is on: 0 red (top), 1 amber, 2 green

    def near(self, t):
        return self.z

    def extent(self, t):
        tip = self.x - self.side * (self.reach if self.kind == "mast" else 2.0)
        return min(self.x, tip) - 0.5, max(self.x, tip) + 0.5, self.z, self.z

    def draw(self, p: _Painter, t: float) -> None:
        x, z, h = self.x, self.z, self.height
        p.line((x, 0, z), (x, h, z), 0.16, POLE, self.metal)
        if self.kind == "lamp":
            tip = x - self.side * 1.6
            p.line((x, h, z), (tip, h + 0.25, z), 0.1, POLE, self.metal)
            p.poly(_zface(z - 0.05, tip - 0.35, tip + 0.35, h + 0.05, h + 0.3), POLE, self.head)
        elif self.kind == "sign":
            self._sign(p, x, h - 0.35, z - 0.05)
        elif self.kind == "light":
            self._light(p, x, h - 1.0, z - 0.05)
        else:
            tip = x - self.side * self.reach
            p.line((x, h, z), (tip, h, z), 0.14, POLE, self.metal)
            for frac in (0.55, 0.95):
                self._light(p, x - self.side * self.reach * frac, h - 1.05, z - 0.05)

    def _sign(self, p, x, y, z):
        r = 0.33
        if self.shape == "circle":
            p.poly(_disc(x, y, z, r, along=False), SIGN, self.accent)
            p.poly(_disc(x, y, z - 0.01, 0.72 * r, along=False), SIGN, self.head)
        elif self.shape == "triangle":
            p.poly(np.array([(x - r, y - 0.6 * r, z), (x + r, y - 0.6 * r, z), (x, y + 1.1 * r, z)]), SIGN, self.accent)
            p.poly(np.array([(x - 0.6 * r, y - 0.4 * r, z - 0.01), (x + 0.6 * r, y - 0.4 * r, z - 0.01),
                             (x, y + 0.6 * r, z - 0.01)]), SIGN, self.head)
        elif self.shape == "diamond":
            p.poly(np.array([(x - r, y, z), (x, y - r, z), (x + r, y, z), (x, y + r, z)]), SIGN, self.head)
        else:
            p.poly(_zface(z, x - 1.3 * r, x + 1.3 * r, y - r, y + r), SIGN, self.head)
            p.poly(_zface(z - 0.01, x - 0.9 * r, x + 0.9 * r, y - 0.3 * r, y + 0.3 * r), SIGN, self.accent)

    def _light(self, p, x, y, z):
        p.poly(_zface(z, x - 0.17, x + 0.17, y, y + 0.95), LIGHT, self.head)
        for i in range(3):
            yc = y + 0.8 - 0.3 * i
            p.poly(_disc(x, yc, z - 0.01, 0.1, along=False), LIGHT, self.accent if i == self.lit else self.metal)


@dataclass
class _Tree:
    x: float
    z: float
    trunk: float
    blobs: list  # (dx, dy, r)
    bark: int
    leaves: tuple

    def near(self, t):
        return self.z

    def extent(self, t):
        reach = max(abs(dx) + r for dx, _, r in self.blobs)
        return self.x - reach, self.x + reach, self.z, self.z

    def draw(self, p: _Painter, t: float) -> None:
        p.line((self.x, 0, self.z), (self.x, self.trunk + 0.5, self.z), 0.3, VEGETATION, self.bark)
        blobs = self.blobs if p.pixels(self.blobs[0][2], self.z) > 3 else self.blobs[:1]
        for i, (dx, dy, r) in enumerate(blobs):
            p.poly(_disc(self.x + dx, self.trunk + dy, self.z - 0.01 * i, r, along=False, ry=0.85 * r),
                   VEGETATION, self.leaves[i % len(self.leaves)])


@dataclass
class _Block:
    """A frontage element beside the road: building, wall, fence or hedge, facing the road."""
    cls: int
    x_in: float     # |x| of the face towards the road
    side: int
    z0: float
    z1: float
    height: float
    depth: float
    mat: int
    trim: int = 0
    glass: int = 0
    windows: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 3)))
    front_windows: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 3)))
    lit: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 3)))
    lit_mat: int = 0
    shops: list = field(default_factory=list)

    def near(self, t):
        return self.z0

    def extent(self, t):
        a, b = sorted((self.side * self.x_in, self.side * (self.x_in + self.depth)))
        return a, b, self.z0, self.z1

    def draw(self, p: _Painter, t: float) -> None:
        a, b = sorted((self.side * self.x_in, self.side * (self.x_in + self.depth)))
        p.box(a, b, 0, self.height, self.z0, self.z1, self.cls, self.mat, top=self.trim or self.mat)
        face = self.side * self.x_in - self.side * 0.03
        if self.cls == FENCE:
            for zp in np.arange(self.z0, self.z1, 2.5):
                p.line((face, 0, zp), (face, self.height + 0.1, zp), 0.08, FENCE, self.trim)
            return
        if self.cls != BUILDING:
            return
        facing = p.face["-x" if self.side > 0 else "+x"]
        p.polys(self.windows, BUILDING, self.glass, facing)
        p.polys(self.lit, BUILDING, self.lit_mat)
        if self.trim:  # a cornice
            p.poly(_xface(face, self.height - 0.6, self.height, self.z0, self.z1), BUILDING, self.trim, facing)
        for z0, z1, mat in self.shops:
            p.poly(_xface(face - self.side * 0.01, 0.3, 2.6, z0, z1), BUILDING, mat)
        if p.cam.z < self.z0:
            p.polys(self.front_windows, BUILDING, self.glass, p.face["-z"])


def _window_grid(rng, side, x_face, z0, z1, height, front: bool, depth: float):
    """Window quads on a facade plane (x = x_face) or, for `front`, on the end face at z0."""
    floor = rng.uniform(2.9, 3.6)
    spacing = rng.uniform(2.2, 3.8)
    win_w, win_h = rng.uniform(0.9, 0.75 * spacing), rng.uniform(1.2, 0.6 * floor + 0.6)
    span = (0.0, depth) if front else (z0, z1)
    cols = np.arange(span[0] + 0.8, span[1] - win_w - 0.4, spacing)
    rows = np.arange(floor + 0.8, height - win_h - 0.7, floor)
    if not len(cols) or not len(rows):
        return np.zeros((0, 4, 3))
    c, r = np.meshgrid(cols, rows)
    c, r = c.ravel(), r.ravel()
    quads = np.zeros((len(c), 4, 3))
    corners = ((0, 0), (0, 1), (1, 1), (1, 0))
    for k, (du, dv) in enumerate(corners):
        u, v = c + du * win_w, r + dv * win_h
        if front:
            quads[:, k] = np.stack([side * (x_face + u), v, np.full_like(u, z0 - 0.02)], axis=1)
        else:
            quads[:, k] = np.stack([np.full_like(u, side * x_face - side * 0.04), v, u], axis=1)
    return quads


@dataclass
class _World:
    height: int
    width: int
    cam: _Camera
    light: _Light
    mats: _Materials
    textures: np.ndarray
    ground: list       # callables (painter) drawing the ground layer, in order
    background: list   # far skyline, drawn before the ground features
    outer: list        # things behind the frontage line
    frontage: list     # walls, fences, hedges, buildings facing the road
    corridor: list     # everything between the frontage lines: traffic, people, poles, trees
    ego_speed: float
    terrain: int        # material of the ground nothing else covers
    sky: np.ndarray = None
    vignette: np.ndarray = None
    gamma_lut: np.ndarray = None


# ---------------------------------------------------------------- building a street

class _StreetBuilder:
    """Samples one street: layout, frontage per side, traffic, people, street furniture."""

    def __init__(self, rng, height: int, width: int, ego_speed: float, duration: float):
        self.rng = rng
        self.height, self.width = height, width
        self.ego, self.duration = ego_speed, duration
        self.mats = _Materials()
        self.light = _lighting(rng)
        self.ground: list = []
        self.background: list = []
        self.outer: list = []
        self.frontage: list = []
        self.corridor: list = []
        self.foliage: list = []
        self.bark: list = []

    def span(self, speed: float = 0.0) -> tuple[float, float]:
        """World z range whose objects can come into view during the drive, for a given speed."""
        rel = (speed - self.ego) * self.duration
        return -BEHIND - max(0.0, rel), VIEW + max(0.0, -rel)

    def build(self) -> _World:
        rng = self.rng
        lane = rng.uniform(2.9, 3.6)
        self.lane = lane
        self.n_right = int(rng.choice([1, 1, 2, 2, 3]))
        self.n_left = int(rng.choice([0, 1, 1, 2]))
        self.parking = {1: rng.random() < 0.55, -1: rng.random() < 0.45}
        self.edge = {1: self.n_right * lane + (2.3 if self.parking[1] else 0.4),
                     -1: self.n_left * lane + (2.3 if self.parking[-1] else 0.4)}
        self.walk = {s: rng.uniform(1.8, 5.0) for s in (1, -1)}
        # A grass strip between kerb and footway on some wide sidewalks.
        self.strip = {s: rng.uniform(0.8, 2.0) if self.walk[s] > 3.2 and rng.random() < 0.45 else 0.0 for s in (1, -1)}
        cam_lane = int(rng.integers(self.n_right))
        self.cam = _Camera(focal=self.width * rng.uniform(0.8, 1.15), cx=self.width * (0.5 + rng.uniform(-0.05, 0.05)),
                           horizon=self.height * rng.uniform(0.36, 0.5), height=rng.uniform(1.25, 1.7),
                           x=(cam_lane + 0.5) * lane + rng.uniform(-0.3, 0.3))
        self.cam_lane = cam_lane
        self.urban = rng.uniform(0, 1)
        self.streets = {1: [], -1: []}
        for side in (1, -1):
            self._frontage(side)
        self._skyline()
        self._ground_layer()
        self._traffic()
        self._people()
        self._furniture()
        world = _World(self.height, self.width, self.cam, self.light, self.mats,
                       _textures(rng, self.height, self.width), self.ground, self.background,
                       self.outer, self.frontage, self.corridor, self.ego,
                       self.mats.add(_grass(rng), BLOTCH, 0.3))
        world.sky, world.vignette = self._sky_and_vignette(rng)
        levels = np.arange(256) / 255.0
        world.gamma_lut = np.rint(255 * levels ** self.light.gamma).astype(np.uint8)
        return world

    # ---- frontage and background
    def _frontage(self, side: int) -> None:
        rng, m = self.rng, self.mats
        lo, hi = self.span()
        p_building = 0.25 + 0.45 * self.urban
        weights = np.array([p_building, 0.14, 0.12, 0.1 * (1.2 - self.urban), 0.08 * (1.2 - self.urban), 0.12])
        kinds = ("building", "wall", "fence", "hedge", "park", "street")
        line = self.edge[side] + self.walk[side]
        z = lo
        while z < hi:
            kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
            if kind == "street" and (z < 6 or self.streets[side] and z - self.streets[side][-1][1] < 25):
                kind = "building"
            if kind == "street":
                length = rng.uniform(7, 14)
                self.streets[side].append((z, z + length))
                z += length
                continue
            length = rng.uniform(8, 35)
            z1 = z + length
            setback = 0.0 if rng.random() < 0.45 else rng.uniform(0.5, 5.0)
            x_in = line + setback
            if setback:
                self._verge(side, line, x_in, z, z1, paved=kind == "building" and rng.random() < 0.4)
            if kind == "building":
                self.frontage.append(self._building(side, x_in, z, z1))
            elif kind == "wall":
                h = rng.uniform(0.8, 3.2)
                wall = m.add(_masonry(rng), int(rng.choice([FINE, BRICK, BLOTCH])), rng.uniform(0.04, 0.15))
                self.frontage.append(_Block(WALL, x_in, side, z, z1, h, 0.3, wall, trim=m.add(_grey(rng, 90, 200))))
                self._behind(side, x_in, z, z1, rng.uniform(3, 12))
            elif kind == "fence":
                if rng.random() < 0.35:
                    plinth = m.add(_masonry(rng), FINE, 0.08)
                    self.frontage.append(_Block(WALL, x_in, side, z, z1, rng.uniform(0.4, 0.8), 0.3, plinth))
                    base = self.frontage[-1].height
                else:
                    base = 0.0
                fence_mat = m.add(_grey(rng, 60, 190) if rng.random() < 0.7 else _jitter(rng, [110, 80, 55]),
                                  rng.choice([VSTRIPE, FINE, HSTRIPE]), rng.uniform(0.15, 0.4))
                self.frontage.append(_Block(FENCE, x_in, side, z, z1, base + rng.uniform(0.9, 2.0), 0.05, fence_mat,
                                            trim=m.add(_grey(rng, 40, 140))))
                self._behind(side, x_in, z, z1, rng.uniform(2, 10))
            elif kind == "hedge":
                self.frontage.append(_Block(VEGETATION, x_in, side, z, z1, rng.uniform(0.8, 2.4), rng.uniform(0.8, 1.5),
                                            m.add(_leaf(rng), BLOTCH, rng.uniform(0.2, 0.4))))
                self._behind(side, x_in, z, z1, rng.uniform(2, 10))
            else:
                self._verge(side, line, x_in + 40, z, z1)
                for _ in range(rng.poisson(length / 8)):
                    self.outer.append(self._tree(side * rng.uniform(x_in + 1, x_in + 30), rng.uniform(z, z1)))
            z = z1

    def _verge(self, side, a, b, z0, z1, paved=False):
        rng = self.rng
        if paved:
            cls, mat = SIDEWALK, self.mats.add(_grey(rng, 90, 190), BRICK, 0.12)
        else:
            cls, mat = TERRAIN, self.mats.add(_grass(rng), BLOTCH, rng.uniform(0.15, 0.35))
        x0, x1 = sorted((side * a, side * b))
        self.ground.append(lambda p: p.poly(_ground(x0, x1, z0, z1, 0.12), cls, mat))

    def _behind(self, side, x_in, z0, z1, gap):
        """What shows over a wall, fence or hedge: a set-back building or trees."""
        rng = self.rng
        if rng.random() < 0.5:
            self.outer.append(self._building(side, x_in + gap, z0 + rng.uniform(0, 3), z1 - rng.uniform(0, 3)))
        else:
            for _ in range(rng.poisson((z1 - z0) / 7) + 1):
                self.outer.append(self._tree(side * rng.uniform(x_in + 1.5, x_in + gap + 4), rng.uniform(z0, z1)))

    def _building(self, side, x_in, z0, z1) -> _Block:
        rng, m = self.rng, self.mats
        height = rng.uniform(5, 14) if rng.random() < 0.4 * (1 - self.urban) else rng.uniform(9, 32)
        depth = rng.uniform(8, 20)
        wall = m.add(_masonry(rng), int(rng.choice([FINE, BRICK, HSTRIPE, BLOTCH, FLAT])), rng.uniform(0.03, 0.14))
        glass = m.add(_jitter(rng, [rng.uniform(30, 110)] * 3 * np.array([0.9, 1.0, 1.15]), 0.1), FINE, 0.05)
        block = _Block(BUILDING, x_in, side, z0, z1, height, depth, wall, trim=m.add(_masonry(rng), FINE, 0.05),
                       glass=glass)
        block.windows = _window_grid(rng, side, x_in, z0, z1, height, front=False, depth=depth)
        block.front_windows = _window_grid(rng, side, x_in, z0, z1, height, front=True, depth=depth)
        if self.light.lamps_on and len(block.windows):
            lit = rng.random(len(block.windows)) < 0.35
            block.lit, block.windows = block.windows[lit], block.windows[~lit]
            block.lit_mat = m.add(_jitter(rng, [255, 210, 130], 0.1), FINE, 0.05, emissive=True)
        if rng.random() < 0.5 * self.urban + 0.1:
            shop = m.add(_jitter(rng, [rng.uniform(40, 140)] * 3, 0.2), FINE, 0.08, emissive=self.light.lamps_on)
            for zs in np.arange(z0 + 1.0, z1 - 4.0, rng.uniform(5, 9)):
                block.shops.append((zs, zs + rng.uniform(2.5, 4.0), shop))
        return block

    def _tree(self, x, z) -> _Tree:
        rng, m = self.rng, self.mats
        r = rng.uniform(1.2, 3.5)
        blobs = [(0.0, r, r)] + [(rng.uniform(-0.7, 0.7) * r, r * rng.uniform(0.6, 1.5), r * rng.uniform(0.5, 0.8))
                                  for _ in range(rng.integers(2, 5))]
        if not self.foliage:  # a handful of leaf and bark materials serve every tree of a street
            self.foliage = [m.add(_leaf(rng), BLOTCH, rng.uniform(0.2, 0.45)) for _ in range(4)]
            self.bark = [m.add(_jitter(rng, [80, 65, 50], 0.2), VSTRIPE, 0.1) for _ in range(2)]
        leaves = tuple(self.foliage[i] for i in rng.choice(len(self.foliage), 2, replace=False))
        return _Tree(x, z, rng.uniform(1.8, 4.0), blobs, self.bark[rng.integers(2)], leaves)

    def _skyline(self) -> None:
        """Far buildings and tree rows beyond the frontage, and sometimes across the road's end."""
        rng, m = self.rng, self.mats
        lo, hi = self.span()
        for side in (1, -1):
            z = lo
            base = self.edge[side] + self.walk[side] + rng.uniform(15, 40)
            while z < hi + 200:
                length = rng.uniform(15, 45)
                if rng.random() < 0.75:
                    block = _Block(BUILDING, base + rng.uniform(0, 15), side, z, z + length, rng.uniform(8, 40),
                                   20.0, m.add(_masonry(rng), FINE, 0.05))
                    self.background.append(block)
                else:
                    for zt in np.arange(z, z + length, rng.uniform(6, 12)):
                        tree = self._tree(side * (base + rng.uniform(0, 10)), zt)
                        tree.blobs = tree.blobs[:2]
                        self.background.append(tree)
                z += length
        self.background.sort(key=lambda o: -o.near(0.0))
        if rng.random() < 0.6:
            z_end = hi + rng.uniform(40, 200)
            x = -120.0
            row = []
            while x < 120:
                width = rng.uniform(10, 35)
                if rng.random() < 0.8:
                    row.append(_EndFacade(x, x + width, z_end, rng.uniform(8, 35), m.add(_masonry(rng), FINE, 0.05)))
                else:
                    row += [self._tree(xt, z_end) for xt in np.arange(x, x + width, 5.0)]
                x += width
            self.background[:0] = row

    # ---- ground
    def _ground_layer(self) -> None:
        rng, m = self.rng, self.mats
        road = m.add(_grey(rng, 55, 150, 0.06), int(rng.choice([FINE, FINE, BLOTCH, BRICK])), rng.uniform(0.05, 0.16))
        patch = m.add(_grey(rng, 50, 150, 0.06), FINE, 0.1)
        paint = m.add(_jitter(rng, [225, 225, 215] if rng.random() < 0.8 else [230, 190, 60], 0.05), FINE, 0.08)
        walk = m.add(_grey(rng, 80, 180, 0.08), int(rng.choice([BRICK, FINE, BLOTCH])), rng.uniform(0.06, 0.2))
        kerb = m.add(_grey(rng, 110, 205, 0.04), FINE, 0.06)
        lo, hi = self.span()
        xl, xr = -self.edge[-1], self.edge[1]
        self.ground.insert(0, lambda p: p.poly(_ground(xl, xr, lo - 10, FAR), ROAD, road))
        for z in rng.uniform(lo, hi, rng.poisson(4)):
            x0 = rng.uniform(xl, xr - 2)
            self.ground.append(lambda p, x0=x0, z=z, w=rng.uniform(1, 3), l=rng.uniform(1, 6):
                               p.poly(_ground(x0, x0 + w, z, z + l), ROAD, patch))
        for side in (1, -1):
            a = self.edge[side]
            b = a + self.walk[side]
            x0, x1 = sorted((side * a, side * b))
            xk = side * a
            cuts = [lo - 10] + [v for street in self.streets[side] for v in street] + [FAR]
            strip = sorted((side * a, side * (a + self.strip[side])))
            grass = self.mats.add(_grass(rng), BLOTCH, rng.uniform(0.15, 0.35))
            for z0, z1 in zip(cuts[::2], cuts[1::2]):
                self.ground.append(lambda p, x0=x0, x1=x1, z0=z0, z1=z1:
                                   p.poly(_ground(x0, x1, z0, z1, 0.12), SIDEWALK, walk))
                if self.strip[side]:
                    self.ground.append(lambda p, x=strip, z0=z0, z1=z1:
                                       p.poly(_ground(x[0], x[1], z0, z1, 0.12), TERRAIN, grass))
                self.ground.append(lambda p, xk=xk, z0=z0, z1=z1, s=side: p.poly(
                    _xface(xk, 0, 0.12, z0, z1), SIDEWALK, kerb, p.face["-x" if s > 0 else "+x"]))
            for z0, z1 in self.streets[side]:
                far = sorted((side * a, side * 90.0))
                self.ground.append(lambda p, f=far, z0=z0, z1=z1: p.poly(_ground(f[0], f[1], z0, z1), ROAD, road))
                if rng.random() < 0.6:
                    self._crosswalk(paint, xl, xr, z0 - 4.5)
        self._markings(paint, lo, hi)
        if self.light.kind == "sunny":
            self._building_shadows()

    def _markings(self, paint, lo, hi):
        rng = self.rng
        period, dash = rng.uniform(8, 14), rng.uniform(2.5, 4.5)
        width = rng.uniform(0.1, 0.16)
        lines = [(i * self.lane, True) for i in range(1, self.n_right)]
        lines += [(-i * self.lane, True) for i in range(1, self.n_left)]
        if self.n_left:
            lines.append((0.0, rng.random() < 0.5))
        solid = [self.n_right * self.lane, -self.n_left * self.lane] if rng.random() < 0.6 else []
        starts = np.arange(lo - 10 + rng.uniform(0, period), hi + self.ego * self.duration + 250, period)
        quads = []
        for x, dashed in lines:
            if dashed:
                quads += [_ground(x - width / 2, x + width / 2, z, z + dash) for z in starts]
            else:
                solid.append(x)
        batch = np.array(quads).reshape(-1, 4, 3)
        batch[:, :, 1] = 0.005
        self.ground.append(lambda p: p.polys(batch, ROAD, paint))
        for x in solid:
            self.ground.append(lambda p, x=x:
                               p.poly(_ground(x - width / 2, x + width / 2, lo - 10, FAR, 0.005), ROAD, paint))

    def _crosswalk(self, paint, xl, xr, z):
        stripes = np.array([_ground(x, x + 0.5, z, z + 3.5, 0.005) for x in np.arange(xl + 0.3, xr - 0.5, 1.0)])
        if len(stripes):
            self.ground.append(lambda p: p.polys(stripes, ROAD, paint))

    def _building_shadows(self) -> None:
        """Sunlit scenes: buildings on the sun side cast shadows over the sidewalk and road."""
        rng = self.rng
        side = self.light.sun_side
        reach = rng.uniform(0.3, 1.2)
        skew = rng.uniform(-0.5, 0.5)
        factor = rng.uniform(0.45, 0.7)
        for block in self.frontage:
            if block.cls == BUILDING and block.side == side:
                a = side * block.x_in
                b = a - side * min(block.height * reach, self.edge[side] + self.edge[-side])
                pts = [(a, 0.13, block.z0), (b, 0.13, block.z0 + block.height * skew),
                       (b, 0.13, block.z1 + block.height * skew), (a, 0.13, block.z1)]
                self.ground.append(lambda p, pts=np.array(pts): p.shadow(pts, factor))

    # ---- traffic, people, furniture
    def _vehicle(self, cls, x, z, speed, facing) -> _Vehicle:
        rng, m = self.rng, self.mats
        lamps_on = self.light.lamps_on
        if cls == CAR:
            dims = (rng.uniform(3.8, 4.9), rng.uniform(1.65, 1.95), rng.uniform(1.4, 1.65))
            if rng.random() < 0.15:  # vans
                dims = (rng.uniform(4.8, 5.6), 2.0, rng.uniform(1.9, 2.4))
        elif cls == TRUCK:
            dims = (rng.uniform(7, 11), 2.5, rng.uniform(3.2, 3.9))
        elif cls == BUS:
            dims = (rng.uniform(11, 13), 2.55, rng.uniform(3.0, 3.3))
        else:
            dims = (rng.uniform(25, 36), 2.65, rng.uniform(3.3, 3.6))
        liveries = [(210, 40, 30), (240, 200, 40), (230, 230, 230), (40, 90, 170)]  # buses and trams
        body = _paint(rng) if cls in (CAR, TRUCK) else _jitter(rng, liveries[rng.integers(4)], 0.1)
        lamp = [250, 240, 220] if facing < 0 else [210, 20, 20]
        return _Vehicle(cls, x, z, speed, *dims, facing=facing, body=m.add(body, FINE, 0.04),
                        glass=m.add(_jitter(rng, [rng.uniform(25, 90)] * 3, 0.15), FINE, 0.05),
                        tyre=m.add(_grey(rng, 15, 40), FINE, 0.05),
                        lamp=m.add(_jitter(rng, lamp, 0.05), FLAT, 0.0, emissive=lamps_on),
                        plate=m.add(_grey(rng, 150, 230), FINE, 0.05),
                        extra=m.add(_paint(rng), HSTRIPE, 0.05) if cls == TRUCK else m.add(_grey(rng, 20, 60)))

    def _rider_mats(self, cls) -> dict:
        rng, m = self.rng, self.mats
        return {"frame": m.add(_paint(rng) if cls == MOTORCYCLE else _cloth(rng), FINE, 0.05),
                "tyre": m.add(_grey(rng, 15, 45), FINE, 0.05), "top": m.add(_cloth(rng), FINE, 0.08),
                "legs": m.add(_cloth(rng), FINE, 0.08), "helmet": m.add(_cloth(rng), FINE, 0.05)}

    def _traffic(self) -> None:
        rng = self.rng
        lane = self.lane
        tram_lane = None
        if rng.random() < 0.2:  # a tram in one of the lanes, on rails
            choices = [-(i + 0.5) * lane for i in range(self.n_left)] + \
                      [(i + 0.5) * lane for i in range(self.n_right) if i != self.cam_lane]
            if choices:
                tram_lane = choices[rng.integers(len(choices))]
                direction = 1 if tram_lane > 0 else -1
                speed = direction * rng.uniform(4, 9) if rng.random() < 0.7 else 0.0
                lo, hi = self.span(speed)
                z = rng.uniform(max(lo, 8), min(hi, 70))
                self.corridor.append(self._vehicle(TRAIN, tram_lane, z, speed, direction))
                rail = self.mats.add(_grey(rng, 40, 120), FINE, 0.1)
                for dx in (-0.72, 0.72):
                    xr = tram_lane + dx
                    self.ground.append(lambda p, xr=xr:
                                       p.poly(_ground(xr - 0.05, xr + 0.05, -BEHIND - 10, FAR, 0.004), ROAD, rail))
        lanes = [((i + 0.5) * lane, 1) for i in range(self.n_right)]
        lanes += [(-(i + 0.5) * lane, -1) for i in range(self.n_left)]
        density = rng.uniform(0.3, 1.0)
        for index, (x, direction) in enumerate(lanes):
            if x == tram_lane:
                continue
            own = direction > 0 and index == self.cam_lane
            if direction > 0:
                speed = self.ego + rng.uniform(0.2, 1.5) if own else self.ego * rng.uniform(0.85, 1.15)
            else:
                speed = -rng.uniform(7, 13)
            lo, hi = self.span(speed)
            z = max(lo, 7.0 if own else -4.0) + rng.exponential(20 / density)
            while z < hi:
                kind = rng.choice(4, p=[0.86, 0.04, 0.05, 0.05])
                if kind == 3:
                    bike = _TwoWheeler(MOTORCYCLE, x + rng.uniform(-0.4, 0.4), z, speed, True, True,
                                       self._rider_mats(MOTORCYCLE))
                    self.corridor.append(bike)
                    z += bike.length
                else:
                    v = self._vehicle((CAR, TRUCK, BUS)[kind], x + rng.uniform(-0.2, 0.2), z, speed, direction)
                    self.corridor.append(v)
                    z += v.length
                z += rng.uniform(3, 8) + rng.exponential(25 / density)
        for side in (1, -1):
            if self.parking[side]:
                self._parked(side)
        if rng.random() < 0.45:  # cyclists keep to the right edge of the driving lanes
            speed = rng.uniform(3, 6)
            lo, hi = self.span(speed)
            x = self.n_right * lane - 0.6
            for z in rng.uniform(max(lo, 5), min(hi, 60), rng.integers(1, 4)):
                self.corridor.append(_TwoWheeler(BICYCLE, x, z, speed, True, True, self._rider_mats(BICYCLE)))

    def _parked(self, side: int) -> None:
        rng = self.rng
        x = side * (self.edge[side] - 1.15)
        lo, hi = self.span()
        z = lo + rng.uniform(0, 6)
        fill = rng.uniform(0.3, 0.95)
        while z < hi:
            if any(z0 - 6 < z < z1 + 1 for z0, z1 in self.streets[side]):
                z += 2.0
                continue
            if rng.random() < fill:
                if rng.random() < 0.08:
                    for k in range(rng.integers(1, 4)):
                        self.corridor.append(_TwoWheeler(MOTORCYCLE, x - side * 0.7, z + 0.9 * k, 0.0, False, False,
                                                         self._rider_mats(MOTORCYCLE)))
                    z += 3.5
                else:
                    cls = TRUCK if rng.random() < 0.03 else CAR
                    v = self._vehicle(cls, x + side * rng.uniform(-0.15, 0.15), z, 0.0, 1 if rng.random() < 0.8 else -1)
                    self.corridor.append(v)
                    z += v.length
            z += rng.uniform(0.6, 3.0) if rng.random() < 0.8 else rng.uniform(5, 12)

    def _people(self) -> None:
        rng = self.rng
        lo, hi = self.span()
        for side in (1, -1):
            a, b = self.edge[side] + self.strip[side] + 0.4, self.edge[side] + self.walk[side] - 0.3
            count = rng.poisson(rng.uniform(0.5, 6.0) * (hi - lo) / 100)
            for _ in range(count):
                vz = rng.choice([-1, 1]) * rng.uniform(0.8, 1.6) if rng.random() < 0.8 else 0.0
                z = rng.uniform(max(lo, 6.0), hi)
                self.corridor.append(self._person(side * rng.uniform(a, b), z, 0.0, vz, back=vz > 0))
            if rng.random() < 0.3:  # parked bicycles, side-on along the frontage
                z = rng.uniform(6, 60)
                x = side * (self.edge[side] + self.walk[side] - 0.6) - (1.05 if side > 0 else 0.0)
                for k in range(rng.integers(1, 6)):
                    self.corridor.append(_TwoWheeler(BICYCLE, x, z + 0.75 * k, 0.0, False, False,
                                                     self._rider_mats(BICYCLE)))
        for z0, _ in self.streets[1] + self.streets[-1]:
            if rng.random() < 0.4:  # people on the crosswalk before a side street
                for _ in range(rng.integers(1, 4)):
                    vx = rng.choice([-1, 1]) * rng.uniform(0.8, 1.5)
                    x = rng.uniform(-self.edge[-1], self.edge[1])
                    self.corridor.append(self._person(x, z0 - rng.uniform(2.5, 4.5), vx, 0.0, back=False))
            if rng.random() < 0.2:  # a cyclist waiting on the crossing, side-on
                x = rng.uniform(-self.edge[-1], self.edge[1] - 1.1)
                self.corridor.append(_TwoWheeler(BICYCLE, x, z0 - 3.5, 0.0, False, True, self._rider_mats(BICYCLE)))

    def _person(self, x, z, vx, vz, back) -> _Person:
        rng, m = self.rng, self.mats
        skin = _jitter(rng, [[230, 190, 160], [190, 140, 100], [120, 80, 55]][rng.integers(3)], 0.08)
        mats = {"top": m.add(_cloth(rng), FINE, 0.08), "legs": m.add(_cloth(rng), FINE, 0.08),
                "skin": m.add(skin, FINE, 0.04),
                "hair": m.add(_grey(rng, 15, 110) if rng.random() < 0.8 else _cloth(rng), FINE, 0.05)}
        return _Person(x, z, vx, vz, rng.uniform(1.5, 1.95), back, mats, rng.uniform(0, 2 * np.pi))

    def _furniture(self) -> None:
        rng, m = self.rng, self.mats
        lo, hi = self.span()
        metal = m.add(_grey(rng, 50, 170), FINE, 0.05)
        on = self.light.lamps_on
        lamp_head = m.add([255, 235, 190] if on else _grey(rng, 150, 230), FINE, 0.03, emissive=on)
        housing = m.add(_grey(rng, 15, 50), FINE, 0.03)
        lights = [m.add(c, FLAT, 0.0, emissive=True) for c in ([230, 40, 30], [240, 180, 30], [60, 220, 120])]
        red, white, blue, yellow = (m.add(_jitter(rng, c, 0.06), FINE, 0.04) for c in
                                    ([200, 30, 30], [235, 235, 235], [30, 70, 170], [240, 200, 30]))
        for side in (1, -1):
            x = side * (self.edge[side] + 0.35)
            spacing = rng.uniform(25, 50)
            for z in np.arange(lo + rng.uniform(0, spacing), hi, spacing):
                self.corridor.append(_Pole(x, z, side, "lamp", rng.uniform(6, 9), metal, lamp_head, metal))
            for z in rng.uniform(max(lo, 4), hi, rng.poisson(rng.uniform(1, 5) * (hi - lo) / 100)):
                shape = str(rng.choice(["circle", "triangle", "rect", "diamond"]))
                face, accent = {"circle": (white, red), "triangle": (white, red), "rect": (blue, white),
                                "diamond": (yellow, white)}[shape]
                self.corridor.append(_Pole(x, z, side, "sign", rng.uniform(2.3, 3.2), metal, face, accent, shape))
            if rng.random() < 0.5:  # an avenue of trees along the kerb
                spacing = rng.uniform(7, 15)
                x_tree = side * (self.edge[side] + min(1.2, self.walk[side] / 2))
                for z in np.arange(lo + rng.uniform(0, spacing), hi, spacing):
                    self.corridor.append(self._tree(x_tree, z))
        junctions = [z for s in (1, -1) for z, _ in self.streets[s]]
        if rng.random() < 0.5:
            junctions.append(rng.uniform(15, 70))
        for z in junctions:
            if rng.random() < 0.7:
                lit = int(rng.integers(3))
                self.corridor.append(_Pole(self.edge[1] + 0.4, z - 5, 1, "mast", rng.uniform(5.2, 6.5), metal, housing,
                                           lights[lit], reach=rng.uniform(3, max(3.5, self.edge[1] - 1.0)), lit=lit))
                if rng.random() < 0.6:
                    self.corridor.append(_Pole(-self.edge[-1] - 0.4, z - 5, -1, "light", 3.4, metal, housing,
                                               lights[lit], lit=lit))
            if rng.random() < 0.5:
                lit = int(rng.integers(3))
                self.corridor.append(_Pole(self.edge[1] + 0.4, z + 1, 1, "light", 3.4, metal, housing, lights[lit],
                                           lit=lit))

    def _sky_and_vignette(self, rng):
        h, w = self.height, self.width
        light = self.light
        rows = np.arange(h, dtype=np.float32)[:, None, None]
        g = np.clip(1 - rows / max(self.cam.horizon, 1.0), 0, 1) ** 0.7
        sky = light.sky_horizon * (1 - g) + light.sky_top * g
        # Clouds stretched sideways, thinning towards the horizon.
        clouds = cv2.resize(rng.standard_normal((max(2, h // 5), max(2, w // 40)), dtype=np.float32), (w, h),
                            interpolation=cv2.INTER_CUBIC)
        cover = (np.clip(clouds - 0.2, 0, 1)[..., None] * g) * np.float32(light.clouds)
        cloud_colour = {"night": [40, 40, 45], "dusk": [235, 190, 165]}.get(light.kind, [235, 235, 238])
        cloud_colour = np.array(cloud_colour, np.float32) * np.float32(light.sky_horizon.mean() / 200)
        sky = sky * (1 - cover) + cloud_colour * cover
        ys = ((np.arange(h, dtype=np.float32) - h / 2) / (h / 2)) ** 2
        xs = ((np.arange(w, dtype=np.float32) - w / 2) / (w / 2)) ** 2
        vignette = 1 - np.float32(light.vignette / 2) * (ys[:, None] + xs[None, :])
        return sky.astype(np.float32), vignette


@dataclass
class _EndFacade:
    """A building across the far end of the road, facing the camera."""
    x0: float
    x1: float
    z: float
    height: float
    mat: int

    def near(self, t):
        return self.z

    def extent(self, t):
        return self.x0, self.x1, self.z, self.z

    def draw(self, p: _Painter, t: float) -> None:
        p.poly(_zface(self.z, self.x0, self.x1, 0, self.height), BUILDING, self.mat, p.face["-z"])


# ---------------------------------------------------------------- rendering

def _render(world: _World, t: float, rng) -> tuple[np.ndarray, np.ndarray]:
    cam = world.cam
    cam.z = world.ego_speed * t
    p = _Painter(cam, world.height, world.width, world.light.face)
    horizon = np.array([(-1e4, cam.horizon), (1e4, cam.horizon), (1e4, 1e4), (-1e4, 1e4)])
    below = np.rint(horizon * (1 << _SHIFT)).astype(np.int32)
    cv2.fillConvexPoly(p.label, below, TERRAIN, cv2.LINE_8, _SHIFT)
    cv2.fillConvexPoly(p.material, below, world.terrain, cv2.LINE_8, _SHIFT)
    left, right = -cam.cx / cam.focal, (world.width - cam.cx) / cam.focal

    def in_view(obj) -> bool:
        """Whether any part of the object's footprint falls between the image's left and right edges."""
        x0, x1, z0, z1 = obj.extent(t)
        z0, z1 = max(z0 - cam.z, NEAR), z1 - cam.z
        if z1 < NEAR:
            return False
        return max((x1 - cam.x) / z0, (x1 - cam.x) / z1) >= left and min((x0 - cam.x) / z0, (x0 - cam.x) / z1) <= right

    for obj in filter(in_view, world.background):
        obj.draw(p, t)
    for draw in world.ground:
        draw(p)
    for layer in (world.outer, world.frontage, world.corridor):
        for obj in sorted(filter(in_view, layer), key=lambda o: -o.near(t)):
            obj.draw(p, t)
    p.finish()
    return _compose(world, p, rng), p.label


def _compose(world: _World, p: _Painter, rng) -> np.ndarray:
    mats, light = world.mats, world.light
    colour = np.array(mats.colour, np.float32)
    kind = np.array(mats.kind, np.intp)
    amp = np.array(mats.amp, np.float32)
    emissive = np.array(mats.emissive, bool)
    m = p.material
    rgb = np.take(colour, m, axis=0)
    np.copyto(rgb, world.sky, where=(m == 0)[..., None])
    tex = np.take_along_axis(world.textures, np.take(kind, m)[None], axis=0)[0]
    # Lamps and the sky keep their own brightness; everything else takes shade and exposure.
    light_scale = np.where(np.take(emissive, m), np.float32(1), p.shade * np.float32(light.gain))
    rgb *= ((1 + np.take(amp, m) * tex) * light_scale * world.vignette)[..., None]
    rgb *= light.tint
    rgb = cv2.GaussianBlur(rgb, (0, 0), light.blur)
    rgb += (rng.standard_normal(m.shape, dtype=np.float32) * np.float32(light.noise))[..., None]
    out = np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)
    return cv2.LUT(out, world.gamma_lut)


# ---------------------------------------------------------------- public API

def generate_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (RGB uint8 HxWx3, train ids uint8 HxW), fully determined by `rng`."""
    world = _StreetBuilder(rng, height, width, ego_speed=0.0, duration=0.0).build()
    return _render(world, 0.0, rng)


def render_video_frames(seed: int, height: int, width: int, n_frames: int,
                        fps: float = 15.0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frames of one drive down one street: (RGB, train ids) per frame, camera moving forward."""
    rng = np.random.default_rng([seed, _VIDEO_CODE])
    ego = float(rng.uniform(7, 11))
    world = _StreetBuilder(rng, height, width, ego_speed=ego, duration=n_frames / fps).build()
    for index in range(n_frames):
        yield _render(world, index / fps, np.random.default_rng([seed, _VIDEO_CODE, index]))


def sample_stem(split: str, index: int) -> tuple[str, str]:
    """(city, file stem) of image `index` of a split; independent of how many images there are."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{_FRAME:06d}"


def _check(params: SyntheticParams) -> None:
    key = "data.synthetic."
    for name in ("num_train", "num_val", "video_frames"):
        if getattr(params, name) < 1:
            raise SyntheticDataError(f"params: {key}{name} must be >= 1, got {getattr(params, name)}")
    for name, least in (("height", 32), ("width", 64)):
        value = getattr(params, name)
        if value < least or value % 2:
            raise SyntheticDataError(f"params: {key}{name} must be an even number >= {least} (video encoders need "
                                     f"even sizes), got {value}")
    if params.seed < 0:
        raise SyntheticDataError(f"params: {key}seed must be >= 0, got {params.seed}")
    if params.video_fps <= 0:
        raise SyntheticDataError(f"params: {key}video_fps must be > 0, got {params.video_fps}")


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}; check that the disk has space and the folder is writable")


def _write_sample(job: tuple[str, str, int, int, int, int]) -> None:
    root, split, index, seed, height, width = job
    rgb, train_ids = generate_scene(np.random.default_rng([seed, _SPLIT_CODE[split], index]), height, width)
    city, stem = sample_stem(split, index)
    image_dir = Path(root) / "leftImg8bit" / split / city
    label_dir = Path(root) / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    _write_png(image_dir / f"{stem}_leftImg8bit.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    _write_png(label_dir / f"{stem}_gtFine_labelIds.png", train_ids_to_label_ids(train_ids))


def _replace_dir(source: Path, target: Path) -> None:
    """Move a finished folder into place; the old one is removed only once the new one is there."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=target.name + ".old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old)


def write_dataset(root: str | Path, params: SyntheticParams) -> dict:
    """Write train and val images, labelIds and the dashcam video under `root`, all or nothing."""
    _check(params)
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        jobs = [(str(staging), split, index, params.seed, params.height, params.width)
                for split, count in (("train", params.num_train), ("val", params.num_val)) for index in range(count)]
        workers = min(os.cpu_count() or 1, 4)
        if len(jobs) >= _POOL_MIN and workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_write_sample, jobs, chunksize=8))
        else:
            for job in jobs:
                _write_sample(job)
        write_video(staging, params)
        _replace_dir(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"train": params.num_train, "val": params.num_val, "video_frames": params.video_frames}


def write_video(root: str | Path, params: SyntheticParams) -> Path:
    """Write <root>/video/dashcam.mp4 and its per-frame train-id PNGs under <root>/video/labels/."""
    _check(params)
    video_dir = Path(root) / "video"
    video_dir.mkdir(parents=True, exist_ok=True)
    target = video_dir / "dashcam.mp4"
    staging = Path(tempfile.mkdtemp(prefix="video.tmp-", dir=video_dir))
    try:
        labels = staging / "labels"
        labels.mkdir()
        partial = staging / "dashcam.mp4"
        writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), float(params.video_fps),
                                 (params.width, params.height))
        if not writer.isOpened():
            raise OSError("OpenCV cannot open an mp4v video writer; install an OpenCV build with video "
                          "support (opencv-python-headless)")
        try:
            frames = render_video_frames(params.seed, params.height, params.width, params.video_frames,
                                         params.video_fps)
            for index, (rgb, train_ids) in enumerate(frames):
                writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                _write_png(labels / f"{index:06d}.png", train_ids)
        finally:
            writer.release()
        _replace_dir(labels, video_dir / "labels")
        os.replace(partial, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
