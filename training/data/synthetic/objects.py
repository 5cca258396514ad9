"""Things placed in a street: vehicles, people, two-wheelers, poles, trees, building blocks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from training.data.cityscapes import CLASSES
from training.data.synthetic.camera import (
    BICYCLE, BUILDING, CAR, FENCE, LIGHT, MOTORCYCLE, PERSON, POLE, RIDER, SIGN, TRAIN, TRUCK, VEGETATION,
    _disc, _ground, _Painter, _xface, _zface,
)


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
