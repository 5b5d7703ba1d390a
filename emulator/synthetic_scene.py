"""A small textured scene with known geometry, rendered to images or a video with known cameras.

Ray casting in numpy: a textured ground, two textured walls, three boxes and a sphere, Lambert
shading from a fixed light (appearance does not depend on the view, as 3DGS assumes), 2x
supersampled. The camera orbits the objects. Everything is seeded, so a render is reproducible.

Ground truth is in the convention of `../shared/datasets`: `x_cam = R @ x_world + t`, COLMAP
camera axes (x right, y down, z forward), K in pixels, metres.

    python -m emulator.synthetic_scene OUT_DIR [--frames 90] [--width 480] [--height 360]

writes OUT_DIR/scene.mp4, OUT_DIR/cameras.json (one camera per video frame, named
`{index:06d}`), and OUT_DIR/surface.npy (points on the true surface, for chamfer distances).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EPS = 1e-6
LIGHT_DIR = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])
AMBIENT = 0.4


def _noise_texture(rng: np.random.Generator, h: int, w: int, base_color: Sequence[float]) -> np.ndarray:
    """Multi-octave value noise plus random marks: feature-rich, never periodic."""
    import cv2

    tex = np.zeros((h, w, 3), np.float32)
    amp = 1.0
    for octave in range(7):
        gh, gw = max(2, h >> (7 - octave)), max(2, w >> (7 - octave))
        grid = rng.random((gh, gw, 3)).astype(np.float32)
        tex += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        amp *= 0.62
    tex -= tex.min()
    tex /= tex.max()
    tex = 0.35 + 0.65 * tex * np.asarray(base_color, np.float32)
    # Sharp marks give SIFT corners at every scale.
    for _ in range(h * w // 3000):
        color = tuple(float(c) for c in rng.random(3))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(2, max(4, min(h, w) // 64)))
        if rng.random() < 0.5:
            cv2.circle(tex, (cx, cy), r, color, -1, lineType=cv2.LINE_AA)
        else:
            cv2.rectangle(tex, (cx - r, cy - r // 2), (cx + r, cy + r // 2), color, -1, lineType=cv2.LINE_AA)
    return np.clip(tex, 0, 1)


def _sample(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup; u, v in [0, 1]."""
    import cv2

    h, w = tex.shape[:2]
    n = u.size
    cols = 1024  # remap wants maps under 32767 on a side: fold the lookups into rows
    pad = (-n) % cols
    mx = np.pad((np.clip(u, 0, 1) * (w - 1)).astype(np.float32), (0, pad)).reshape(-1, cols)
    my = np.pad((np.clip(v, 0, 1) * (h - 1)).astype(np.float32), (0, pad)).reshape(-1, cols)
    out = cv2.remap(tex, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out.reshape(-1, 3)[:n]


@dataclass
class Plane:
    """An axis-aligned rectangle: `axis` = const, spanning `lo`..`hi` in the other two axes."""

    axis: int
    value: float
    lo: tuple[float, float]
    hi: tuple[float, float]
    normal_sign: float
    texture: np.ndarray

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, (b, c) = self.axis, [i for i in range(3) if i != self.axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.value - o[a]) / d[:, a]
        p_b, p_c = o[b] + t * d[:, b], o[c] + t * d[:, c]
        hit = (t > EPS) & (p_b >= self.lo[0]) & (p_b <= self.hi[0]) & (p_c >= self.lo[1]) & (p_c <= self.hi[1])
        t = np.where(hit, t, np.inf)
        u = (p_b - self.lo[0]) / (self.hi[0] - self.lo[0])
        v = (p_c - self.lo[1]) / (self.hi[1] - self.lo[1])
        return t, u, v

    def normal(self) -> np.ndarray:
        n = np.zeros(3)
        n[self.axis] = self.normal_sign
        return n

    def area(self) -> float:
        return (self.hi[0] - self.lo[0]) * (self.hi[1] - self.lo[1])

    def sample_points(self, rng: np.random.Generator, n: int) -> np.ndarray:
        b, c = [i for i in range(3) if i != self.axis]
        pts = np.empty((n, 3))
        pts[:, self.axis] = self.value
        pts[:, b] = rng.uniform(self.lo[0], self.hi[0], n)
        pts[:, c] = rng.uniform(self.lo[1], self.hi[1], n)
        return pts


@dataclass
class Sphere:
    center: np.ndarray
    radius: float
    texture: np.ndarray

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        oc = o - self.center
        b = d @ oc
        c = oc @ oc - self.radius**2
        disc = b * b - c
        sq = np.sqrt(np.maximum(disc, 0))
        t = -b - sq
        hit = (disc > 0) & (t > EPS)
        t = np.where(hit, t, np.inf)
        p = o + np.where(hit, t, 0)[:, None] * d - self.center
        u = 0.5 + np.arctan2(p[:, 1], p[:, 0]) / (2 * np.pi)
        v = 0.5 - np.arcsin(np.clip(p[:, 2] / self.radius, -1, 1)) / np.pi
        return t, u, v

    def sample_points(self, rng: np.random.Generator, n: int) -> np.ndarray:
        v = rng.normal(size=(n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        pts = self.center + self.radius * v
        return pts[pts[:, 2] >= 0]  # the part below the ground is not a surface


@dataclass
class Camera:
    name: str
    K: np.ndarray
    R: np.ndarray  # world -> camera
    t: np.ndarray
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t

    def to_json(self) -> dict:
        return {"width": self.width, "height": self.height, "K": self.K.tolist(), "R": self.R.tolist(),
                "t": self.t.tolist(), "center": self.center.tolist()}


Z_UP = np.array([0.0, 0.0, 1.0])


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = Z_UP) -> tuple[np.ndarray, np.ndarray]:
    """World->camera (R, t) for a camera at `eye` looking at `target` (COLMAP axes)."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ eye


class SyntheticScene:
    """The scene; `seed` fixes its textures."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        tex = lambda h, w, c: _noise_texture(rng, h, w, c)  # noqa: E731
        self.planes: list[Plane] = [
            Plane(2, 0.0, (-4.0, -4.0), (4.0, 4.0), 1.0, tex(2048, 2048, (0.9, 0.8, 0.6))),  # ground
            Plane(1, 4.0, (-4.0, 0.0), (4.0, 3.0), -1.0, tex(768, 2048, (0.6, 0.75, 0.95))),  # back wall
            Plane(0, -4.0, (-4.0, 0.0), (4.0, 3.0), 1.0, tex(768, 2048, (0.95, 0.7, 0.7))),  # left wall
        ]
        # Boxes as five faces each (no bottom): (centre, half-size).
        for center, half, color in [((0.0, 0.6, 0.35), (0.45, 0.35, 0.35), (0.9, 0.4, 0.3)),
                                    ((-1.0, -0.4, 0.25), (0.25, 0.4, 0.25), (0.3, 0.8, 0.4)),
                                    ((1.1, -0.2, 0.5), (0.3, 0.3, 0.5), (0.4, 0.5, 0.95))]:
            cx, cy, cz = center
            hx, hy, hz = half
            self.planes += [
                Plane(2, cz + hz, (cx - hx, cy - hy), (cx + hx, cy + hy), 1.0, tex(256, 256, color)),
                Plane(0, cx + hx, (cy - hy, cz - hz), (cy + hy, cz + hz), 1.0, tex(256, 256, color)),
                Plane(0, cx - hx, (cy - hy, cz - hz), (cy + hy, cz + hz), -1.0, tex(256, 256, color)),
                Plane(1, cy + hy, (cx - hx, cz - hz), (cx + hx, cz + hz), 1.0, tex(256, 256, color)),
                Plane(1, cy - hy, (cx - hx, cz - hz), (cx + hx, cz + hz), -1.0, tex(256, 256, color)),
            ]
        self.sphere = Sphere(np.array([0.2, -1.0, 0.45]), 0.45, tex(512, 1024, (0.95, 0.9, 0.3)))
        self.target = np.array([0.0, 0.0, 0.4])

    # -- cameras -------------------------------------------------------------------------
    def orbit_cameras(self, n: int, width: int = 480, height: int = 360, radius: float = 3.4,
                      height_m: float = 1.5, arc_degrees: float = 120.0, start_degrees: float = -150.0,
                      focal_factor: float = 0.85) -> list[Camera]:
        """`n` cameras on an arc around the objects, each looking at them; named `{i:06d}`."""
        f = focal_factor * width
        K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
        cams = []
        for i in range(n):
            a = math.radians(start_degrees + arc_degrees * i / max(1, n - 1))
            # A little bob in height and radius, as a hand-held camera would have.
            eye = np.array([(radius + 0.15 * math.sin(3 * a)) * math.cos(a),
                            (radius + 0.15 * math.sin(3 * a)) * math.sin(a),
                            height_m + 0.15 * math.sin(2 * a)])
            R, t = look_at(eye, self.target)
            cams.append(Camera(f"{i:06d}", K, R, t, width, height))
        return cams

    # -- rendering -----------------------------------------------------------------------
    def render(self, cam: Camera, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 HxWx3, depth float32 HxW: camera z, inf where nothing is hit)."""
        import cv2

        s = supersample
        w, h = cam.width * s, cam.height * s
        K = cam.K.copy()
        K[:2] *= s
        xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        dirs_cam = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs)], -1).reshape(-1, 3)
        z_scale = np.linalg.norm(dirs_cam, axis=1)
        d = dirs_cam @ cam.R  # = (R.T @ dirs.T).T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        o = cam.center
        best_t = np.full(d.shape[0], np.inf)
        best_i = np.full(d.shape[0], -1)
        hits = []
        prims: list[Plane | Sphere] = [*self.planes, self.sphere]
        for i, prim in enumerate(prims):
            t, u, v = prim.intersect(o, d)
            closer = t < best_t
            best_t = np.where(closer, t, best_t)
            best_i = np.where(closer, i, best_i)
            hits.append((u, v))
        rgb = np.full((d.shape[0], 3), (0.75, 0.85, 1.0), np.float32)  # sky
        for i, prim in enumerate(prims):
            m = best_i == i
            if not m.any():
                continue
            u, v = hits[i]
            col = _sample(prim.texture, u[m], v[m])
            if isinstance(prim, Sphere):
                p = o + best_t[m, None] * d[m]
                n = (p - prim.center) / prim.radius
            else:
                n = np.broadcast_to(prim.normal(), (int(m.sum()), 3))
            shade = AMBIENT + (1 - AMBIENT) * np.clip(n @ LIGHT_DIR, 0, 1)
            rgb[m] = col * shade[:, None]
        depth = (best_t / z_scale).reshape(h, w).astype(np.float32)
        img = (np.clip(rgb, 0, 1) * 255).reshape(h, w, 3)
        if s > 1:
            img = cv2.resize(img, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
            depth = depth[s // 2::s, s // 2::s]
        return np.round(img).astype(np.uint8), depth

    # -- ground truth surface ------------------------------------------------------------
    def sample_surface(self, n: int = 200_000, seed: int = 0) -> np.ndarray:
        """Points spread by area over every surface (ground, walls, boxes, sphere)."""
        rng = np.random.default_rng(seed)
        areas = [p.area() for p in self.planes] + [4 * math.pi * self.sphere.radius**2]
        counts = rng.multinomial(n, np.asarray(areas) / sum(areas))
        pts = [p.sample_points(rng, int(k)) for p, k in zip(self.planes, counts[:-1], strict=True)]
        pts.append(self.sphere.sample_points(rng, int(counts[-1])))
        return np.concatenate(pts).astype(np.float32)


# -- writers ---------------------------------------------------------------------------------
def write_cameras_json(path: Path, cams: Sequence[Camera], names: Sequence[str] | None = None) -> None:
    names = names or [c.name for c in cams]
    doc = {"convention": "x_cam = R @ x_world + t (COLMAP); K in pixels; metres",
           "source": "splatpipe synthetic scene", "scale_from_original": 1.0,
           "cameras": {n: c.to_json() for n, c in zip(names, cams, strict=True)}}
    path.write_text(json.dumps(doc, indent=1))


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = 30, crf: int = 18) -> None:
    """H.264 in MP4 through PyAV."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def motion_blur(img: np.ndarray, length: int = 15, angle_degrees: float = 0.0) -> np.ndarray:
    """A linear motion blur, as a shaky hand gives (for blur-rejection tests)."""
    import cv2

    k = np.zeros((length, length), np.float32)
    k[length // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle_degrees, 1.0)
    k = cv2.warpAffine(k, rot, (length, length))
    k /= k.sum()
    return cv2.filter2D(img, -1, k)


def render_video_sample(out_dir: Path, n_frames: int = 90, width: int = 480, height: int = 360, fps: int = 30,
                        blurred: Sequence[int] = (), seed: int = 7) -> dict:
    """Render the orbit to `out_dir/scene.mp4` with `cameras.json` and `surface.npy`; returns paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scene = SyntheticScene(seed)
    cams = scene.orbit_cameras(n_frames, width, height)
    frames = []
    for i, cam in enumerate(cams):
        img, _ = scene.render(cam)
        frames.append(motion_blur(img, 21, 30.0) if i in set(blurred) else img)
    video = out_dir / "scene.mp4"
    write_video(video, frames, fps)
    write_cameras_json(out_dir / "cameras.json", cams)
    np.save(out_dir / "surface.npy", scene.sample_surface())
    return {"video": video, "cameras": out_dir / "cameras.json", "surface": out_dir / "surface.npy"}


def render_image_sample(out_dir: Path, n_images: int = 12, width: int = 640, height: int = 480,
                        seed: int = 7) -> dict:
    """A photo set: `out_dir/images/{i:06d}.png` with `cameras.json` and `surface.npy`."""
    import cv2

    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    scene = SyntheticScene(seed)
    cams = scene.orbit_cameras(n_images, width, height)
    for cam in cams:
        img, _ = scene.render(cam)
        cv2.imwrite(str(img_dir / f"{cam.name}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    write_cameras_json(out_dir / "cameras.json", cams)
    np.save(out_dir / "surface.npy", scene.sample_surface())
    return {"images": img_dir, "cameras": out_dir / "cameras.json", "surface": out_dir / "surface.npy"}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--images", action="store_true", help="write a photo set instead of a video")
    args = ap.parse_args(argv)
    if args.images:
        paths = render_image_sample(args.out_dir, args.frames, args.width, args.height)
    else:
        paths = render_video_sample(args.out_dir, args.frames, args.width, args.height, args.fps)
    print(json.dumps({k: str(v) for k, v in paths.items()}))


if __name__ == "__main__":
    main()
