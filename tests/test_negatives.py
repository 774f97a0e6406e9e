"""Contradictions by construction (issue #18): minimal edits of the part a positive tier adds over the tier before."""

from __future__ import annotations

import numpy as np

from hierarcaps.infill import infill_edits, infill_prompt, infill_slots, negatable
from hierarcaps.negatives import edit_candidates, grounded_tier1, regrouped, tier1_compatible, words

DOG = ["dog", "brown dog", "brown dog on a beach", "A brown dog runs on the beach at sunset."]


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_each_tier_changes_only_what_it_adds_over_the_tier_before():
    assert "black dog" in edit_candidates(DOG, 2, rng())
    assert all(c.endswith(" dog") and c != "brown dog" for c in edit_candidates(DOG, 2, rng()))  # "dog" (tier 1) is kept
    tier3 = edit_candidates(DOG, 3, rng(), limit=50)
    assert tier3 and all(c.startswith("brown dog ") for c in tier3)  # tier 2 stays whole, so the edit still entails it
    assert "brown dog in a kitchen" in tier3  # the place is swapped with its preposition, so it reads as English
    # an outdoor place becomes an indoor one: "on a beach" and "in a park" may both hold (a park by the sea)
    assert not any(c.endswith(("in a park", "on a street", "in a forest")) for c in tier3)
    tier4 = edit_candidates(DOG, 4, rng(), limit=50)
    assert "A brown dog sits on the beach at sunset." in tier4 and "A brown dog runs on the beach at midnight." in tier4
    assert all("brown dog" in c and "beach" in c for c in tier4)  # tier 3's words are never the edited ones
    assert edit_candidates(DOG, 1, rng()) and "dog" not in edit_candidates(DOG, 1, rng())


def test_what_a_caption_adds_about_a_thing_s_setting_temperature_or_material_changes():
    table = ["furniture", "table", "table with food and beer", "An outdoor table with bowls of hot soup next to a wood bridge."]
    tier4 = edit_candidates(table, 4, rng(), limit=50)
    assert "An indoor table with bowls of hot soup next to a wood bridge." in tier4
    assert "An outdoor table with bowls of cold soup next to a wood bridge." in tier4
    assert "An outdoor table with bowls of hot soup next to a metal bridge." in tier4
    assert not any("cold dog" in c for c in edit_candidates(["food", "hot dog", "hot dog on a plate", "A hot dog on a plate."], 2, rng(), 50))


def test_what_a_with_phrase_names_ends_at_a_participle():
    bread = ["food", "bread", "person with a piece of bread sticking out of his mouth", "A man with flat bread sticking out of his mouth."]
    assert not any("without" in c for c in edit_candidates(bread, 3, rng(), limit=50))  # tier 2 names the bread
    dog = ["animal", "dog", "dog with a ball lying on the grass", "A dog with a ball lying on the grass."]
    assert "dog without a ball lying on the grass" in edit_candidates(dog, 3, rng(), limit=50)


def test_a_place_that_names_a_thing_s_kind_is_not_moved():
    bench = ["furniture", "bench", "man sitting on a bench", "An image of a man sitting on a park bench."]
    assert not any("office bench" in c or "kitchen bench" in c for c in edit_candidates(bench, 4, rng(), limit=50))
    assert "A man sitting in a park in the rain." not in edit_candidates(bench[:3] + ["A man sitting in a park in the rain."], 4, rng())
    assert any(c.startswith("A man sitting in a ") for c in edit_candidates(bench[:3] + ["A man sitting in a park in the rain."], 4, rng(), 50))


def test_only_beings_are_young_and_no_day_is_a_sunny_night():
    picture = ["photo", "old picture", "old picture of a player", "An old picture of a baseball player on a sunny day."]
    tier2 = edit_candidates(picture, 2, rng(), limit=50)
    assert "new picture" in tier2 and "young picture" not in tier2
    assert not any("sunny night" in c for c in edit_candidates(picture, 4, rng(), limit=50))
    boy = ["person", "boy", "young boy", "A young boy with a spoon."]
    assert "old boy" in edit_candidates(boy, 3, rng(), limit=50) and "new boy" not in edit_candidates(boy, 3, rng(), limit=50)


def test_a_room_under_room_becomes_another_room():
    dining = ["room", "the dining room", "the dining room with a couch", "A dining room with a couch and a lamp."]
    tier2 = edit_candidates(dining, 2, rng(), limit=50)
    assert {"the living room", "the bedroom", "the kitchen"} <= set(tier2) and "the dining room" not in tier2
    assert not edit_candidates(["living space", "living room", "living room with a couch", "A living room with a couch."], 2, rng())


def test_a_new_word_the_caption_already_has_is_never_used():
    # "bus" -> "car" would not contradict a picture of a bus next to a car
    positive = ["vehicle", "bus", "bus next to a car", "A yellow bus parked next to a red car."]
    assert not any("car" in c.split() for c in edit_candidates(positive, 2, rng(), limit=50))
    assert "cars" not in " ".join(edit_candidates(["animal", "horse", "horse on a farm", "A horse and two cars on a farm."], 2, rng(), limit=50))
    assert words("Two horses and dogs") == {"two", "horse", "and", "dog"}


def test_actions_change_only_in_a_text_about_people_or_animals():
    pizza = ["food", "pizza", "pizza on a plate", "A large pizza sitting on top of a white plate."]
    assert not any(w in c for c in edit_candidates(pizza, 4, rng(), limit=50) for w in ("standing", "walking", "lying"))
    cat = ["animal", "cat", "cat on a couch", "A cat sitting on a couch."]
    assert any("standing" in c or "lying" in c for c in edit_candidates(cat, 4, rng(), limit=50))


def test_candidates_are_deterministic_distinct_limited_and_articles_agree():
    first = edit_candidates(DOG, 3, np.random.default_rng(7), limit=5)
    assert first == edit_candidates(DOG, 3, np.random.default_rng(7), limit=5) and len(first) == len(set(first)) == 5
    fruit = ["food", "banana", "a banana on a table", "A banana on a table."]
    assert "an apple" in edit_candidates(["food", "a banana", "a banana on a table", fruit[3]], 2, rng(), limit=50)
    assert edit_candidates(["thing", "something", "something here", "Something here."], 2, rng()) == []


def test_a_generic_category_changes_only_at_tier_1():
    positive = ["food", "pizza", "pizza near a truck", "A pizza near a truck and a building."]
    assert "animal" in edit_candidates(positive, 1, rng()) and "food" not in edit_candidates(positive, 1, rng())
    # "a truck and a building" -> "... and a food" is no caption
    assert not any(c.endswith(("a food.", "an animal.", "a person.")) for c in edit_candidates(positive, 4, rng(), limit=50))


def test_a_word_of_the_tier_before_is_kept_in_any_inflection_and_the_caption_s_words_are_never_brought_in():
    # tier 2 says "sits": "sitting" is not what tier 3 adds, so it stays (else the edit no longer entails tier 2)
    dog = ["dog", "dog sits", "dog sitting on a bench", "A dog sitting on a bench in a park."]
    assert not any("sitting" not in c for c in edit_candidates(dog, 3, rng(), limit=50))
    kitchen = ["person", "man", "a man in a kitchen", "A shot of an elderly man inside a kitchen."]
    assert not any("outside" in c for c in edit_candidates(kitchen, 4, rng(), limit=50))  # "inside" says tier 3's "in"
    bus = ["vehicle", "bus", "bus on a street", "A public transit bus on a city street."]
    assert not any("street" in c and "city" not in c for c in edit_candidates(bus, 4, rng(), limit=50))
    # "women" in the caption rules "woman" out as a new word
    people = ["person", "man", "man with a dog", "Two men and two women walk a dog."]
    assert not any("woman" in c.split() for c in edit_candidates(people, 2, rng(), limit=50))


def test_a_sport_that_names_equipment_is_not_swapped():
    tennis = ["sport", "tennis racket", "man holding a tennis racket", "A man holding a tennis racket."]
    assert not any("racket" in c and "tennis" not in c for c in edit_candidates(tennis, 3, rng(), limit=50))
    player = ["person", "tennis player", "tennis player on a court", "A tennis player on a court."]
    assert any(c.endswith(" player") and "tennis" not in c for c in edit_candidates(player, 2, rng(), limit=50))


def test_a_tier_1_negative_never_names_what_the_caption_shows():
    caption = "A man holding a small white dog."
    assert tier1_compatible("person", caption) and tier1_compatible("animal", caption) and tier1_compatible("dogs", caption)
    assert not tier1_compatible("vehicle", caption) and not tier1_compatible("cat", caption)
    options = edit_candidates(["animal", "dog", "man holding a dog", caption], 1, rng(), limit=50)
    assert options and not {"person", "animal", "people"} & set(options)


def test_a_listed_word_and_a_verb_without_its_object_are_not_changed():
    trucks = ["vehicle", "trucks", "trucks in a parking lot", "A group of trucks and cars parked in a parking lot."]
    assert not any("trucks and" in c and "cars" not in c for c in edit_candidates(trucks, 4, rng(), limit=50))
    ocean = ["water", "ocean", "people in the ocean", "People swimming in the ocean with a red surfboard."]
    assert not any("surfboard" not in c for c in edit_candidates(ocean, 4, rng(), limit=50))
    assert any("with a blue surfboard" in c for c in edit_candidates(ocean, 4, rng(), limit=50))
    # a number in a list still changes: it is a property of the thing, like a colour
    sinks = ["room", "bathroom", "bathroom with a mirror", "A bathroom with two sinks and a mirror."]
    changed = edit_candidates(sinks, 4, rng(), limit=50)
    assert any(c.endswith("sinks and a mirror.") and "two" not in c for c in changed)
    assert not any("two" in c and "sinks" not in c for c in changed)
    snow = ["person", "people on snow", "people riding on a snowy surface", "People riding on a snowy surface."]
    assert not any(w in c for c in edit_candidates(snow, 3, rng(), limit=50) for w in ("washing", "selling", "repairing"))
    bike = ["person", "man with a bike", "man riding a bike", "A man riding a bike."]
    assert any("pushing a bike" in c or "washing a bike" in c for c in edit_candidates(bike, 3, rng(), limit=50))


def test_what_a_with_phrase_adds_is_taken_away():
    bathroom = ["room", "bathroom", "bathroom with a mirror", "A small bathroom with a mirror and a sink."]
    assert "bathroom without a mirror" in edit_candidates(bathroom, 3, rng(), limit=50)
    # not where the tier before names the thing (the negative would no longer entail it), after "filled", or "with no"
    station = ["vehicle", "train", "train station with a train", "A train station with a train at the platform."]
    assert not any("without" in c for c in edit_candidates(station, 3, rng(), limit=50))
    box = ["container", "box", "box filled with apples", "A box filled with apples with no lid."]
    assert not any("without" in c for t in (3, 4) for c in edit_candidates(box, t, rng(), limit=50))
    # only the thing itself must be new to tier i-1, not its every word
    kitchen = ["room", "kitchen", "a kitchen with hardwood floors", "A kitchen with hardwood floors and hardwood cabinets."]
    assert "A kitchen with hardwood floors but no hardwood cabinets." in edit_candidates(kitchen, 4, rng(), limit=50)
    # "with several / some" things are "with no" things
    couch = ["animal", "dog", "dog sitting on a couch", "A dog sitting on a couch with several blankets."]
    assert edit_candidates(couch, 4, rng(), limit=50) == ["A dog sitting on a couch with no blankets."]
    olives = ["food", "pizza", "pizza with some olives", "A pizza with some olives on a plate."]
    assert not any("no olives" in c for c in edit_candidates(olives, 4, rng(), limit=50))  # tier 3 names the olives
    # a thing added to a list is taken away too; an action is no thing
    assert "A small bathroom with a mirror but no sink." in edit_candidates(bathroom, 4, rng(), limit=50)
    walking = ["person", "people", "people riding motorcycles", "People walking and riding motorcycles on the street."]
    assert not any("but no" in c for c in edit_candidates(walking, 4, rng(), limit=50))


def test_a_language_model_fills_only_nouns_that_locate_or_a_one_noun_tier_2():
    bird = ["animal", "bird", "bird standing in the grass next to a fire hydrant", "A bird standing in the grass next to a fire hydrant."]
    slots = [bird[2][s:e] for s, e in infill_slots(bird, 3)]
    assert slots == ["grass"]  # not "hydrant" ("next to" does not place it), "fire" (a modifier), nor "bird" (tier 2's)
    assert [bird[1][s:e] for s, e in infill_slots(bird, 2)] == ["bird"] and infill_prompt(bird, 2, 0, 4) == "Kinds of animal: bird,"
    assert infill_prompt(bird, 3, *infill_slots(bird, 3)[0]) == "bird standing in the"
    assert infill_slots(["vehicle", "red car", "red car on a street", "A red car on a street."], 2) == []  # two words
    # a one-noun tier 2 is filled only under a known category, and only by a member of it ("coffee" meant "coffee table")
    assert infill_slots(["cook", "stove", "woman cooking on a stove", "A woman cooking on a stove."], 2) == []
    bench = ["furniture", "bench", "man on a bench", "A man on a bench."]
    assert infill_edits(bench, 2, 0, 5, ["coffee", "chair", "table", "tables"], limit=5) == ["chair", "table"]
    # a sibling of tier 1 makes no kind of it: "cup bowl" is no bowl
    bowl = ["bowl", "toilet bowl", "a toilet bowl in a bathroom", "A white toilet bowl in a bathroom."]
    assert infill_edits(bowl, 2, 0, 6, ["cup", "salad"], limit=5) == ["salad bowl"]
    # a member of the category that the lexicon lacks is a noun too
    assert infill_slots(["appliance", "fridge", "fridge in a kitchen", "A kitchen with a fridge."], 2) == [(0, 6)]
    # a tier 2 that makes tier 1 a kind with a noun ("toilet bowl") has that noun filled; not an adjective or participle,
    # nor under a category ("farm animal": a category's kinds are its members)
    bowl = ["bowl", "toilet bowl", "a toilet bowl in a bathroom", "A white toilet bowl in a bathroom."]
    assert infill_slots(bowl, 2) == [(0, 6)] and infill_prompt(bowl, 2, 0, 6) == "Kinds of bowl: toilet bowl,"
    assert infill_edits(bowl, 2, 0, 6, ["toilet", "salad", "bowls", "white"], limit=3) == ["salad bowl"]
    assert infill_slots(["wave", "crashing wave", "surfing on a crashing wave", "Surfing on a crashing wave."], 2) == []
    assert infill_slots(["animal", "farm animal", "farm animal in a field", "A farm animal in a field."], 2) == []


def test_proposed_words_are_nouns_of_the_same_number_that_nobody_has_said():
    dog = ["dog", "brown dog", "brown dog on a beach", "A brown dog runs on the beach near the water at sunset."]
    start = dog[2].index("beach")
    proposals = ["water", "white", "beaches", "thing", "xqzv", "running", "sofa", "winter", "kitchen", "lawn", "field"]
    # "water" is the caption's, "white" an adjective, "beaches" plural, "thing" generic, "xqzv" no word, "running" no
    # noun, "sofa" no place (the beach is one), "winter" a time, "lawn" ground too; a known place comes with its own
    # preposition ("on a kitchen" is no English)
    assert infill_edits(dog, 3, start, start + 5, proposals, limit=2) == ["brown dog in a kitchen"]
    rocks = ["animal", "bird", "bird standing on rocks", "A bird standing on rocks near the sea."]
    start = rocks[2].index("rocks")  # ground is a place too: "cliffs" may be beside the rocks, "kitchens" is no phrase
    assert infill_edits(rocks, 3, start, start + 5, ["cliffs", "kitchens", "kitchen"], limit=3) == ["bird standing in a kitchen"]
    room = ["chair", "white chair", "white chair in the room", "A white chair in the room."]
    start = room[2].index("room")
    assert infill_edits(room, 3, start, start + 4, ["kitchen", "bathroom"], limit=2) == []  # kinds of room say more
    # a place that cannot hold the thing is not proposed, nor is a person filled
    surf = ["person", "surfer", "surfer on a beach", "A surfer carries a surfboard on the beach."]
    start = surf[2].index("beach")
    assert infill_edits(surf, 3, start, start + 5, ["kitchen", "lake", "air"], limit=3) == []  # a room, and a lake may have the beach
    assert infill_slots(["person", "woman", "woman on the phone", "A woman on the phone."], 3) == []
    assert infill_slots(["person", "girl", "girl with an umbrella", "A girl with her umbrella in hand."], 4) == []


def test_tier_1_becomes_a_category_of_tier_2_where_it_is_none():
    mended = {("water", "fire hydrant"): "hydrant", ("sport", "horse"): "animal", ("place", "bench"): "furniture",
              ("board", "snowboarder"): "person", ("breed", "goats"): "animal", ("cook", "stove"): "appliance",
              ("food appliance", "kitchen"): "room", ("food", "plate"): "dishware", ("sport", "tennis player"): "person",
              ("water", "beach"): "place", ("color", "orange"): "food", ("play", "tennis"): "sport"}
    kept = [("room", "bathroom with a toilet"), ("fruit", "bananas"), ("sport", "tennis"), ("person", "man in a kitchen"), ("horse", "brown horse"),
            ("transportation vehicle", "bus"), ("water", "wave"), ("place", "furniture")]  # the last: no category, or tier 2's
    assert {pair: grounded_tier1(*pair) for pair in mended} == mended
    assert [grounded_tier1(*pair) for pair in kept] == [t1 for t1, _ in kept]


def test_no_edit_breaks_a_compound_of_the_tier_before_or_puts_a_thing_where_it_cannot_be():
    ramp = ["person", "skateboarder", "skateboarder jumps off a ramp", "Guy jumps high doing skateboard flip off a ramp"]
    assert not any("snowboard" in c or "surfboard" in c for c in edit_candidates(ramp, 4, rng(), limit=50))
    surf = ["person", "surfer", "surfer on a beach", "A surfer carries a surfboard on the beach."]
    # a surfer is in no room: the beach becomes an outdoor place of another kind, not the ocean, nor a park that may have a beach
    places = edit_candidates(surf, 3, rng(), limit=50)
    assert "surfer in the snow" in places and "surfer on a street" in places
    assert not any(p in c for c in places for p in ("kitchen", "room", "office", "ocean", "water", "sand", "park", "farm", "zoo"))
    bathroom = ["room", "toilet", "toilet in a bathroom", "A white toilet in a small bathroom."]
    assert not any(c.endswith(("on a beach", "in a park")) for c in edit_candidates(bathroom, 3, rng(), limit=50))
    # neither half of a noun compound is swapped ("shower bowl", "panda elephant"); modifiers and actions still are
    bowl = ["room", "bathroom", "bathroom with a toilet bowl", "A toilet bowl in a bathroom."]
    assert edit_candidates(bowl, 3, rng(), limit=50) == ["bathroom without a toilet bowl"]
    assert edit_candidates(["animal", "panda bear", "panda bear in a tree", "A panda bear in a tree."], 2, rng()) == []
    assert "soccer player" in edit_candidates(["person", "tennis player", "tennis player on a court", "A tennis player."], 2, rng())
    assert "dog walking" in edit_candidates(["animal", "dog sitting", "dog sitting on a couch", "A dog sitting on a couch."], 2, rng())


def test_a_tier_1_that_is_a_kind_of_a_category_is_regrouped_under_it_when_tier_2_only_adds_to_it():
    assert regrouped(["bird", "birds flying", "birds flying in a gray sky"]) == ["animal", "bird", "birds flying in a gray sky"]
    assert regrouped(["oven", "oven door", "man holding an oven door"]) == ["appliance", "oven", "man holding an oven door"]
    assert regrouped(["bread", "bread in a mouth", "man with bread in his mouth"])[:2] == ["food", "bread"]
    assert regrouped(["bike", "bike riding", "person riding a bike on a hill"])[:2] == ["vehicle", "bike"]
    assert regrouped(["animal", "dog", "dog on a beach"]) is None  # already a category
    assert regrouped(["bird", "parrot", "parrot on a branch"]) is None  # tier 2 says another word: no refinement of it
    sea = "Birds flying over the sea."
    assert negatable(["bird", "birds flying", "birds flying over the sea", sea], slots=True) == 0
    assert negatable(["animal", "bird", "birds flying over the sea", sea], slots=True) == 1  # "bird" -> "dog"
    park = "A dog running in a park."
    assert negatable(["animal", "dog", "dog in a park", park], slots=False) == 3  # "cat", "in a kitchen", "lying"
    assert negatable(["animal", "dog", "dog on a lawn", park], slots=False) == 2  # no edit of "on a lawn"
    assert negatable(["animal", "dog", "dog on a lawn", park], slots=True) == 3  # "on a ___"
