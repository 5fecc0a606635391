"""Constants of the ShapeWorld contract (../shared/specs/shapeworld.md), in one place."""

from typing import Literal

CANVAS = 64
BACKGROUND = (255, 255, 255)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (230, 200, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 180),
}
SHAPES = ("circle", "square", "triangle")
COLOR_NAMES = tuple(COLORS)

Color = Literal["red", "orange", "yellow", "green", "blue", "purple"]
Shape = Literal["circle", "square", "triangle"]
Relation = Literal["to the left of", "to the right of", "above", "below"]
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")

MIN_SIZE, MAX_SIZE = 12, 20  # bounding-box side, inclusive
MIN_GAP = 2  # pixels between bounding boxes
MAX_OBJECTS = 6
MAX_COUNT = 4  # largest number word
RELATION_MARGIN = 4  # pixels between centroids
NOISE_AREA = 40  # components smaller than this are ignored

NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}  # for describing; prompts stop at four
PLURALS = {shape + "s": shape for shape in SHAPES}

FAMILIES = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
    "complex",
)
Family = Literal[
    "single_object", "two_object", "counting", "colors", "position", "color_attr", "complex"
]
