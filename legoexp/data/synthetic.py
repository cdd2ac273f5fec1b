"""The built-in synthetic LEGO set: the default data when a user has no lab files.

This module owns drawing the ten bricks of ``legoexp.classes`` as the lab's photos look after
their preprocessing (48x48 grey, contrast-boosted, inverted: a bright brick on a dark ground),
seen from the top in roughly one pose, with random jitter of pose (turn, scale, squash, shift)
and of light (ground level, lighting gradient, gain, gamma, blur, sensor noise). Each brick is
a signed-distance drawing in stud-pitch units, anti-aliased by turning distance into pixel
coverage, so rendering is pure NumPy, batched over every image of a class. Every random draw
comes from a ``numpy.random.Generator`` seeded by the caller, and nothing depends on thread
count or BLAS, so a seed gives byte-identical arrays in any process. The train and test splits
come from independent child streams of one seed, so they never share an image.
"""

import numpy as np

from legoexp.classes import IMAGE_SHAPE, NUM_CLASSES

SPLIT_SIZES = {"train": 451, "test": 150}  # the lab's split sizes

_H, _W = IMAGE_SHAPE
# Pixels per stud pitch at scale 1: the largest part (2x3) keeps some ground around it.
_PITCH_PX = 9.5
# Pose spread, the knob of difficulty. The lab's MLP has no rotation or shift invariance: with
# free rotation it reaches ~0.4 test accuracy on 451 images; +-20 degrees and +-2 px give ~0.88.
_TURN_DEG, _SHIFT_PX = 20.0, 2.0
# Grey levels before photometry; the ground is 0. Edges and stud rims catch the light.
_EDGE, _BODY, _RIM, _TOP, _SHADE = 0.95, 0.6, 1.0, 0.78, 0.3
_CHUNK = 1024  # images rendered at once: bounds memory for any n, and a constant so draws never vary

# Pixel-centre coordinates relative to the image centre.
_Y, _X = np.mgrid[0:_H, 0:_W].astype(np.float64) + 0.5
_Y -= _H / 2
_X -= _W / 2


def _box(u, v, hu, hv, cu=0.0, cv=0.0, r=0.0):
    """Signed distance to a box of half sizes (hu, hv) centred at (cu, cv), corners rounded by r."""
    qu = np.abs(u - cu) - hu + r
    qv = np.abs(v - cv) - hv + r
    outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
    return outside + np.minimum(np.maximum(qu, qv), 0.0) - r


def _nearest(u, v, centres):
    """Distance to the nearest of the points ``centres``."""
    return np.min([np.hypot(u - cu, v - cv) for cu, cv in centres], axis=0)


def _grid(w, h):
    """Stud centres of a w x h brick centred on the origin."""
    return [(i - (w - 1) / 2, j - (h - 1) / 2) for i in range(w) for j in range(h)]


class _Canvas:
    """Paints shapes over each other in brick coordinates (u, v), at ppu pixels per unit.

    All arrays carry a leading batch axis, so one call draws every image of a class.
    """

    def __init__(self, u, v, ppu):
        self.u, self.v, self.ppu = u, v, ppu
        self.img = np.zeros(u.shape)

    def paint(self, sdf, level):
        # Coverage ramps over one pixel across the edge: anti-aliasing without supersampling.
        cover = np.minimum(np.maximum(0.5 - sdf * self.ppu, 0.0), 1.0)
        self.img += (level - self.img) * cover

    def face(self, sdf, level=_BODY):
        """A flat top face: bright outline, then the face inset from it."""
        self.paint(sdf, _EDGE)
        self.paint(sdf + 0.08, level)

    def studs(self, centres):
        """Studs with a shadow ring, a bright rim and a duller top."""
        d = _nearest(self.u, self.v, centres)
        for radius, level in ((0.36, _SHADE), (0.3, _RIM), (0.21, _TOP)):
            self.paint(d - radius, level)


def _brick(w, h):
    def draw(c):
        c.face(_box(c.u, c.v, w / 2, h / 2, r=0.04))
        c.studs(_grid(w, h))
    return draw


def _macaroni(c):
    # A quarter ring one stud wide around the corner (-1, -1); its two studs sit on the arc.
    r = np.hypot(c.u + 1, c.v + 1)
    c.face(np.maximum(np.abs(r - 1.5) - 0.5, -np.minimum(c.u + 1, c.v + 1)))
    c.studs([(0.5, -0.5), (-0.5, 0.5)])


def _curved_end(c):
    # Flat half with two studs; the other half curves down, so it darkens towards its round end.
    c.face(np.minimum(_box(c.u, c.v, 0.5, 1, cu=-0.5), np.hypot(c.u, c.v) - 1))
    slope = np.maximum(np.hypot(c.u, c.v) - 1, -c.u)
    c.paint(slope + 0.08, _EDGE - 0.55 * np.clip(c.u, 0, 1))
    c.studs([(-0.5, -0.5), (-0.5, 0.5)])


def _cog(c):
    r, th = np.hypot(c.u, c.v), np.arctan2(c.v, c.u)
    teeth = 1.05 + 0.15 * np.clip(2.5 * np.cos(16 * th), -1, 1)
    c.face(r - teeth)
    c.paint(np.abs(r - 0.62) - 0.06, _SHADE)
    c.paint(r - 0.4, _RIM)
    axle = np.minimum(_box(c.u, c.v, 0.28, 0.09), _box(c.u, c.v, 0.09, 0.28))
    c.paint(axle, 0.0)


def _handles(c):
    # Two bars along the long sides, held off the plate by posts at both ends.
    bars = np.minimum(_box(c.u, c.v, 0.8, 0.08, cv=0.78), _box(c.u, c.v, 0.8, 0.08, cv=-0.78))
    posts = _box(np.abs(c.u), np.abs(c.v), 0.08, 0.2, cu=0.72, cv=0.6)
    c.paint(np.minimum(bars, posts), _RIM)
    c.face(_box(c.u, c.v, 1, 0.5, r=0.04))
    c.studs([(-0.5, 0), (0.5, 0)])


def _grill(c):
    # A studless 1x2 tile whose top is cut by slots across its width.
    c.face(_box(c.u, c.v, 1, 0.5, r=0.04), level=0.7)
    slot_u = np.abs(((c.u + 0.2) % 0.4) - 0.2)
    c.paint(np.maximum(slot_u - 0.07, _box(c.u, c.v, 0.75, 0.34)), _SHADE - 0.2)


# Indexed by label, in the order of legoexp.classes.CLASSES.
_DRAW = (_brick(2, 3), _brick(2, 2), _brick(1, 3), _brick(1, 2), _brick(1, 1),
         _macaroni, _curved_end, _cog, _handles, _grill)
assert len(_DRAW) == NUM_CLASSES


def _blur(img, a):
    """Separable [a, 1-2a, a] blur over each image, edges repeated: lens softness."""
    p = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = a * (p[:, :-2] + p[:, 2:]) + (1 - 2 * a) * p[:, 1:-1]
    return a * (rows[:, :, :-2] + rows[:, :, 2:]) + (1 - 2 * a) * rows[:, :, 1:-1]


def _render(labels, rng):
    """Images (m, 48, 48) uint8 of ``labels``: pose and light drawn per image, painted as a batch."""
    m = len(labels)

    def pick(low, high):
        return rng.uniform(low, high, size=(m, 1, 1))

    angle, scale = np.deg2rad(pick(-_TURN_DEG, _TURN_DEG)), pick(0.85, 1.15)
    squash = pick(-0.08, 0.08)  # a camera not quite overhead
    x, y = _X - pick(-_SHIFT_PX, _SHIFT_PX), _Y - pick(-_SHIFT_PX, _SHIFT_PX)
    ppu = _PITCH_PX * scale
    u = (np.cos(angle) * x + np.sin(angle) * y) / (ppu * (1 + squash))
    v = (np.cos(angle) * y - np.sin(angle) * x) / (ppu * (1 - squash))
    img = np.zeros((m, *IMAGE_SHAPE))
    for label, draw_brick in enumerate(_DRAW):
        mine = labels == label
        canvas = _Canvas(u[mine], v[mine], ppu[mine])
        draw_brick(canvas)
        img[mine] = canvas.img

    ground, gain, gamma = pick(0.0, 0.06), pick(0.75, 1.15), pick(0.7, 1.4)
    lighting = pick(-0.003, 0.003) * _X + pick(-0.003, 0.003) * _Y  # uneven across the frame
    img = ground + lighting + (1 - ground) * gain * img ** gamma
    img = _blur(img, pick(0.0, 0.25))
    img += pick(0.02, 0.06) * rng.standard_normal(img.shape)
    return np.rint(np.minimum(np.maximum(img, 0.0), 1.0) * 255).astype(np.uint8)


def _generate(n, rng):
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.uint8)
    images = np.empty((n, *IMAGE_SHAPE, 1), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        images[start:start + _CHUNK, ..., 0] = _render(labels[start:start + _CHUNK], rng)
    return images, labels


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 (n, 48, 48, 1) and labels uint8 (n,), classes as balanced as n allows."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return _generate(n, np.random.Generator(np.random.PCG64(seed)))


def generate_split(split: str, seed: int = 0, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One split ("train" or "test") of the set drawn with ``seed``, without drawing the other."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SIZES)}")
    stream = np.random.SeedSequence(seed).spawn(len(SPLIT_SIZES))[list(SPLIT_SIZES).index(split)]
    return _generate(SPLIT_SIZES[split] if n is None else n, np.random.Generator(np.random.PCG64(stream)))


def synthetic_split(
    seed: int = 0, n_train: int = SPLIT_SIZES["train"], n_test: int = SPLIT_SIZES["test"]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels) from independent streams of ``seed``."""
    return (*generate_split("train", seed, n_train), *generate_split("test", seed, n_test))
