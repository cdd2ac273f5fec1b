"""The ten LEGO classes of the lab, in label order: the one place a label gets its name.

Label ``i`` is ``CLASSES[i]``; every plot, prediction and served answer reads names here.
"""

from typing import NamedTuple


class Brick(NamedTuple):
    name: str
    part: str  # LEGO part number


CLASSES: tuple[Brick, ...] = (
    Brick("2x3 Brick", "3002"),
    Brick("2x2 Brick", "3003"),
    Brick("1x3 Brick", "3622"),
    Brick("2x1 Brick", "3004"),
    Brick("1x1 Brick", "3005"),
    Brick("2x2 Macaroni", "3063"),
    Brick("2x2 Curved End", "47457"),
    Brick("Cog 16 Tooth", "94925"),
    Brick("1x2 Handles", "3839a"),
    Brick("1x2 Grill", "2412b"),
)
NUM_CLASSES = len(CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(b.name for b in CLASSES)
IMAGE_SHAPE = (48, 48)
