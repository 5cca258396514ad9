"""Sampling one street and rendering it at a time t: the scene and the video share this."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from training.data.synthetic.camera import (
    BEHIND, BICYCLE, BUILDING, BUS, CAR, FAR, FENCE, MOTORCYCLE, NEAR, ROAD, SIDEWALK, TERRAIN, TRAIN, TRUCK,
    VEGETATION, VIEW, WALL, _Camera, _ground, _Painter, _SHIFT, _xface, _zface,
)
from training.data.synthetic.materials import (
    BLOTCH, BRICK, FINE, FLAT, HSTRIPE, VSTRIPE, _cloth, _grass, _grey, _jitter, _leaf, _Light, _lighting,
    _masonry, _Materials, _paint, _textures,
)
from training.data.synthetic.objects import _Block, _Person, _Pole, _Tree, _TwoWheeler, _Vehicle, _window_grid

_VIDEO_CODE = 2


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
