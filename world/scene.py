"""A scene: the symbolic truth behind an image (objects with shape, color, place and size)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from world.spec import CANVAS, MAX_OBJECTS, MAX_SIZE, MIN_GAP, MIN_SIZE, Color, Shape


class Obj(BaseModel):
    """One shape. (x, y) is the top-left corner of its size x size bounding box."""

    model_config = ConfigDict(frozen=True)

    shape: Shape
    color: Color
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    size: int = Field(ge=MIN_SIZE, le=MAX_SIZE)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), end-exclusive."""
        return self.x, self.y, self.x + self.size, self.y + self.size

    @property
    def centroid(self) -> tuple[float, float]:
        """Centre of mass of the filled shape (a triangle's sits 2/3 of the way down)."""
        cx = self.x + self.size / 2
        if self.shape == "triangle":
            return cx, self.y + 2 * self.size / 3
        return cx, self.y + self.size / 2

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


def boxes_clear(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = MIN_GAP) -> bool:
    """True when two end-exclusive boxes are at least `gap` pixels apart on some axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


class Scene(BaseModel):
    """1 to 6 objects, inside the canvas, never closer than MIN_GAP pixels."""

    model_config = ConfigDict(frozen=True)

    objects: tuple[Obj, ...] = Field(min_length=1, max_length=MAX_OBJECTS)

    @model_validator(mode="after")
    def _fits(self) -> Scene:
        for i, obj in enumerate(self.objects):
            if obj.x + obj.size > CANVAS or obj.y + obj.size > CANVAS:
                raise ValueError(f"object {i} ({obj.name}) leaves the {CANVAS}x{CANVAS} canvas")
            for j in range(i):
                if not boxes_clear(obj.box, self.objects[j].box):
                    raise ValueError(f"objects {j} and {i} are closer than {MIN_GAP} pixels")
        return self
