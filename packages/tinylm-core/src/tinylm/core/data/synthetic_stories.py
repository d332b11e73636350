"""A seeded generator of simple children's stories: TinyLM-Lab's default corpus, made here, never downloaded.

Each story is drawn from a small grammar: a hero (a child or an animal, with a name and pronouns), a place,
a loved object, a friend and a parent, then one of several story arcs (a lost toy, a new friend, learning
to share, being brave, helping someone, a surprise, a rainy day), each step picking among a few sentence
templates. The vocabulary is small and the structure repetitive on purpose, in the spirit of TinyStories
(Eldan & Li, 2023, arXiv:2305.07759), so a tiny model trained for minutes on a CPU writes story-like text.

Story ``i`` depends only on ``(seed, i)``: the first 100 stories of 20,000 are the 100 stories of 100.
Bump ``GENERATOR_VERSION`` whenever the output changes, so tokenized caches are rebuilt.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

GENERATOR_VERSION = 2

GIRLS = "Lily Mia Sara Emma Lucy Anna Zoe Ella Amy Rosie Kate Nora Ruby Maya Sophie Chloe Daisy Jane".split()
BOYS = "Tom Ben Max Sam Leo Jack Tim Finn Jake Noah Oliver Timmy Billy Joe Eli Luke Peter Dan".split()
PET_NAMES = "Spot Buddy Fluffy Whiskers Coco Pip Bella Rusty Sunny Hoppy Benny Milo Bubbles Lulu".split()
ANIMALS = "puppy kitten bunny bear cub bird frog fox mouse duck squirrel turtle lamb".split()
KID_ADJECTIVES = "little happy curious kind brave shy cheerful".split()
ANIMAL_ADJECTIVES = "little fluffy small friendly tiny curious playful".split()
PARENTS = ["mom", "dad", "grandma", "grandpa"]

# place: (where, things to do there, where a lost thing can hide)
PLACES = {
    "park": ("in the park", ["play on the swings", "run on the grass", "slide down the big slide"],
             ["under a bench", "behind a big tree", "in the tall grass"]),
    "garden": ("in the garden", ["look at the flowers", "dig in the dirt", "water the plants"],
               ["under a bush", "behind the flower pots", "next to the fence"]),
    "forest": ("in the forest", ["climb trees", "pick berries", "listen to the birds"],
               ["under a pile of leaves", "inside a hollow log", "behind a big rock"]),
    "beach": ("at the beach", ["build sandcastles", "splash in the waves", "collect shells"],
              ["under the sand", "behind a big rock", "near the water"]),
    "farm": ("on the farm", ["feed the chickens", "ride on the tractor", "play in the hay"],
             ["in the hay", "behind the barn", "next to the pig pen"]),
    "playground": ("at the playground", ["climb the ladder", "play in the sandbox", "go down the slide"],
                   ["in the sandbox", "under the slide", "behind the swings"]),
    "meadow": ("in the meadow", ["chase butterflies", "pick flowers", "roll down the hill"],
               ["in the tall grass", "under a flower bush", "behind a small hill"]),
    "backyard": ("in the backyard", ["jump on the grass", "play with the hose", "look for bugs"],
                 ["under the porch", "behind the shed", "in the flower bed"]),
}  # fmt: skip
# object: (adjectives, what one does with it)
OBJECTS = {
    "ball": (["red", "big", "bouncy", "blue"], "throw it high in the air"),
    "kite": (["red", "yellow", "colorful"], "fly it in the wind"),
    "teddy bear": (["soft", "brown", "old"], "hug it every night"),
    "toy car": (["shiny", "fast", "little"], "race it across the floor"),
    "doll": (["pretty", "little", "soft"], "take it everywhere"),
    "book": (["big", "colorful", "funny"], "look at the pictures"),
    "hat": (["green", "funny", "big"], "wear it every day"),
    "drum": (["loud", "little", "red"], "play loud songs on it"),
    "boat": (["little", "wooden", "blue"], "sail it in the water"),
    "shell": (["pink", "shiny", "pretty"], "listen to the sea in it"),
    "balloon": (["red", "big", "shiny"], "hold it by the string"),
    "truck": (["yellow", "big", "toy"], "fill it with sand"),
}
FEARS = {
    "the dark": "When the lights went out at night, {name} hid under the blanket.",
    "the big dog next door": "When the big dog barked, {name} wanted to run away.",
    "loud thunder": "One night there was a big storm, and the thunder went boom!",
    "the deep water": "At the lake, {name} did not want to go in the water.",
    "the tall slide": "At the playground, {name} looked up at the tall slide and did not move.",
}
HELP_CASES = [
    ("a little bird with a hurt wing", "{name} made a soft bed of leaves and gave the bird some water.",
     "A few days later, the bird could fly again. It sang a happy song for {name}."),
    ("a kitten stuck up in a tree",
     "{name} ran to get {his} {parent}, who climbed up and brought the kitten down.",
     "The kitten purred and rubbed against {name}'s leg."),
    ("an old man who dropped his apples", "{name} picked up all the apples and put them back in his bag.",
     "The old man smiled and gave {name} a big red apple."),
    ("a lost duckling crying for its mother", "{name} walked with the duckling all the way to the pond.",
     "The mother duck was so happy. She said quack, quack, which meant thank you."),
]  # fmt: skip
ENDINGS = [
    "From that day on, {name} and {friend} were best friends.",
    "{name} went home with a big smile on {his} face.",
    "That night, {name} fell asleep feeling happy and warm.",
    "It was the best day ever.",
]


class _Story:
    """The cast and setting of one story, and the sentences written so far."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.name, self.intro, self.he = self._character(rng.random() < 0.7)
        self.friend, self.friend_intro, _ = self._character(rng.random() < 0.6, avoid=self.name)
        self.parent = rng.choice(PARENTS)
        self.place = rng.choice(list(PLACES))
        self.where, self.activities, self.spots = PLACES[self.place]
        self.obj = rng.choice(list(OBJECTS))
        adjectives, self.obj_use = OBJECTS[self.obj]
        self.obj_adj = rng.choice(adjectives)
        self.his = {"she": "her", "he": "his", "it": "its"}[self.he]
        self.him = {"she": "her", "he": "him", "it": "it"}[self.he]
        self.sentences: list[str] = []

    def _character(self, is_child: bool, avoid: str = "") -> tuple[str, str, str]:
        """(name, "a little girl named Lily", pronoun)."""
        rng = self.rng
        if is_child:
            girl = rng.random() < 0.5
            name = rng.choice([n for n in (GIRLS if girl else BOYS) if n != avoid])
            kind, he, adjectives = ("girl", "she", KID_ADJECTIVES) if girl else ("boy", "he", KID_ADJECTIVES)
        else:
            name = rng.choice([n for n in PET_NAMES if n != avoid])
            kind, he, adjectives = rng.choice(ANIMALS), rng.choice(["she", "he"]), ANIMAL_ADJECTIVES
        return name, f"{_article(adj := rng.choice(adjectives))} {adj} {kind} named {name}", he

    def say(self, *templates: str) -> None:
        """Add one of ``templates``, filled in, with its first letter capitalized."""
        text = self.rng.choice(templates).format(
            name=self.name, friend=self.friend, parent=self.parent, he=self.he, his=self.his, him=self.him,
            where=self.where, place=self.place, obj=self.obj, adj=self.obj_adj, use=self.obj_use,
            activity=self.rng.choice(self.activities), spot=self.rng.choice(self.spots),
            friend_intro=self.friend_intro, a_adj=_article(self.obj_adj),
        )  # fmt: skip
        # every sentence starts with a capital, also one that follows another inside a template
        text = re.sub(r"([.!?] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
        self.sentences.append(text[0].upper() + text[1:])

    def paragraph(self) -> None:
        self.sentences.append("\n")

    def text(self) -> str:
        return " ".join(self.sentences).replace(" \n ", "\n")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _opening(s: _Story) -> None:
    s.say(
        f"Once upon a time, there was {s.intro}.",
        f"There once was {s.intro} who lived near a big {s.place}.",
        f"Once upon a time, in a small town, there lived {s.intro}.",
    )
    s.say("{he} loved to {activity} {where}.", "Every day, {he} liked to go out and {activity}.")


def _lost_toy(s: _Story) -> None:
    s.say("{name} had {a_adj} {adj} {obj} that {he} loved very much.", "{he} liked to {use}.")
    s.say(
        "One day, {name} took {his} {obj} to the {place}.",
        "One sunny day, {name} went {where} with {his} {obj}.",
    )
    s.say("{he} wanted to {activity}, so {he} put {his} {obj} down.", "{he} played and played all day.")
    s.say("When {he} looked for {his} {obj}, it was gone!", "Then {he} saw that {his} {obj} was not there!")
    s.say("{name} felt very sad and started to cry.", "{name} was worried. Where could it be?")
    s.paragraph()
    s.sentences.append(f'Just then, {s.friend_intro} came by and asked, "Why are you sad?"')
    s.say('"I lost my {obj}," said {name}.', '{name} said, "I can\'t find my {obj}."')
    s.say('"Don\'t worry. I will help you look," said {friend}.', '{friend} said, "Let\'s look together!"')
    s.say("They looked {spot}. They looked {spot} too.", "They looked everywhere.")
    s.say("At last, {friend} found the {obj} {spot}!", "Then {name} saw something {adj}. It was the {obj}!")
    s.say('{name} was so happy. "Thank you!" {he} said, and gave {friend} a big hug.')
    s.paragraph()
    s.say(ENDINGS[0], "{name} learned that friends always help each other.", *ENDINGS[1:3])


def _new_friend(s: _Story) -> None:
    s.say("But {he} had no one to play with.", "{he} wished {he} had a friend to play with.")
    s.say("One day, {name} went {where}.", "One morning, {name} walked {where}.")
    s.sentences.append(f"There {s.he} saw {s.friend_intro}, sitting all alone.")
    s.say("{friend} looked sad and lonely.", "{friend} looked shy.")
    s.paragraph()
    s.say('"Hello! My name is {name}," said {name}. "Do you want to play with me?"')
    s.say('{friend} smiled and said, "Yes, I would like that!"', '"Yes, please!" said {friend}.')
    s.say("They went to {activity} together.", "Together they liked to {activity}.")
    s.say("They laughed and played until the sun went down.", "They had so much fun.")
    s.say('When it was time to go home, {friend} asked, "Can we play again tomorrow?"')
    s.say('"Yes!" said {name}. "You are my best friend."')
    s.paragraph()
    s.say(ENDINGS[0], "{name} was not lonely anymore.", ENDINGS[2])


def _sharing(s: _Story) -> None:
    s.say(
        "One day, {name}'s {parent} gave {him} {a_adj} {adj} {obj}.",
        "{name} got a new {obj} for {his} birthday.",
    )
    s.say("{name} loved it. {he} liked to {use}.", "It was the best {obj} in the world.")
    s.sentences.append(f"Then {s.friend_intro} came to play.")
    s.say('"Can I play with your {obj}?" asked {friend}.', '{friend} asked, "Can I have a turn, please?"')
    s.say('"No! It is mine!" said {name}.', "{name} held the {obj} close and said no.")
    s.say("{friend} was sad and walked away.", "{friend} looked down and did not say anything.")
    s.paragraph()
    s.say("{name}'s {parent} saw what happened.", "Then {name}'s {parent} came over.")
    s.say('"Sharing is caring," said {parent}. "Your friend will be happy if you share."')
    s.say("{name} thought about it. Then {he} gave the {obj} to {friend}.", "{name} felt bad and said sorry.")
    s.say("They took turns and played together all day.", "They played with the {obj} together.")
    s.paragraph()
    s.say("{name} learned that sharing makes everyone happy.", "Playing together was more fun.", ENDINGS[0])


def _brave(s: _Story) -> None:
    fear = s.rng.choice(list(FEARS))
    s.sentences.append(f"But {s.name} was scared of {fear}.")
    s.say(FEARS[fear])
    s.say("{name} ran to {his} {parent}.", "{name} called for {his} {parent}.")
    s.say(
        '{parent} gave {him} a hug and said, "There is nothing to be scared of. I am right here."',
        '"It is okay to be scared," said {parent}. "But you are braver than you think."',
    )
    s.paragraph()
    s.say("{name} took a deep breath.", "{name} closed {his} eyes and counted to three.")
    s.sentences.append(f"{s.name} was brave, and {fear} was not so scary after all.")
    s.say("{parent} was very proud of {him}.", "{he} even laughed.")
    s.paragraph()
    s.say("From that day on, {name} was not scared anymore.", *ENDINGS[1:3])


def _helping(s: _Story) -> None:
    who, help_, thanks = s.rng.choice(HELP_CASES)
    s.say("One day, {name} was walking {where} when {he} heard a small sound.")
    s.sentences.append(f"{s.he.capitalize()} looked around and saw {who}.")
    s.say("{name} wanted to help.", '"I will help you," said {name}.')
    s.say(help_)
    s.paragraph()
    s.say(thanks)
    s.say("{name} felt warm and happy inside.", "{name} felt very proud.")
    s.paragraph()
    s.say("{name} learned that helping others is a good thing to do.", *ENDINGS[1:])


def _surprise(s: _Story) -> None:
    s.say("One day, {name} knew that it was {his} {parent}'s birthday.", "Tomorrow was {parent}'s birthday.")
    s.say("{name} wanted to make a special surprise.", "{he} wanted to give {parent} something nice.")
    s.say(
        "{he} drew a big picture of a sun and a house.", "{he} picked the prettiest flowers {where}.",
        "With help from {his} friend {friend}, {he} made a cake with pink frosting.",
    )  # fmt: skip
    s.say("{he} hid it and waited.", "{he} put it on the table and waited.")
    s.paragraph()
    s.say('When {parent} saw it, {parent} smiled and said, "Thank you! I love it!"')
    s.say("{parent} gave {name} a big hug.", "{name} was so happy.")
    s.paragraph()
    s.say("It was the best birthday ever.", ENDINGS[2])


def _rainy_day(s: _Story) -> None:
    s.say("One day, it was raining, and {name} could not go outside.", "One morning, big gray clouds came.")
    s.say("{name} felt bored.", "{name} looked out the window and sighed.")
    s.say(
        'Then {he} had an idea. "Let\'s build a fort!" {he} said.',
        "Then {his} friend {friend} came over to play.",
    )
    s.say(
        "They made a fort with blankets and pillows.", "They played with {his} {obj} on the floor.",
        "They made a boat out of paper.",
    )  # fmt: skip
    s.paragraph()
    s.say("When the rain stopped, they ran outside.", "Soon the sun came out.")
    s.say("In the sky there was a big, bright rainbow!", "They jumped in all the puddles.")
    s.paragraph()
    s.say("{name} learned that rainy days can be fun too.", ENDINGS[2])


ARCS = (_lost_toy, _new_friend, _sharing, _brave, _helping, _surprise, _rainy_day)


def generate_story(seed: int, index: int) -> str:
    """Story number ``index`` of the corpus drawn with ``seed``."""
    story = _Story(random.Random(seed * 1_000_003 + index))
    _opening(story)
    story.rng.choice(ARCS)(story)
    return story.text()


def generate_stories(num_documents: int, seed: int = 1337) -> Iterator[str]:
    """``num_documents`` stories, deterministic for ``seed``."""
    for i in range(num_documents):
        yield generate_story(seed, i)
