#!/usr/bin/env python3
"""Generate the small offline datasets in ``data/local/``.

Stdlib only and fully deterministic (a single ``random.Random(0)``); running

    python data/local/make_local_data.py

rewrites these files byte-for-byte identically every time:

* ``sft.jsonl``             chat conversations for supervised fine-tuning
                            (``{"id", "reasoning", "messages"}``): N_SFT
                            generated ones, then the hand-written EXTRA_SFT
* ``midtrain.jsonl``        plain-text step-by-step reasoning traces
                            (``{"id", "text"}``)
* ``prefgen_prompts.jsonl`` prompts with verifiable constraints in the IFEval
                            schema (``{"key", "prompt", "instruction_id_list",
                            "kwargs"}``)

All text is hand-written templates plus small fact tables; every number in an
answer is computed here, so the answers are correct.  None of the prompts is
taken from (or paraphrases) the IFEval evaluation prompts; the test
``tests/test_data_overlap.py`` checks for word 8-gram overlap against them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent

N_SFT = 160
N_MID = 60

rng = random.Random(0)

# ---------------------------------------------------------------------------
# Small fact tables
# ---------------------------------------------------------------------------

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"),
    ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Egypt", "Cairo"), ("Brazil", "Brasília"),
    ("Kenya", "Nairobi"), ("India", "New Delhi"), ("Mexico", "Mexico City"),
    ("Norway", "Oslo"), ("Portugal", "Lisbon"), ("Greece", "Athens"),
    ("Peru", "Lima"), ("Argentina", "Buenos Aires"), ("South Korea", "Seoul"),
    ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Ireland", "Dublin"),
    ("Thailand", "Bangkok"), ("Turkey", "Ankara"), ("China", "Beijing"),
]

PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]

# (name, symbol, atomic number)
ELEMENTS = [
    ("hydrogen", "H", 1), ("helium", "He", 2), ("carbon", "C", 6),
    ("nitrogen", "N", 7), ("oxygen", "O", 8), ("neon", "Ne", 10),
    ("sodium", "Na", 11), ("magnesium", "Mg", 12), ("aluminium", "Al", 13),
    ("silicon", "Si", 14), ("sulfur", "S", 16), ("chlorine", "Cl", 17),
    ("potassium", "K", 19), ("calcium", "Ca", 20), ("iron", "Fe", 26),
    ("copper", "Cu", 29), ("zinc", "Zn", 30), ("silver", "Ag", 47),
    ("tin", "Sn", 50), ("gold", "Au", 79), ("mercury", "Hg", 80),
    ("lead", "Pb", 82),
]

DEFINITIONS = [
    ("photosynthesis", "the process plants use to turn sunlight, water and carbon dioxide into sugar and oxygen"),
    ("a noun", "a word that names a person, place, thing or idea"),
    ("a verb", "a word that describes an action or a state of being"),
    ("an adjective", "a word that describes a noun, such as its size or colour"),
    ("a synonym", "a word that means the same or nearly the same as another word"),
    ("an antonym", "a word that means the opposite of another word"),
    ("a prime number", "a whole number greater than 1 whose only divisors are 1 and itself"),
    ("evaporation", "the change of a liquid into a gas, such as water drying up in the sun"),
    ("a habitat", "the natural home where an animal or plant lives"),
    ("gravity", "the force that pulls objects toward each other, like the pull that keeps us on the ground"),
    ("a mammal", "a warm-blooded animal with hair or fur that feeds its young with milk"),
    ("a herbivore", "an animal that eats only plants"),
    ("the perimeter", "the total distance around the outside of a shape"),
    ("a volcano", "an opening in the ground where melted rock, ash and gas escape from inside the Earth"),
    ("a glacier", "a huge, slow-moving mass of ice formed from packed snow"),
    ("a fraction", "a number that represents part of a whole, written like 3/4"),
]

LETTER_WORDS = [
    "strawberry", "banana", "mississippi", "bookkeeper", "committee",
    "parallel", "occurrence", "balloon", "coffee", "pepper", "assessment",
    "tomorrow", "address", "success", "necessary", "raccoon", "giraffe",
    "hippopotamus", "umbrella", "butterfly", "cinnamon", "elephant",
]

CATEGORIES = {
    "fruits": ["apple", "banana", "cherry", "mango", "pear", "peach", "grape", "plum", "kiwi", "orange"],
    "colors": ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "white", "black"],
    "farm animals": ["cow", "pig", "sheep", "goat", "horse", "chicken", "duck", "donkey"],
    "vegetables": ["carrot", "potato", "onion", "spinach", "broccoli", "pea", "cabbage", "leek"],
    "musical instruments": ["piano", "guitar", "violin", "drum", "flute", "trumpet", "cello", "harp"],
    "sports": ["soccer", "tennis", "basketball", "swimming", "cycling", "rowing", "golf", "volleyball"],
    "kitchen tools": ["spoon", "whisk", "ladle", "spatula", "grater", "peeler", "rolling pin", "colander"],
    "shapes": ["circle", "square", "triangle", "rectangle", "oval", "hexagon", "pentagon", "star"],
}

SENTENCES = [
    "the library opens at nine in the morning.",
    "my brother plays the guitar every evening.",
    "we planted three tomato plants in the garden.",
    "the train to the coast leaves from platform two.",
    "please remember to water the plants on Friday.",
    "our cat likes to sleep on the warm windowsill.",
    "the bakery on the corner sells fresh bread.",
    "she finished reading the book in two days.",
    "the bus was late because of the heavy snow.",
    "he painted the fence a bright shade of blue.",
    "the museum is closed on Mondays.",
    "they walked along the river after lunch.",
]

NAMES = ["Mia", "Leo", "Ava", "Noah", "Zoe", "Sam", "Lily", "Omar", "Nina", "Ben",
         "Ella", "Raj", "Maya", "Tom", "Iris", "Kai", "Rosa", "Finn", "Lena", "Hugo"]
CITIES = ["Lisbon", "Denver", "Osaka", "Nairobi", "Dublin", "Quito", "Perth", "Oslo", "Austin", "Seoul"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

ITEMS_PRICED = [("notebook", 3), ("pen", 2), ("sandwich", 6), ("ticket", 12), ("mug", 8),
                ("plant", 15), ("book", 9), ("candle", 4), ("scarf", 14), ("pizza", 11)]


def fmt(x: float) -> str:
    """Format a number without trailing zeros (12.0 -> '12', 2.50 -> '2.5')."""
    if isinstance(x, int):
        return str(x)
    x = round(x, 2)
    if x == int(x):
        return str(int(x))
    return f"{x:.2f}".rstrip("0").rstrip(".")


def num(x: float):
    """JSON-friendly number: int when integral."""
    x = round(x, 2)
    return int(x) if x == int(x) else x


def money(x: float) -> str:
    x = round(x, 2)
    return str(int(x)) if x == int(x) else f"{x:.2f}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


PLURALS = {"sandwich": "sandwiches", "pair of shoes": "pairs of shoes"}


def plural_noun(word: str, n: int = 2) -> str:
    if n == 1:
        return word
    return PLURALS.get(word, word + "s")


def pick(seq):
    return rng.choice(seq)


# ---------------------------------------------------------------------------
# SFT task generators.  Each returns a dict:
#   user   - the question (without formatting constraint)
#   steps  - list of reasoning sentences (used inside <think>)
#   answer - the natural final answer sentence
#   short  - the bare value (str/int/float) for terse / JSON answers
#   title  - a short title for "give it a title" constraints
#   items  - (optional) list of items for list-type answers
# ---------------------------------------------------------------------------


def t_apples():
    n = pick(NAMES)
    a, b, c = rng.randint(2, 12), rng.randint(2, 6), rng.randint(3, 8)
    fruit = pick(["apples", "oranges", "lemons", "peaches"])
    tot = a + b * c
    return dict(
        user=f"{n} has {a} {fruit}. {n} buys {b} bags with {c} {fruit} in each bag. How many {fruit} does {n} have now?",
        steps=[f"Each bag has {c} {fruit} and there are {b} bags, so the bags hold {b} × {c} = {b * c}.",
               f"Add the {a} {n} already had: {a} + {b * c} = {tot}."],
        answer=f"{n} has {tot} {fruit} now ({a} + {b} × {c} = {tot}).",
        short=tot, title=f"Counting {fruit.title()}")


def t_tickets():
    item, p = pick(ITEMS_PRICED)
    n = rng.randint(3, 9)
    tot = n * p
    return dict(
        user=f"One {item} costs ${p}. How much do {n} of them cost?",
        steps=[f"The price of one {item} is ${p}.", f"For {n} of them I multiply: {n} × {p} = {tot}."],
        answer=f"{n} of them cost ${tot}.",
        short=tot, title="Total Cost")


def t_change():
    item, p = pick(ITEMS_PRICED)
    n = rng.randint(2, 5)
    cost = n * p
    bill = next(b for b in (10, 20, 50, 100) if b >= cost)
    ch = bill - cost
    who = pick(NAMES)
    return dict(
        user=f"{who} buys {n} {plural_noun(item)} at ${p} each and pays with a ${bill} bill. How much change does {who} get?",
        steps=[f"The total cost is {n} × {p} = ${cost}.", f"The change is {bill} - {cost} = ${ch}."],
        answer=f"{who} gets ${ch} in change.",
        short=ch, title="Change Owed")


def t_speed():
    s, t = rng.choice([40, 50, 60, 75, 80, 90]), rng.randint(2, 5)
    d = s * t
    return dict(
        user=f"A train travels at {s} km/h for {t} hours. How far does it go?",
        steps=["Distance equals speed multiplied by time.", f"{s} km/h × {t} h = {d} km."],
        answer=f"The train travels {d} km.",
        short=d, title="Train Distance")


def t_share():
    total, k = rng.randint(13, 50), rng.randint(3, 7)
    q, r = divmod(total, k)
    thing = pick(["cookies", "stickers", "marbles", "crayons"])
    steps = [f"I divide {total} by {k}.", f"{k} × {q} = {k * q}, and {total} - {k * q} = {r}."]
    answer = f"Each child gets {q} {thing}" + (f", and {r} {'is' if r == 1 else 'are'} left over." if r else ", with none left over.")
    return dict(
        user=f"{total} {thing} are shared equally among {k} children. How many does each child get, and how many are left over?",
        steps=steps, answer=answer, short=f"{q} each, {r} left", title="Fair Sharing")


def t_discount():
    price = rng.choice([20, 40, 60, 80, 120, 200])
    d = rng.choice([10, 20, 25, 50])
    off = price * d // 100
    new = price - off
    item = pick(["jacket", "lamp", "backpack", "pair of shoes", "chair"])
    return dict(
        user=f"A {item} costs ${price}. It is on sale for {d}% off. What is the sale price?",
        steps=[f"{d}% of {price} is {price} × {d} / 100 = {off}.", f"Subtract the discount: {price} - {off} = {new}."],
        answer=f"The sale price is ${new}.",
        short=new, title="Sale Price")


def t_age():
    a, n1, n2 = pick(NAMES), pick(NAMES), rng.randint(3, 9)
    while n1 == a:
        n1 = pick(NAMES)
    age = rng.randint(6, 15)
    later = rng.randint(2, 10)
    res = age + n2 + later
    return dict(
        user=f"{a} is {age} years old. {n1} is {n2} years older than {a}. How old will {n1} be in {later} years?",
        steps=[f"{n1} is now {age} + {n2} = {age + n2}.", f"In {later} years: {age + n2} + {later} = {res}."],
        answer=f"{n1} will be {res} years old.",
        short=res, title="Age Puzzle")


def t_rect():
    l, w = rng.randint(3, 15), rng.randint(2, 10)
    if rng.random() < 0.5:
        return dict(
            user=f"What is the area of a rectangle that is {l} m long and {w} m wide?",
            steps=["Area of a rectangle is length times width.", f"{l} × {w} = {l * w}."],
            answer=f"The area is {l * w} square metres.", short=l * w, title="Rectangle Area")
    p = 2 * (l + w)
    return dict(
        user=f"What is the perimeter of a rectangle that is {l} cm long and {w} cm wide?",
        steps=["Perimeter is 2 × (length + width).", f"2 × ({l} + {w}) = 2 × {l + w} = {p}."],
        answer=f"The perimeter is {p} cm.", short=p, title="Rectangle Perimeter")


def t_average():
    k = rng.randint(3, 5)
    vals = [rng.randint(2, 20) for _ in range(k)]
    # make the mean an integer
    vals[-1] += (-sum(vals)) % k
    s = sum(vals)
    m = s // k
    return dict(
        user=f"What is the average of {', '.join(map(str, vals))}?",
        steps=[f"Sum: {' + '.join(map(str, vals))} = {s}.", f"There are {k} numbers, so {s} / {k} = {m}."],
        answer=f"The average is {m}.", short=m, title="Average Value")


CONVERSIONS = [
    ("kilometres", "metres", 1000), ("metres", "centimetres", 100),
    ("kilograms", "grams", 1000), ("hours", "minutes", 60),
    ("minutes", "seconds", 60), ("litres", "millilitres", 1000),
    ("feet", "inches", 12), ("yards", "feet", 3), ("days", "hours", 24),
    ("weeks", "days", 7), ("inches", "centimetres", 2.54),
]


SINGULAR = {"kilometres": "kilometre", "metres": "metre", "kilograms": "kilogram", "hours": "hour",
            "minutes": "minute", "litres": "litre", "feet": "foot", "yards": "yard", "days": "day",
            "weeks": "week", "inches": "inch"}


def t_convert():
    if rng.random() < 0.2:
        c = rng.choice([-10, 0, 5, 10, 15, 20, 25, 30, 35, 40, 100])
        f = c * 9 // 5 + 32
        return dict(
            user=f"Convert {c} degrees Celsius to Fahrenheit.",
            steps=["The formula is F = C × 9/5 + 32.", f"{c} × 9/5 = {c * 9 // 5}, and {c * 9 // 5} + 32 = {f}."],
            answer=f"{c} °C is {f} °F.", short=f, title="Temperature Conversion")
    a, b, k = pick(CONVERSIONS)
    v = rng.choice([2, 3, 4, 5, 6, 7, 8, 1.5, 2.5, 12])
    r = v * k
    return dict(
        user=f"How many {b} are in {fmt(v)} {a}?",
        steps=[f"There are {fmt(k)} {b} in one {SINGULAR[a]}.",
               f"{fmt(v)} × {fmt(k)} = {fmt(r)}."],
        answer=f"{fmt(v)} {a} is {fmt(r)} {b}.", short=num(r), title="Unit Conversion")


def t_capital():
    c, cap = pick(CAPITALS)
    return dict(
        user=pick([f"What is the capital of {c}?", f"Which city is the capital of {c}?", f"Name the capital city of {c}."]),
        steps=[f"The question asks for the capital of {c}.", f"The capital of {c} is {cap}."],
        answer=f"The capital of {c} is {cap}.", short=cap, title=f"Capital of {c}")


def t_planet():
    i = rng.randrange(8)
    p = PLANETS[i]
    if rng.random() < 0.5:
        return dict(
            user=f"Which planet is {ORDINALS[i]} from the Sun?",
            steps=["The order from the Sun is Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune.",
                   f"Counting to position {i + 1} gives {p}."],
            answer=f"{p} is the {ORDINALS[i]} planet from the Sun.", short=p, title="Planet Order")
    return dict(
        user=f"What position is {p} in the order of planets from the Sun?",
        steps=["The order from the Sun is Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune.",
               f"{p} is number {i + 1} in that list."],
        answer=f"{p} is the {ORDINALS[i]} planet from the Sun.", short=i + 1, title=f"Where Is {p}")


def t_element():
    name, sym, z = pick(ELEMENTS)
    r = rng.random()
    if r < 0.4:
        return dict(
            user=f"What is the chemical symbol for {name}?",
            steps=[f"I recall the periodic table entry for {name}.", f"Its symbol is {sym}."],
            answer=f"The chemical symbol for {name} is {sym}.", short=sym, title="Chemical Symbol")
    if r < 0.7:
        return dict(
            user=f"Which element has the chemical symbol {sym}?",
            steps=[f"The symbol {sym} belongs to {name}.", f"{name.capitalize()} has atomic number {z}."],
            answer=f"{sym} is the symbol for {name}.", short=name, title="Which Element")
    return dict(
        user=f"What is the atomic number of {name}?",
        steps=["The atomic number is the number of protons.", f"{name.capitalize()} ({sym}) has {z} protons."],
        answer=f"The atomic number of {name} is {z}.", short=z, title="Atomic Number")


def t_letters():
    w = pick(LETTER_WORDS)
    r = rng.random()
    if r < 0.5:
        present = sorted(set(w))
        letter = pick(present) if rng.random() < 0.85 else pick([c for c in "zqxjvw" if c not in w])
        cnt = w.count(letter)
        pos = [str(i + 1) for i, c in enumerate(w) if c == letter]
        steps = [f"Spell it out: {'-'.join(w)}."]
        steps.append(f"The letter '{letter}' appears at position{'s' if len(pos) > 1 else ''} {', '.join(pos)}." if pos
                     else f"The letter '{letter}' does not appear at all.")
        return dict(
            user=f"How many times does the letter '{letter}' appear in the word \"{w}\"?",
            steps=steps, answer=f"The letter '{letter}' appears {cnt} time{'s' if cnt != 1 else ''} in \"{w}\".",
            short=cnt, title="Letter Count")
    if r < 0.75:
        return dict(
            user=f"Spell the word \"{w}\" backwards.",
            steps=[f"The letters are {'-'.join(w)}.", f"Reading them from the end: {'-'.join(reversed(w))}."],
            answer=f"\"{w}\" spelled backwards is \"{w[::-1]}\".", short=w[::-1], title="Backwards Spelling")
    return dict(
        user=f"How many letters are in the word \"{w}\"?",
        steps=[f"Spell it out: {'-'.join(w)}.", f"Counting them gives {len(w)}."],
        answer=f"\"{w}\" has {len(w)} letters.", short=len(w), title="Word Length")


def t_sort():
    if rng.random() < 0.5:
        nums = rng.sample(range(1, 100), rng.randint(5, 7))
        desc = rng.random() < 0.4
        s = sorted(nums, reverse=desc)
        order = "largest to smallest" if desc else "smallest to largest"
        return dict(
            user=f"Sort these numbers from {order}: {', '.join(map(str, nums))}.",
            steps=[f"The {'largest' if desc else 'smallest'} is {s[0]} and the {'smallest' if desc else 'largest'} is {s[-1]}.",
                   f"Placing the rest in order gives {', '.join(map(str, s))}."],
            answer=", ".join(map(str, s)), short=", ".join(map(str, s)), title="Sorted Numbers")
    cat = pick(list(CATEGORIES))
    words = rng.sample(CATEGORIES[cat], 5)
    s = sorted(words)
    return dict(
        user=f"Put these words in alphabetical order: {', '.join(words)}.",
        steps=[f"Look at the first letters: {', '.join(w[0] for w in words)}.", f"In alphabetical order: {', '.join(s)}."],
        answer=", ".join(s), short=", ".join(s), title="Alphabetical Order")


def t_define():
    term, d = pick(DEFINITIONS)
    bare = term.split(" ", 1)[1] if term.startswith(("a ", "an ", "the ")) else term
    return dict(
        user=pick([f"What does the word \"{bare}\" mean?", f"Define {bare} in one sentence.", f"Briefly explain what {term} is."]),
        steps=[f"The user wants a short definition of {bare}.", f"Key idea: {d}."],
        answer=f"{term[0].upper() + term[1:]} is {d}.", short=d, title=f"What Is {bare.title()}")


def t_upper():
    s = pick(SENTENCES)
    sent = s[0].upper() + s[1:]
    return dict(
        user=f"Rewrite this sentence in uppercase: \"{sent}\"",
        steps=["I need to change every letter to a capital letter.", "Punctuation stays the same."],
        answer=sent.upper(), short=sent.upper(), title="Uppercase Rewrite", fixed_case=True)


def t_json_fields():
    n, age, city = pick(NAMES), rng.randint(18, 70), pick(CITIES)
    obj = {"name": n, "age": age, "city": city}
    return dict(
        user=f"Format these fields as a JSON object: name {n}, age {age}, city {city}.",
        steps=["I need keys name, age and city.", "The age is a number, so it should not be quoted."],
        answer=json.dumps(obj), short=json.dumps(obj), title="Person Record", is_json=True)


def t_list_items():
    cat = pick(list(CATEGORIES))
    n = rng.randint(3, 5)
    items = rng.sample(CATEGORIES[cat], n)
    return dict(
        user=f"List {n} {cat}.",
        steps=[f"I need exactly {n} {cat}.", f"I will use: {', '.join(items)}."],
        answer=", ".join(x.capitalize() if i == 0 else x for i, x in enumerate(items)) + ".",
        short=", ".join(items), title=cat.title(), items=items)


def t_dayofweek():
    d = rng.randrange(7)
    k = rng.randint(2, 20)
    r = DAYS[(d + k) % 7]
    return dict(
        user=f"If today is {DAYS[d]}, what day of the week will it be in {k} days?",
        steps=[f"A week has 7 days, so {k} days is {plural(k // 7, 'week')} and {plural(k % 7, 'extra day')}.",
               f"Moving {plural(k % 7, 'day')} forward from {DAYS[d]} gives {r}."],
        answer=f"It will be {r}.", short=r, title="Day of the Week")


def t_compare():
    a, b = rng.sample(range(10, 999), 2)
    if rng.random() < 0.5:
        big = max(a, b)
        return dict(
            user=f"Which is larger, {a} or {b}?",
            steps=[f"Compare {a} and {b}.", f"{big} is greater than {min(a, b)}."],
            answer=f"{big} is larger.", short=big, title="Bigger Number")
    parity = "even" if a % 2 == 0 else "odd"
    return dict(
        user=f"Is {a} even or odd?",
        steps=[f"Look at the last digit of {a}, which is {a % 10}.",
               f"{a % 10} is {'even' if a % 2 == 0 else 'odd'}, so {a} is {parity}."],
        answer=f"{a} is {parity}.", short=parity, title="Even or Odd")


def t_wordcount():
    s = pick(SENTENCES)
    sent = s[0].upper() + s[1:]
    words = sent.rstrip(".").split()
    return dict(
        user=f"How many words are in this sentence: \"{sent}\"",
        steps=[f"Split on spaces: {' | '.join(words)}.", f"That is {len(words)} words."],
        answer=f"The sentence has {len(words)} words.", short=len(words), title="Word Count")


TASKS = [
    (t_apples, 2), (t_tickets, 2), (t_change, 2), (t_speed, 1), (t_share, 2),
    (t_discount, 2), (t_age, 1), (t_rect, 2), (t_average, 1), (t_convert, 4),
    (t_capital, 3), (t_planet, 2), (t_element, 3), (t_letters, 4), (t_sort, 3),
    (t_define, 3), (t_upper, 2), (t_json_fields, 2), (t_list_items, 4),
    (t_dayofweek, 2), (t_compare, 2), (t_wordcount, 2),
]
TASK_POOL = [f for f, w in TASKS for _ in range(w)]

# ---------------------------------------------------------------------------
# User-side formatting constraints: (name, request phrasings, think note, applies?, transform)
# ---------------------------------------------------------------------------

END_PHRASES = ["Have a nice day.", "That is all.", "Happy learning!", "Thanks for asking.", "Good luck!"]
PS_LINES = ["P.S. Feel free to ask another question.", "P.S. Thanks for the fun question.",
            "P.S. Let me know if you want more examples."]


def has_letters(text: str) -> bool:
    return any(c.isalpha() for c in text)


def wrap_quotes(text: str) -> str:
    """Wrap in double quotes; inner double quotes become single quotes."""
    return '"' + text.replace('"', "'") + '"'


def end_punct(text: str) -> str:
    return text if text[-1:] in ".!?" else text + "."


def c_lower(t):
    return (pick(["Answer in lowercase.", "Please reply using only lowercase letters.", "Use no capital letters in your reply."]),
            "The reply must be all lowercase.", t["answer"].lower())


def c_upper(t):
    return (pick(["Reply in all capital letters.", "Write your answer in uppercase.", "Use only capital letters."]),
            "The reply must be in capital letters.", t["answer"].upper())


def c_quotes(t):
    return (pick(["Wrap your answer in double quotes.", "Put your whole reply inside double quotation marks."]),
            "I must wrap the whole reply in double quotes.", wrap_quotes(t["answer"]))


def c_end(t):
    p = pick(END_PHRASES)
    return (pick([f"End with the phrase \"{p}\"", f"Finish your reply with \"{p}\""]),
            f"The reply has to end with \"{p}\".", f"{end_punct(t['answer'])} {p}")


def c_json(t):
    return (pick(["Respond in JSON with a single key \"answer\".", "Reply only with a JSON object whose key is \"answer\"."]),
            "The output must be a JSON object with the key \"answer\".",
            json.dumps({"answer": t.get("items") or t["short"]}, ensure_ascii=False))


def c_only(t):
    return (pick(["Give only the final answer, nothing else.", "Just the answer, please, no explanation."]),
            "Only the bare answer is wanted.", str(t["short"]))


def c_title(t):
    return (pick(["Start with a title in double angle brackets, like <<Title>>.", "Add a title wrapped in << and >> on the first line."]),
            f"I will add the title <<{t['title']}>> first.", f"<<{t['title']}>>\n{t['answer']}")


def c_ps(t):
    ps = pick(PS_LINES)
    return (pick(["Add a P.S. at the end.", "Include a short postscript that starts with P.S. after your answer."]),
            "The reply needs a closing note that begins with P.S.", f"{t['answer']}\n\n{ps}")


def c_nocomma(t):
    return (pick(["Do not use any commas.", "Avoid commas in your reply."]),
            "I must not use any commas.", t["answer"])


def c_start(t):
    return (pick(["Begin your reply with \"Answer:\".", "Start your response with the word \"Answer:\"."]),
            "The reply must begin with \"Answer:\".", f"Answer: {t['answer']}")


def c_bullets(t):
    items = t["items"]
    n = len(items)
    return (pick([f"Use exactly {n} bullet points.", f"Format them as {n} markdown bullet points starting with *."]),
            f"I need exactly {n} bullet points, one item each.", "\n".join(f"* {x}" for x in items))


def c_numbered(t):
    items = t["items"]
    return (pick(["Give them as a numbered list.", "Number each item."]),
            "I will write a numbered list.", "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1)))


def c_lines_nocomma(t):
    items = t["items"]
    return (pick(["Do not use any commas; put each on its own line.", "No commas please, one per line."]),
            "No commas, so I put each item on its own line.", "\n".join(items))


def constraint_options(t):
    opts = [c_quotes, c_end, c_json, c_title, c_ps, c_start]
    if not t.get("fixed_case") and has_letters(t["answer"]):
        opts += [c_lower, c_upper]
    if not t.get("is_json"):
        opts += [c_only]
    if "," not in t["answer"]:
        opts += [c_nocomma]
    if t.get("items"):
        opts += [c_bullets, c_bullets, c_numbered, c_lines_nocomma]
        opts = [o for o in opts if o not in (c_only,)]
    if t.get("is_json"):
        opts = [c_title, c_start, c_end]
    return opts


# ---------------------------------------------------------------------------
# System prompts: (system text, think note, transform(task) -> answer or None if n/a)
# ---------------------------------------------------------------------------


def s_hope(t):
    return t["answer"] + "\n\nHope this helps!"


def s_great(t):
    return "Great question! " + t["answer"]


def s_lower(t):
    return None if t.get("fixed_case") or not has_letters(t["answer"]) else t["answer"].lower()


def s_concise(t):
    return t["answer"]


def s_three(t):
    if len(t["steps"]) < 2 or t.get("is_json"):
        return None
    return f"* {t['steps'][0]}\n* {t['steps'][1]}\n* Answer: {t['short']}"


def s_json(t):
    if t.get("is_json"):
        return None
    return json.dumps({"answer": t["short"], "explanation": " ".join(t["steps"])}, ensure_ascii=False)


def s_ahoy(t):
    return "Ahoy! " + t["answer"]


def s_quotes(t):
    return wrap_quotes(t["answer"])


SYSTEMS = [
    ("You are a helpful assistant. Always end with 'Hope this helps!'", "I must end with 'Hope this helps!'.", s_hope),
    ("You are Sunny, a cheerful tutor for kids. Start every reply with 'Great question!'", "As Sunny, I start with 'Great question!'.", s_great),
    ("Reply only in lowercase letters.", "The system asks for lowercase only.", s_lower),
    ("You are a concise assistant. Give the answer in one short line without extra commentary.", "Keep it to one short line.", s_concise),
    ("Answer in exactly three bullet points.", "I need exactly three bullet points.", s_three),
    ("Always respond in JSON with the keys \"answer\" and \"explanation\".", "Output JSON with keys answer and explanation.", s_json),
    ("You are Captain Byte, a pirate-themed helper. Begin every reply with 'Ahoy!'", "As Captain Byte, I begin with 'Ahoy!'.", s_ahoy),
    ("Wrap every reply in double quotes.", "The whole reply goes inside double quotes.", s_quotes),
]

# Follow-up second turns that transform the previous answer.
FOLLOWUPS = [
    ("Now write that in all capital letters.", ["The user wants my previous answer in capital letters.", "I convert every letter to uppercase."],
     lambda t: t["answer"].upper()),
    ("Can you give me just the final value?", ["The user only wants the bare value from my last answer."],
     lambda t: str(t["short"])),
    ("Please put the answer in JSON with the key \"result\".", ["The user wants a JSON object.", "The key is result and the value is the answer."],
     lambda t: json.dumps({"result": t["short"]}, ensure_ascii=False)),
    ("Thanks! Say it again but end with \"Done.\"", ["Repeat the answer and finish with the exact word Done."],
     lambda t: f"{t['answer']} Done."),
]


def _turns(*pairs):
    out = []
    for user, answer in pairs:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return out


# Hand-written rows for the hybrid chat template (appended after the generated
# ones): /think and /no_think flags inside system prompts (the flag selects the
# mode and is not part of the custom instructions), a flag-only system prompt
# (the template's default instructions apply), a persona that overrides the
# default one, and three-turn conversations with reasoning in every turn.
EXTRA_SFT = [
    (False, [{"role": "system", "content": "You are a terse helper who answers with a number only. /no_think"},
             *_turns(("How many legs do 3 spiders have in total?", "24"))]),
    (True, [{"role": "system", "content": "/think Explain like you are talking to a ten-year-old, in two sentences at most."},
            *_turns(("Why does ice float on water?",
                     "<think>\nIce is less dense than liquid water.\nWhen water freezes, its molecules lock into an open pattern "
                     "that takes up more space.\nKeep it to two simple sentences.\n</think>\n\nWhen water freezes, its tiny pieces "
                     "line up in a roomy pattern, so ice is lighter than the same amount of liquid water. That is why ice floats "
                     "on top!"))]),
    (True, [{"role": "system", "content": "/think"},
            *_turns(("What is 15% of 80?", "<think>\n10% of 80 is 8.\n5% of 80 is half of that, 4.\n8 + 4 = 12.\n</think>\n\n15% of 80 is 12."))]),
    (True, [{"role": "system", "content": "You are Pixel, a friendly robot. Your name is Pixel, not SmolLM, and you always sign off "
                                          "with '- Pixel'."},
            *_turns(
                ("How many minutes are there in 7 hours?",
                 "<think>\nOne hour has 60 minutes.\n7 × 60 = 420.\nI sign off as Pixel.\n</think>\n\n7 hours have 420 minutes.\n- Pixel"),
                ("And how many seconds is that?",
                 "<think>\nOne minute has 60 seconds.\n420 × 60 = 25200.\nSign off as Pixel again.\n</think>\n\n"
                 "420 minutes are 25200 seconds.\n- Pixel"),
                ("What is your name?",
                 "<think>\nThe user asks for my name.\nMy instructions say I am Pixel.\n</think>\n\nMy name is Pixel.\n- Pixel"),
            )]),
    (False, [{"role": "system", "content": "Reply in lowercase letters only."},
             *_turns(("Name the largest planet in our solar system.", "jupiter is the largest planet in our solar system."),
                     ("Which planet is closest to the sun?", "mercury is the closest planet to the sun."),
                     ("How many planets are there?", "there are 8 planets in our solar system."))]),
    (False, [{"role": "system", "content": "Answer in one word. /no_think Use a capital first letter."},
             *_turns(("What colour do you get by mixing blue and yellow?", "Green"))]),
]


def assistant(reasoning: bool, steps, final: str) -> str:
    if not reasoning:
        return final
    return "<think>\n" + "\n".join(steps) + "\n</think>\n\n" + final


def n_words(msgs) -> int:
    return sum(len(m["content"].split()) for m in msgs)


def make_turn(reasoning: bool, allow_constraint: bool, constraint_p: float):
    """Returns (user_text, assistant_text, task, constrained?)."""
    t = pick(TASK_POOL)()
    steps = list(t["steps"])
    user, final, constrained = t["user"], t["answer"], False
    if allow_constraint and rng.random() < constraint_p:
        constrained = True
        req, note, final = pick(constraint_options(t))(t)
        user = f"{user} {req}"
        steps.append(note)
    return user, assistant(reasoning, steps, final), t, constrained


def make_sft():
    rng.seed(0)  # each file is independent of edits to the others
    rows, seen = [], set()
    flags = [True] * (N_SFT // 2) + [False] * (N_SFT - N_SFT // 2)
    rng.shuffle(flags)
    i = 0
    while len(rows) < N_SFT:
        reasoning = flags[len(rows)]
        msgs = []
        use_sys = rng.random() < 0.3
        two_turn = rng.random() < 0.25
        if use_sys:
            sys_text, sys_note, sys_fn = pick(SYSTEMS)
            t = pick(TASK_POOL)()
            final = sys_fn(t)
            if final is None:
                continue
            msgs.append({"role": "system", "content": sys_text})
            msgs.append({"role": "user", "content": t["user"]})
            msgs.append({"role": "assistant", "content": assistant(reasoning, t["steps"] + [sys_note], final)})
            first_user = t["user"]
            if two_turn:
                t2 = pick(TASK_POOL)()
                f2 = sys_fn(t2)
                if f2 is None:
                    continue
                msgs.append({"role": "user", "content": t2["user"]})
                msgs.append({"role": "assistant", "content": assistant(reasoning, t2["steps"] + [sys_note], f2)})
        else:
            u, a, t, constrained = make_turn(reasoning, True, 0.6)
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
            first_user = u
            if two_turn:
                if rng.random() < 0.5 and not (constrained or t.get("fixed_case") or t.get("is_json")):
                    q, st, fn = pick(FOLLOWUPS)
                    msgs += [{"role": "user", "content": q},
                             {"role": "assistant", "content": assistant(reasoning, st, fn(t))}]
                else:
                    u2, a2, _, _ = make_turn(reasoning, True, 0.5)
                    msgs += [{"role": "user", "content": u2}, {"role": "assistant", "content": a2}]
        key = (first_user, msgs[0]["content"])
        if key in seen or first_user in {k[0] for k in seen} or n_words(msgs) > 200:
            continue
        seen.add(key)
        i += 1
        rows.append({"id": f"sft-{i:04d}", "reasoning": reasoning, "messages": msgs})
    for reasoning, msgs in EXTRA_SFT:
        i += 1
        rows.append({"id": f"sft-{i:04d}", "reasoning": reasoning, "messages": msgs})
    return rows


# ---------------------------------------------------------------------------
# Midtrain reasoning traces
# ---------------------------------------------------------------------------


def trace(problem: str, steps, answer: str, check: str) -> str:
    body = "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1))
    return f"Problem: {problem}\n\nReasoning:\n{body}\nCheck: {check}\n\nAnswer: {answer}"


def m_shopping():
    who = pick(NAMES)
    picks = rng.sample(ITEMS_PRICED, 3)
    qty = [rng.randint(1, 4) for _ in picks]
    subtotals = [q * p for q, (_, p) in zip(qty, picks)]
    tot = sum(subtotals)
    bill = next(b for b in (20, 50, 100, 200) if b >= tot)
    parts = [f"{q} {plural_noun(n, q)} at ${p} each" for q, (n, p) in zip(qty, picks)]
    desc = ", ".join(parts[:-1]) + ", and " + parts[-1]
    steps = ["Work out the cost of each kind of item separately. "
             + "; ".join(f"{q} × ${p} = ${s}" for q, (_, p), s in zip(qty, picks, subtotals)) + ".",
             f"Add the three amounts: {' + '.join(map(str, subtotals))} = ${tot}. This is the total bill.",
             f"{who} pays with ${bill}, so the change is {bill} - {tot} = ${bill - tot}."]
    return trace(f"{who} goes to a shop and buys {desc}. {who} pays with a ${bill} note. How much does everything cost, and how much change should {who} receive?",
                 steps, f"The total is ${tot} and the change is ${bill - tot}.",
                 f"${tot} + ${bill - tot} = ${bill}, which matches the note that was handed over.")


def m_travel():
    s1, t1 = rng.choice([40, 50, 60, 80]), rng.randint(1, 3)
    s2, t2 = rng.choice([30, 45, 70, 90]), rng.randint(1, 3)
    d1, d2 = s1 * t1, s2 * t2
    d, t = d1 + d2, t1 + t2
    avg = d / t
    eq = "=" if abs(round(avg, 2) * t - d) < 1e-9 else "≈"
    note = ("Because both parts take the same time, this equals the plain average of the two speeds." if t1 == t2 else
            "Note that this is not simply the average of the two speeds, because the time spent at each speed matters.")
    steps = [f"Distance is speed times time. For the first part: {s1} km/h × {t1} h = {d1} km.",
             f"For the second part: {s2} km/h × {t2} h = {d2} km.",
             f"Total distance: {d1} + {d2} = {d} km. Total time: {t1} + {t2} = {t} hours.",
             f"Average speed is total distance divided by total time: {d} / {t} {eq} {fmt(avg)} km/h. " + note]
    return trace(f"A car drives at {s1} km/h for {t1} hour{'s' if t1 > 1 else ''}, then at {s2} km/h for {t2} hour{'s' if t2 > 1 else ''}. What is the total distance, and what is the average speed for the whole trip?",
                 steps, f"The car covers {d} km at an average speed of {'' if eq == '=' else 'about '}{fmt(avg)} km/h.",
                 f"{fmt(avg)} km/h × {t} h {eq} {fmt(avg * t)} km, the same as the total distance{'' if eq == '=' else ' up to rounding'}.")


def m_convert_chain():
    r = rng.random()
    if r < 0.35:
        h = rng.choice([1.5, 2, 2.5, 3, 4, 0.75])
        mins = h * 60
        secs = mins * 60
        steps = [f"There are 60 minutes in an hour, so {fmt(h)} hours is {fmt(h)} × 60 = {fmt(mins)} minutes.",
                 f"There are 60 seconds in a minute, so {fmt(mins)} minutes is {fmt(mins)} × 60 = {fmt(secs)} seconds.",
                 f"Equivalently, one hour has 60 × 60 = 3600 seconds, and {fmt(h)} × 3600 = {fmt(h * 3600)}."]
        return trace(f"How many seconds are there in {fmt(h)} hours?", steps, f"{fmt(h)} hours is {fmt(secs)} seconds.",
                     f"{fmt(secs)} / 3600 = {fmt(secs / 3600)} hours, which is what we started with.")
    if r < 0.7:
        km = rng.choice([0.5, 1.2, 2.4, 3, 0.75, 4.5])
        m = km * 1000
        cm = m * 100
        steps = [f"One kilometre is 1000 metres, so {fmt(km)} km = {fmt(km)} × 1000 = {fmt(m)} m.",
                 f"One metre is 100 centimetres, so {fmt(m)} m = {fmt(m)} × 100 = {fmt(cm)} cm.",
                 "Both steps multiply, so the overall factor is 1000 × 100 = 100000 centimetres per kilometre."]
        return trace(f"Convert {fmt(km)} kilometres into centimetres.", steps, f"{fmt(km)} km is {fmt(cm)} cm.",
                     f"{fmt(cm)} / 100000 = {fmt(cm / 100000)} km, matching the starting value.")
    serves, want = rng.choice([(4, 6), (2, 5), (4, 10), (6, 9), (3, 12)])
    flour = rng.choice([f for f in (200, 300, 240, 180, 120) if f % serves == 0])
    per = flour / serves
    need = per * want
    steps = [f"The recipe uses {flour} g of flour for {serves} people.",
             f"Per person that is {flour} / {serves} = {fmt(per)} g.",
             f"For {want} people we need {fmt(per)} × {want} = {fmt(need)} g.",
             f"Another way: the scale factor is {want} / {serves} = {fmt(want / serves)}, and {flour} × {fmt(want / serves)} = {fmt(flour * want / serves)} g."]
    return trace(f"A pancake recipe for {serves} people needs {flour} grams of flour. How much flour is needed to make pancakes for {want} people?",
                 steps, f"You need {fmt(need)} g of flour.", "Both methods give the same amount, so the answer is consistent.")


def m_order():
    ppl = rng.sample(NAMES, 4)
    attr, comp = pick([("tall", "taller"), ("old", "older"), ("fast", "faster"), ("heavy", "heavier")])
    # true order: ppl[0] > ppl[1] > ppl[2] > ppl[3]
    facts = [f"{ppl[0]} is {comp} than {ppl[1]}", f"{ppl[2]} is {comp} than {ppl[3]}",
             f"{ppl[1]} is {comp} than {ppl[2]}"]
    rng.shuffle(facts)
    sup = {"tall": "tallest", "old": "oldest", "fast": "fastest", "heavy": "heaviest"}[attr]
    least = {"tall": "shortest", "old": "youngest", "fast": "slowest", "heavy": "lightest"}[attr]
    steps = [f"Write each clue as a chain link. We know: {'; '.join(facts)}.",
             f"{ppl[1]} appears on the left of one clue and the right of another, so {ppl[0]} > {ppl[1]} > {ppl[2]}.",
             f"The remaining clue adds {ppl[3]} below {ppl[2]}, giving {ppl[0]} > {ppl[1]} > {ppl[2]} > {ppl[3]}.",
             f"So {ppl[0]} is the {sup} and {ppl[3]} is the {least}."]
    return trace(f"Four friends compare themselves. {'. '.join(facts)}. Who is the {sup}, and who is the {least}?",
                 steps, f"{ppl[0]} is the {sup} and {ppl[3]} is the {least}.",
                 "Every clue agrees with the final order, and no clue is left unused.")


def m_percent():
    p = rng.choice([50, 80, 120, 200, 250, 400])
    up = rng.choice([10, 20, 25, 50])
    down = rng.choice([10, 20, 50])
    a = p * (100 + up) / 100
    b = a * (100 - down) / 100
    steps = [f"An increase of {up}% means multiplying by {fmt(1 + up / 100)}: {p} × {fmt(1 + up / 100)} = {fmt(a)}.",
             f"A decrease of {down}% means multiplying by {fmt(1 - down / 100)}: {fmt(a)} × {fmt(1 - down / 100)} = {fmt(b)}.",
             (f"Compared with the start, the price is {p} - {fmt(b)} = ${money(p - b)} lower." if b < p else
              f"Compared with the start, the price is {fmt(b)} - {p} = ${money(b - p)} higher." if b > p else
              "The final price equals the starting price."),
             "Percent changes apply to the current price, so they cannot simply be added or subtracted."]
    return trace(f"A bike costs ${p}. The price goes up by {up}%, and later the new price is cut by {down}%. What is the final price?",
                 steps, f"The final price is ${money(b)}.", f"{fmt(b)} / {p} = {fmt(b / p)}, which equals {fmt(1 + up / 100)} × {fmt(1 - down / 100)}.")


def m_tiles():
    l, w = rng.randint(3, 8), rng.randint(2, 6)
    price = rng.choice([12, 15, 20, 25])
    area = l * w
    cost = area * price
    steps = [f"The floor is a rectangle, so its area is length × width = {l} × {w} = {area} square metres.",
             f"Each square metre of tiles costs ${price}.",
             f"Total cost = {area} × {price} = ${cost}.",
             f"The perimeter, if skirting board were needed, would be 2 × ({l} + {w}) = {2 * (l + w)} m, but the question only asks about the floor."]
    return trace(f"A kitchen floor measures {l} m by {w} m. Tiles cost ${price} per square metre. How much will it cost to tile the whole floor?",
                 steps, f"Tiling the floor costs ${cost}.", f"{cost} / {price} = {area}, the area we found.")


def m_workrate():
    a, b, t = pick([(3, 6, 2), (4, 12, 3), (6, 12, 4), (10, 15, 6), (12, 24, 8), (2, 6, 1.5), (20, 30, 12)])
    steps = [f"The first hose fills 1/{a} of the pool per hour; the second fills 1/{b} per hour.",
             f"Together they fill 1/{a} + 1/{b} per hour. Using a common denominator, this is ({b} + {a}) / ({a} × {b}) = {a + b}/{a * b}.",
             f"The time is the reciprocal: {a * b}/{a + b} = {fmt(t)} hours.",
             f"This is less than {min(a, b)} hours, which makes sense because two hoses are faster than the faster hose alone."]
    return trace(f"One hose can fill a pool in {a} hours. A second hose can fill it in {b} hours. How long does it take with both hoses running?",
                 steps, f"Both hoses together take {fmt(t)} hours.", f"In {fmt(t)} hours: {fmt(t)}/{a} + {fmt(t)}/{b} = {fmt(t / a + t / b)} pool.")


def m_scores():
    k = rng.randint(3, 4)
    scores = [rng.randint(60, 95) for _ in range(k)]
    target = rng.choice([75, 80, 85])
    need = target * (k + 1) - sum(scores)
    who = pick(NAMES)
    possible = need <= 100
    steps = [f"{who} has {k} scores: {', '.join(map(str, scores))}. Their sum is {sum(scores)}.",
             f"To average {target} over {k + 1} tests, the total must be {target} × {k + 1} = {target * (k + 1)}.",
             f"The next score must be {target * (k + 1)} - {sum(scores)} = {need}.",
             ("That is possible because it is at most 100." if possible else "That is above 100, so it cannot be done.")
             if need > 0 else "Any score will do, since the target is already guaranteed."]
    ans = (f"{who} needs {need} on the next test." if 0 < need <= 100 else
           ("It is impossible, because 100 is the maximum score." if need > 100 else f"{who} will reach the target with any score."))
    return trace(f"{who} scored {', '.join(map(str, scores))} on {k} tests (each out of 100). What score is needed on the next test to make the average exactly {target}?",
                 steps, ans, f"Adding {need} to {sum(scores)} gives {target * (k + 1)}, and {target * (k + 1)} / {k + 1} = {target}.")


def m_sequence():
    a, d, n = rng.randint(1, 20), rng.randint(2, 9), rng.randint(8, 30)
    term = a + (n - 1) * d
    first = [a + i * d for i in range(4)]
    steps = [f"The sequence starts {', '.join(map(str, first))}, ... so each term is {d} more than the one before.",
             f"The first term is {a}. To reach term {n} we add the difference {n - 1} times.",
             f"Term {n} = {a} + ({n} - 1) × {d} = {a} + {(n - 1) * d} = {term}."]
    return trace(f"What is term number {n} of the sequence {', '.join(map(str, first))}, ...?",
                 steps, f"Term {n} is {term}.", f"Counting back: ({term} - {a}) / {d} = {n - 1} steps after the first term.")


def m_clock():
    h, m = rng.randint(6, 20), rng.choice([0, 10, 15, 20, 30, 40, 45, 50])
    dur = rng.randint(35, 200)
    tot = h * 60 + m + dur
    eh, em = divmod(tot, 60)
    steps = [f"Start time {h:02d}:{m:02d} is {h} × 60 + {m} = {h * 60 + m} minutes after midnight.",
             f"Add the duration: {h * 60 + m} + {dur} = {tot} minutes.",
             f"Convert back: {eh} × 60 = {eh * 60}, and {tot} - {eh * 60} = {em}, so that is {eh} hours and {em} minutes.",
             f"So the end time is {eh:02d}:{em:02d}."]
    what = pick(["A film", "A football match", "A baking session", "A train journey"])
    return trace(f"{what} starts at {h:02d}:{m:02d} and lasts {dur} minutes. At what time does it end?",
                 steps, f"It ends at {eh:02d}:{em:02d}.", f"From {h:02d}:{m:02d} to {eh:02d}:{em:02d} is {(eh * 60 + em) - (h * 60 + m)} minutes.")


def m_syllogism():
    groups = [("robins", "birds", "animals"), ("tulips", "flowers", "plants"), ("violins", "string instruments", "musical instruments"),
              ("squares", "rectangles", "four-sided shapes"), ("salmon", "fish", "animals that live in water"),
              ("oaks", "trees", "plants")]
    a, b, c = pick(groups)
    return trace(f"All {a} are {b}. All {b} are {c}. Does it follow that all {a} are {c}? Also, does it follow that all {c} are {a}?",
                 [f"The first statement puts every one of the {a} inside the group of {b}.",
                  f"The second statement puts every one of the {b} inside the group of {c}.",
                  f"So anything that is one of the {a} is also one of the {b}, and therefore also one of the {c}. The first conclusion follows.",
                  f"The reverse does not follow: there can be {c} that are not {b} at all, so they are not {a} either."],
                 f"Yes, all {a} are {c}; no, not all {c} are {a}.",
                 "Drawing the groups as circles nested inside each other shows the same result.")


def m_ages():
    k = rng.randint(2, 4)
    child = rng.randint(4, 12)
    parent = child * k
    diff = parent - child
    # years until parent is twice the child's age: parent + x = 2(child + x) -> x = parent - 2*child
    x = parent - 2 * child
    who = pick(NAMES)
    steps = [f"{who} is {child} and the mother is {k} times as old, so she is {k} × {child} = {parent}.",
             f"The age difference is always {parent} - {child} = {diff} years.",
             f"The mother is exactly twice as old when the child's age equals the difference, {diff}.",
             (f"That happens in {diff} - {child} = {x} years." if x > 0 else "That is true right now." if x == 0 else
              f"That happened {-x} years ago.")]
    ans = (f"In {x} years, when {who} is {diff} and the mother is {2 * diff}." if x > 0 else
           "Right now." if x == 0 else f"{-x} years ago, when {who} was {diff} and the mother was {2 * diff}.")
    return trace(f"{who} is {child} years old and {who}'s mother is {k} times as old. When is (or was) the mother exactly twice as old as {who}?",
                 steps, ans, f"At that time the ages are {diff} and {2 * diff}, and {2 * diff} = 2 × {diff}.")


MID_TASKS = [m_shopping, m_travel, m_convert_chain, m_order, m_percent, m_tiles,
             m_workrate, m_scores, m_sequence, m_clock, m_syllogism, m_ages]


def make_midtrain():
    rng.seed(0)  # each file is independent of edits to the others
    rows, seen = [], set()
    while len(rows) < N_MID:
        text = MID_TASKS[len(rows) % len(MID_TASKS)]()
        words = len(text.split())
        if text in seen or not (60 <= words <= 200):
            continue
        seen.add(text)
        rows.append({"id": f"mid-{len(rows) + 1:04d}", "text": text})
    return rows


# ---------------------------------------------------------------------------
# Preference-generation prompts (IFEval schema)
# ---------------------------------------------------------------------------

# (task, keywords that fit the topic, words a writer would naturally reach for)
TOPICS = [
    ("Describe a cat to someone who has never seen one.", ["whiskers", "purr"], ["fur", "pet"]),
    ("Give me some tips for falling asleep faster.", ["bedtime", "screen"], ["sleep", "relax"]),
    ("Explain to a seven-year-old why it rains.", ["clouds", "droplets"], ["water", "sky"]),
    ("Tell me how to make a simple cup of tea.", ["kettle", "steep"], ["hot", "cup"]),
    ("Describe what a busy morning at a train station looks like.", ["platform", "coffee"], ["train", "people"]),
    ("Suggest a few ways to keep a small balcony garden healthy.", ["sunlight", "pots"], ["plants", "water"]),
    ("Explain how a bicycle stays upright while moving.", ["balance", "wheels"], ["bike", "speed"]),
    ("Write a short note thanking a neighbour for feeding my fish.", ["grateful", "aquarium"], ["thanks", "fish"]),
    ("Describe the taste of a ripe mango.", ["sweet", "juicy"], ["fruit", "yellow"]),
    ("Give advice for someone starting to jog for the first time.", ["shoes", "pace"], ["run", "running"]),
    ("Explain why the sky looks orange at sunset.", ["light", "horizon"], ["sun", "colors"]),
    ("Describe a rainy Sunday afternoon at home.", ["blanket", "window"], ["rain", "cozy"]),
    ("List some things to pack for a weekend camping trip.", ["tent", "flashlight"], ["bag", "food"]),
    ("Explain how to wash a wool sweater without ruining it.", ["cold", "flat"], ["wash", "water"]),
    ("Tell a toddler why we brush our teeth.", ["germs", "smile"], ["teeth", "brush"]),
    ("Describe the sound of the ocean at night.", ["waves", "hush"], ["water", "beach"]),
    ("Give tips for remembering people's names at a party.", ["repeat", "face"], ["name", "remember"]),
    ("Explain what a library card lets you do.", ["borrow", "books"], ["library", "free"]),
    ("Describe a friendly golden retriever meeting a new person.", ["tail", "wag"], ["dog", "happy"]),
    ("Suggest a simple breakfast that takes less than ten minutes.", ["oats", "banana"], ["quick", "easy"]),
    ("Explain to a child how a seed grows into a plant.", ["roots", "sprout"], ["grow", "soil"]),
    ("Describe the smell of fresh bread in a bakery.", ["crust", "warm"], ["bread", "smell"]),
    ("Give tips for keeping a tidy desk.", ["drawer", "labels"], ["clean", "desk"]),
    ("Explain why leaves change colour in autumn.", ["chlorophyll", "red"], ["trees", "fall"]),
    ("Write a short welcome message for a new coworker.", ["team", "lunch"], ["welcome", "happy"]),
    ("Describe what snow feels like to someone from a hot country.", ["cold", "crunch"], ["white", "soft"]),
    ("Give advice on saving a little money each week.", ["budget", "jar"], ["money", "save"]),
    ("Explain how a refrigerator keeps food cold.", ["heat", "coils"], ["cold", "food"]),
    ("Describe a sunflower field in summer.", ["petals", "bees"], ["yellow", "sun"]),
    ("Give tips for a first visit to a farmers market.", ["cash", "seasonal"], ["market", "fresh"]),
    ("Explain to a kid why the moon changes shape.", ["phases", "shadow"], ["moon", "night"]),
    ("Describe a quiet walk through a pine forest.", ["needles", "path"], ["trees", "green"]),
    ("Suggest ways to stay cool on a very hot day.", ["shade", "fan"], ["hot", "water"]),
    ("Explain how to plant a tomato seedling in a pot.", ["soil", "stake"], ["plant", "water"]),
    ("Write a short birthday message for a grandparent.", ["love", "memories"], ["birthday", "happy"]),
    ("Describe what makes a good cup of hot chocolate.", ["cocoa", "milk"], ["sweet", "hot"]),
    ("Give tips for learning to juggle three balls.", ["toss", "rhythm"], ["ball", "practice"]),
    ("Explain why we have day and night.", ["spins", "axis"], ["sun", "earth"]),
    ("Describe a thunderstorm from inside a tent.", ["lightning", "canvas"], ["rain", "loud"]),
    ("Suggest fun things to do on a snowy day.", ["sled", "snowman"], ["snow", "fun"]),
    ("Explain how bees make honey.", ["nectar", "hive"], ["bees", "flowers"]),
    ("Describe an old wooden rocking chair.", ["creak", "porch"], ["wood", "old"]),
    ("Give tips for keeping houseplants alive while on vacation.", ["neighbor", "self-watering"], ["water", "plants"]),
    ("Explain to a child why we should recycle.", ["bottles", "planet"], ["trash", "recycle"]),
    ("Describe a busy kitchen during dinner time.", ["pans", "steam"], ["cook", "food"]),
    ("Suggest a short stretching routine for office workers.", ["neck", "shoulders"], ["stretch", "desk"]),
    ("Explain how a rainbow forms.", ["prism", "droplets"], ["colors", "rain"]),
    ("Describe a lighthouse on a foggy evening.", ["beam", "rocks"], ["light", "sea"]),
    ("Give advice for a child's first day at a new school.", ["friends", "teacher"], ["school", "nervous"]),
    ("Explain why we should drink water during exercise.", ["sweat", "energy"], ["water", "body"]),
    ("Describe a market stall selling spices.", ["cumin", "saffron"], ["spices", "smell"]),
    ("Suggest ways to make a long car ride fun for kids.", ["games", "snacks"], ["car", "bored"]),
    ("Explain how to fold a paper airplane.", ["crease", "wings"], ["paper", "fold"]),
    ("Describe the first warm day of spring.", ["blossoms", "breeze"], ["warm", "sun"]),
    ("Give tips for cooking rice so it is not sticky.", ["rinse", "lid"], ["rice", "water"]),
    ("Explain to a child what a volcano is.", ["lava", "mountain"], ["hot", "fire"]),
    ("Describe a cozy reading corner.", ["cushion", "lamp"], ["books", "comfortable"]),
    ("Suggest ways to be kind to a new neighbour.", ["cookies", "introduce"], ["nice", "friendly"]),
    ("Explain how a compass helps you find your way.", ["needle", "north"], ["direction", "magnet"]),
    ("Describe a hedgehog searching for food at night.", ["snuffle", "beetles"], ["spiky", "small"]),
    ("Give tips for writing a neat shopping list.", ["aisles", "categories"], ["list", "buy"]),
    ("Explain why ice floats on water.", ["density", "lighter"], ["ice", "cold"]),
    ("Describe the view from the top of a hill at sunrise.", ["valley", "mist"], ["sun", "beautiful"]),
    ("Suggest a few indoor games for a rainy afternoon.", ["cards", "charades"], ["fun", "play"]),
    ("Explain how to take care of a pet goldfish.", ["tank", "flakes"], ["fish", "water"]),
    ("Describe a picnic by a lake.", ["basket", "ducks"], ["food", "grass"]),
    ("Give advice for practicing the piano every day.", ["scales", "timer"], ["practice", "music"]),
    ("Explain to a child why we wear seat belts.", ["safe", "brake"], ["car", "crash"]),
    ("Describe an owl hunting in the dark.", ["silent", "talons"], ["bird", "night"]),
    ("Suggest ways to use up leftover vegetables.", ["soup", "stir-fry"], ["vegetables", "cook"]),
    ("Explain how a kite flies.", ["wind", "string"], ["fly", "air"]),
    ("Describe a crowded beach in August.", ["umbrellas", "sandcastles"], ["sand", "hot"]),
    ("Give tips for staying focused while studying.", ["breaks", "phone"], ["study", "focus"]),
    ("Explain why bread goes stale.", ["moisture", "starch"], ["bread", "dry"]),
    ("Describe a snail crossing a garden path.", ["shell", "trail"], ["slow", "slimy"]),
    ("Suggest a relaxing evening routine after work.", ["bath", "journal"], ["relax", "tired"]),
    ("Explain how to care for a new pair of leather boots.", ["polish", "brush"], ["leather", "shoes"]),
    ("Describe a city park in early autumn.", ["benches", "squirrels"], ["leaves", "trees"]),
    ("Give tips for making new friends as an adult.", ["clubs", "volunteer"], ["friends", "people"]),
    ("Explain to a child how a thermometer works.", ["liquid", "rises"], ["hot", "temperature"]),
    ("Describe the inside of a small bakery at dawn.", ["oven", "flour"], ["bread", "early"]),
    ("Suggest ways to reduce plastic use at home.", ["reusable", "glass"], ["plastic", "bags"]),
]

PG_END = ["Thanks for reading.", "That wraps it up.", "Stay curious my friend.", "Hope that was useful.",
          "End of my answer.", "Over and out."]

PG_PRIMARY = [
    "change_case:english_lowercase", "change_case:english_capital", "punctuation:no_comma",
    "detectable_format:number_bullet_lists", "startend:end_checker", "startend:quotation",
    "detectable_format:title", "keywords:existence", "keywords:forbidden_words",
    "length_constraints:number_words", "detectable_format:json_format",
    "detectable_content:postscript", "length_constraints:number_sentences",
]

# Pairs that must not appear together (contradictory or awkward to check jointly).
PG_CONFLICTS = {
    frozenset(p) for p in [
        ("change_case:english_lowercase", "change_case:english_capital"),
        ("change_case:english_lowercase", "detectable_content:postscript"),
        ("change_case:english_capital", "detectable_content:postscript"),
        ("startend:quotation", "startend:end_checker"),
        ("startend:quotation", "detectable_content:postscript"),
        ("startend:quotation", "detectable_format:title"),
        ("startend:quotation", "detectable_format:number_bullet_lists"),
        ("startend:end_checker", "detectable_content:postscript"),
        ("length_constraints:number_words", "length_constraints:number_sentences"),
        ("detectable_format:number_bullet_lists", "length_constraints:number_sentences"),
        ("keywords:existence", "keywords:forbidden_words"),
        ("detectable_content:postscript", "length_constraints:number_sentences"),
    ]
}
# json_format is only combined with keyword constraints (matches lm-eval's conflict table).
PG_JSON_OK = {"keywords:existence", "keywords:forbidden_words"}


def quote_list(ws):
    return " and ".join(f"\"{w}\"" for w in ws)


def pg_instruction(iid, topic):
    """Return (request_text, kwargs) for an instruction id, phrased in our own words."""
    _, kw, forbid = topic
    if iid == "change_case:english_lowercase":
        return pick(["Use only lowercase letters in the whole reply.", "Keep every letter small: no capitals at all, not even at the start of sentences.",
                     "Type it entirely in lowercase."]), {}
    if iid == "change_case:english_capital":
        return pick(["Type the whole reply in CAPITAL LETTERS.", "Every letter of your reply should be uppercase.",
                     "Shout it: write everything in caps, in English."]), {}
    if iid == "punctuation:no_comma":
        return pick(["Do not use a single comma anywhere.", "Avoid commas completely.", "Your reply must contain zero commas."]), {}
    if iid == "detectable_format:number_bullet_lists":
        n = rng.choice([2, 3, 4, 5])
        return pick([f"Format it as exactly {n} markdown bullets, each line starting with an asterisk.",
                     f"Give precisely {n} points as a bulleted list using '* ' at the start of each line.",
                     f"I want {n} bullet points, no more and no fewer."]), {"num_bullets": n}
    if iid == "startend:end_checker":
        p = pick(PG_END)
        return pick([f"The final words of your reply must be \"{p}\" with nothing after them.",
                     f"Close with the exact sentence \"{p}\""]), {"end_phrase": p}
    if iid == "startend:quotation":
        return pick(["Put the entire reply inside one pair of double quotation marks.", "Enclose everything you write in double quotes."]), {}
    if iid == "detectable_format:title":
        return pick(["Begin with a title placed inside double angle brackets, like <<My Title>>.",
                     "Give it a heading wrapped as <<heading>> at the top."]), {}
    if iid == "keywords:existence":
        return pick([f"Be sure to use the words {quote_list(kw)}.", f"Mention {quote_list(kw)} somewhere in your reply."]), {"keywords": list(kw)}
    if iid == "keywords:forbidden_words":
        either = " or ".join(f"\"{w}\"" for w in forbid)
        return pick([f"Do not use the words {either}.", f"Avoid saying {either}."]), {"forbidden_words": list(forbid)}
    if iid == "length_constraints:number_words":
        if rng.random() < 0.5:
            n = rng.choice([30, 40, 50, 60, 80])
            return pick([f"Keep it under {n} words.", f"Use fewer than {n} words in total."]), {"relation": "less than", "num_words": n}
        n = rng.choice([40, 60, 80, 100, 120])
        return pick([f"Write {n} words or more.", f"Make it at least {n} words long."]), {"relation": "at least", "num_words": n}
    if iid == "detectable_format:json_format":
        return pick(["Return the reply as valid JSON only.", "Format the whole reply as a JSON object, nothing outside it."]), {}
    if iid == "detectable_content:postscript":
        m = rng.choice(["P.S.", "P.P.S"])
        return pick([f"After the main part, add a short note that begins with \"{m}\".",
                     f"End with an extra remark starting with \"{m}\"."]), {"postscript_marker": m}
    if iid == "length_constraints:number_sentences":
        if rng.random() < 0.5:
            n = rng.choice([2, 3, 4])
            return pick([f"Use fewer than {n} sentences.", f"Say it in less than {n} sentences."]), {"relation": "less than", "num_sentences": n}
        n = rng.choice([3, 4, 5, 6])
        return pick([f"Write {n} sentences or more.", f"Use at least {n} sentences."]), {"relation": "at least", "num_sentences": n}
    raise KeyError(iid)


def compatible(a, b):
    if a == b or frozenset((a, b)) in PG_CONFLICTS:
        return False
    if "detectable_format:json_format" in (a, b):
        other = b if a == "detectable_format:json_format" else a
        return other in PG_JSON_OK
    return True


def make_prefgen():
    rng.seed(0)  # each file is independent of edits to the others
    rows = []
    topics = list(TOPICS)
    rng.shuffle(topics)
    for i, topic in enumerate(topics):
        ids = [PG_PRIMARY[i % len(PG_PRIMARY)]]
        if rng.random() < 0.55:
            cands = [c for c in PG_PRIMARY if compatible(ids[0], c)]
            ids.append(pick(cands))
        reqs, kwargs = [], []
        for iid in ids:
            text, kw = pg_instruction(iid, topic)
            reqs.append(text)
            kwargs.append(kw)
        rows.append({"key": i + 1, "prompt": " ".join([topic[0]] + reqs),
                     "instruction_id_list": ids, "kwargs": kwargs})
    return rows


def write_jsonl(name, rows):
    path = OUT_DIR / name
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def main():
    sft = make_sft()
    mid = make_midtrain()
    pg = make_prefgen()
    for name, rows in [("sft.jsonl", sft), ("midtrain.jsonl", mid), ("prefgen_prompts.jsonl", pg)]:
        p = write_jsonl(name, rows)
        print(f"{p.relative_to(OUT_DIR.parent.parent)}: {len(rows)} rows, {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
