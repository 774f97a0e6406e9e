"""Places a negative edit may move a subject to (issue #18): each with the preposition it takes, which places exclude
each other, and which things cannot be in a room or outdoors. `negatives` swaps them; `infill` checks proposed nouns
against them.
"""

from __future__ import annotations

import re

# Places with the preposition they take: the whole phrase is swapped, so the edit reads as English. Every place may be
# changed; only those that exclude each other are used as the new place ("on the grass" may be in a park, a street is
# a road, a beach may be in a city).
PLACES = {
    "beach": "on a beach", "park": "in a park", "street": "on a street", "forest": "in a forest", "kitchen": "in a kitchen",
    "bathroom": "in a bathroom", "bedroom": "in a bedroom", "living room": "in a living room", "office": "in an office",
    "restaurant": "in a restaurant", "snow": "in the snow", "ocean": "in the ocean", "desert": "in a desert",
    "airport": "at an airport", "farm": "on a farm", "zoo": "in a zoo", "classroom": "in a classroom",
    "garage": "in a garage", "mountain": "on a mountain",
    "field": "in a field", "grass": "on the grass", "sand": "on the sand", "water": "in the water", "road": "on a road",
    "city": "in a city", "sky": "in the sky", "lake": "on a lake", "river": "in a river", "track": "on a track",
    "court": "on a court", "station": "at a station", "parking lot": "in a parking lot", "market": "at a market",
    "highway": "on a highway",
}  # fmt: skip
NEW_PLACES = tuple(PLACES)[: tuple(PLACES).index("field")]
# What an edit changes a place into: an indoor place for an outdoor one ("in a field" -> "in a park" may be both; "in a
# kitchen" may not), any other exclusive place for an indoor one (`new_places`).
INDOOR = ("kitchen", "bathroom", "bedroom", "living room", "office", "restaurant", "classroom", "garage")
# Outdoor places by kind, and the new places that rule each kind out: snow may lie on a field, a street or in a forest,
# a road may cross a forest or a desert, a park or a farm may hold a field, a lake or a beach.
OUTDOOR_KIND = {place: kind for kind, places in {
    "shore": ("beach", "sand", "ocean", "water", "lake", "river"),
    "town": ("street", "road", "city", "parking lot", "highway", "station", "market", "track"),
    "snow": ("snow", "mountain"),
    "forest": ("forest",),
    "desert": ("desert",),
    "green": ("field", "grass", "park", "farm", "zoo", "court"),
}.items() for place in places}
EXCLUDED_BY = {"shore": ("street", "forest", "desert", "snow"), "town": ("beach", "forest", "desert"), "snow": ("beach", "desert"),
               "forest": ("beach", "desert"), "desert": ("forest", "snow"), "green": ("beach", "street", "desert")}
# Things that are not in a room, and things that are not outdoors: a place swap that would put one there reads as
# nonsense to reviewers ("surfing in a restaurant", "a clock on a building in an office", "a toilet on a beach").
OUTDOOR_THINGS = frozenset(
    "car bus truck train plane airplane jet boat ship motorcycle tractor horse elephant giraffe zebra cow cattle sheep "
    "bear surf surfer surfboard wave kite ski skier snowboard snowboarder skateboarder building tower skyscraper bridge "
    "hydrant tree traffic".split()
)  # not the places themselves: those are what a place swap changes
INDOOR_THINGS = frozenset("toilet sink bathtub shower oven refrigerator fridge microwave stove bed couch sofa desk".split())
PREPOSITIONS = ("in", "on", "at", "near", "by", "inside", "along", "across", "through", "into", "onto")
ARTICLES = ("a", "an", "the", "some")
PLACE_RE = re.compile(
    r"\b(?:(?:%s)\s+)(?:(?:%s)\s+)?(%s)\b" % ("|".join(PREPOSITIONS), "|".join(ARTICLES), "|".join(sorted(map(re.escape, PLACES), key=len, reverse=True))),
    re.IGNORECASE,
)
# A place that modifies another place is not one ("on a city street" -> "in a restaurant street").
PLACE_COMPOUND = re.compile(r"\s+(?:%s)\b" % "|".join(map(re.escape, PLACES)), re.IGNORECASE)
OUTDOORS = frozenset(PLACES) - frozenset(INDOOR)
# Rooms: under tier 1 "room", a tier 2 that is a room ("living room") keeps tier 1's word only by name, and any other
# room is one too ("bedroom").
ROOMS = ("kitchen", "bathroom", "bedroom", "living room", "dining room", "office", "classroom")
ROOM = re.compile(r"(?:(?:a|an|the)\s+)?(%s)" % "|".join(ROOMS), re.IGNORECASE)


def new_places(noun: str, present: set[str]) -> list[str]:
    """What the place `noun` may change into in a text about `present` (lemmas): any other exclusive place for a room;
    a room for an outdoor place, or, where an outdoor thing rules out every room, an outdoor place of another kind
    ("a sailboat on the beach" -> "a sailboat in the snow")."""
    if noun in INDOOR:
        return [p for p in NEW_PLACES if p != noun and fits(p, present)]
    rooms = [p for p in INDOOR if fits(p, present)]
    return rooms or [p for p in EXCLUDED_BY.get(OUTDOOR_KIND.get(noun), ()) if fits(p, present)]


def fits(place: str, present: set[str]) -> bool:
    """Whether a text about `present` (lemmas) can be in `place`: no outdoor thing in a room, no indoor one outside."""
    return not present & (OUTDOOR_THINGS if place in INDOOR else INDOOR_THINGS if place in PLACES else frozenset())
