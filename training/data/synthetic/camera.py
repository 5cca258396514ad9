"""The pinhole car camera and the painter that fills label, material and shade maps with one set of
polygons, so ground truth is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from training.data.cityscapes import CLASSES

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
