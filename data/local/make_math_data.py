#!/usr/bin/env python3
"""Generate ``src/posttrain/eval/data/math.jsonl`` (shipped with posttrain): grade-school word problems for the math eval.

Stdlib only and fully deterministic (a single ``random.Random(0)``); running

    python data/local/make_math_data.py

rewrites the file byte-for-byte identically every time. Rows are
``{"id": "math-001", "question": "...", "answer": "42"}``.

The problems are multi-step stories (shopping with change, travel times,
filling tanks, sharing, discounts with tax, ages, unit conversion, fractions of
a whole, saving up, averages, work rates, probabilities) written for posttrain,
not taken from GSM8K. Every answer is computed here with exact fractions and
written as an integer, a terminating decimal ("12.5") or a fraction in lowest
terms ("3/8"). The templates differ from the one-step arithmetic in
``sft.jsonl`` so the eval does not test the training prompts.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "src" / "posttrain" / "eval" / "data" / "math.jsonl"
N_PROBLEMS = 60

rng = random.Random(0)

PEOPLE = [("Amara", "she"), ("Diego", "he"), ("Priya", "she"), ("Jonas", "he"), ("Keiko", "she"), ("Malik", "he"),
          ("Sofia", "she"), ("Tariq", "he"), ("Helga", "she"), ("Bruno", "he"), ("Ines", "she"), ("Pavel", "he"),
          ("Lucia", "she"), ("Emeka", "he"), ("Greta", "she"), ("Arjun", "he")]
GADGETS = [("skateboard", 96), ("telescope", 150), ("keyboard", 84), ("tent", 130), ("camera", 210), ("guitar", 175)]


def answer_text(x: Fraction) -> str:
    """An integer, an exact terminating decimal, or p/q in lowest terms."""
    if x.denominator == 1:
        return str(x.numerator)
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return f"{x.numerator}/{x.denominator}"
    return format(Decimal(x.numerator) / Decimal(x.denominator), "f")  # exact: the expansion terminates


def dollars(x: Fraction) -> str:
    return f"{float(x):.2f}" if x.denominator != 1 else str(x.numerator)


def person():
    return rng.choice(PEOPLE)


def market():
    name, pr = person()
    jars, loaves = rng.randint(2, 5), rng.randint(2, 4)
    jar = Fraction(rng.randint(12, 30), 4)  # prices in quarters of a dollar
    loaf = Fraction(rng.randint(8, 20), 4)
    cost = jars * jar + loaves * loaf
    bill = 50 if cost < 50 else 100
    q = (f"At the farmers' market, {name} picks up {jars} jars of honey at ${dollars(jar)} per jar and {loaves} "
         f"loaves of rye bread at ${dollars(loaf)} per loaf. {pr.capitalize()} pays with a ${bill} note. "
         f"How many dollars of change should {pr} get back?")
    return q, bill - cost


def cycling():
    name, pr = person()
    s1, t1 = rng.choice([12, 15, 18, 20, 24]), rng.choice([2, 3, 4])
    distance = s1 * t1
    s2 = rng.choice([s for s in (8, 10, 16, 25, 30, 32, 40) if s != s1])
    q = (f"{name} cycles from home to a lake at {s1} kilometers per hour, and the ride takes {t1} hours. "
         f"Coming home along the same road, {pr} rides at {s2} kilometers per hour. How many hours does the ride home take?")
    return q, Fraction(distance, s2)


def tank():
    fill, leak = rng.randint(9, 20), rng.randint(2, 6)
    minutes = rng.randint(8, 30)
    volume = (fill - leak) * minutes
    q = (f"An empty water tank holds {volume} liters. A pump pours in {fill} liters every minute, but a crack lets "
         f"{leak} liters drain out every minute. How many minutes does it take to fill the tank?")
    return q, Fraction(minutes)


def muffins():
    name, pr = person()
    trays, per_tray, friends = rng.randint(2, 5), rng.choice([6, 8, 12]), rng.randint(3, 9)
    each = rng.randint(2, 5)
    keep = trays * per_tray - friends * each
    if keep < 1:
        return muffins()
    q = (f"{name} bakes {trays} trays of muffins with {per_tray} muffins on each tray. {pr.capitalize()} keeps {keep} "
         f"muffins at home and shares the rest equally among {friends} teammates. How many muffins does each teammate get?")
    return q, Fraction(each)


def sale_with_tax():
    price = rng.choice(range(20, 201, 20))
    off, tax = rng.choice([10, 15, 20, 25, 30, 40, 50]), rng.choice([5, 8, 10])
    q = (f"A board game normally costs ${price}. This week the store takes {off}% off the price, and then sales tax "
         f"of {tax}% is added to the reduced price. How many dollars does the game cost in total?")
    return q, Fraction(price * (100 - off) * (100 + tax), 10000)


def orchard():
    rows, trees, kilos, box = rng.randint(4, 12), rng.randint(5, 15), rng.randint(6, 20), rng.choice([4, 5, 6, 8])
    q = (f"An orchard has {rows} rows of plum trees with {trees} trees in each row. Each tree gives {kilos} kilograms "
         f"of plums. The plums are packed into crates that hold {box} kilograms each. How many crates can be filled completely?")
    return q, Fraction(rows * trees * kilos // box)


def ages():
    (a, _), (b, _) = rng.sample(PEOPLE, 2)
    young, gap, later = rng.randint(4, 20), rng.randint(2, 30), rng.randint(2, 10)
    total = 2 * young + gap + 2 * later
    q = (f"{a} is {gap} years older than {b}. In {later} years, their ages will add up to {total}. How old is {b} now?")
    return q, Fraction(young)


def laps():
    name, pr = person()
    track, count, walk = rng.choice([200, 250, 400, 500]), rng.randint(3, 25), rng.choice([300, 600, 750])
    q = (f"{name} runs {count} laps around a track that is {track} meters long, then walks another {walk} "
         f"meters to cool down. How many kilometers does {pr} cover altogether?")
    return q, Fraction(count * track + walk, 1000)


def reading():
    name, pr = person()
    first, second = rng.choice([3, 4, 5]), rng.choice([2, 3, 4])
    pages = first * second * rng.randint(6, 20)
    rest = pages - pages // first
    left = rest - rest // second
    q = (f"A novel has {pages} pages. On Saturday {name} reads 1/{first} of the book, and on Sunday {pr} reads 1/{second} "
         f"of the pages that were still left. How many pages has {pr} not read yet?")
    return q, Fraction(left)


def saving():
    name, pr = person()
    item, cost = rng.choice(GADGETS)
    has, earn, spend = rng.randint(10, 40), rng.randint(15, 30), rng.randint(2, 10)
    weekly = earn - spend
    weeks = -(-(cost - has) // weekly)  # ceiling division: a part week is not enough
    q = (f"{name} wants a {item} that costs ${cost}. {pr.capitalize()} has already saved ${has}. Each week {pr} earns "
         f"${earn} walking dogs and spends ${spend} of it on snacks. After how many weeks will {pr} first have enough "
         f"money for the {item}?")
    return q, Fraction(weeks)


def quizzes():
    name, pr = person()
    scores = [rng.randint(60, 98) for _ in range(3)]
    target = rng.randint(75, 92)
    need = 4 * target - sum(scores)
    if not 40 <= need <= 100:
        return quizzes()
    q = (f"{name} scored {scores[0]}, {scores[1]} and {scores[2]} on the first three quizzes of the term. What score does "
         f"{pr} need on the fourth quiz to have an average of exactly {target}?")
    return q, Fraction(need)


def painters():
    crew, hours = rng.randint(2, 6), rng.randint(3, 12)
    other = rng.choice([c for c in (2, 3, 4, 5, 8, 10) if c != crew])
    q = (f"{crew} painters working together finish painting a school hallway in {hours} hours. If {other} painters "
         f"work at the same rate, how many hours will the same job take them?")
    return q, Fraction(crew * hours, other)


def marbles():
    red, green, blue = rng.randint(2, 12), rng.randint(2, 12), rng.randint(2, 12)
    q = (f"A jar holds {red} red, {green} green and {blue} blue marbles. One marble is picked without looking. "
         f"What is the probability that it is not green? Give the answer as a fraction in lowest terms.")
    p = Fraction(red + blue, red + green + blue)
    return q, f"{p.numerator}/{p.denominator}"  # asked for as a fraction, even where a decimal would terminate


TEMPLATES = [market, cycling, tank, muffins, sale_with_tax, orchard, ages, laps, reading, saving, quizzes, painters, marbles]


def make_rows() -> list[dict]:
    rng.seed(0)  # the same rows on every call
    rows, seen = [], set()
    while len(rows) < N_PROBLEMS:
        template = TEMPLATES[len(rows) % len(TEMPLATES)]
        question, answer = template()
        if question in seen:
            continue
        seen.add(question)
        text = answer if isinstance(answer, str) else answer_text(answer)
        rows.append({"id": f"math-{len(rows) + 1:03d}", "question": question, "answer": text})
    return rows


def main() -> None:
    rows = make_rows()
    with OUT.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{OUT.name}: {len(rows)} rows, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
