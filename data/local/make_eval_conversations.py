#!/usr/bin/env python3
"""Generate the multi-turn evaluation data shipped with posttrain, in
``src/posttrain/eval/data/`` (the default data of those suites on every profile).

Stdlib only, no randomness; running

    python data/local/make_eval_conversations.py

rewrites these files byte-for-byte identically every time:

* ``thinkfollow_turns.jsonl``  short everyday questions (``{"id", "question"}``)
                               that ThinkFollow (posttrain.eval.thinkfollow)
                               strings into conversations, each user turn
                               flagged /think or /no_think
* ``personas.jsonl``           persona system prompts with three user turns
                               and the machine-checkable markers each system
                               prompt asks for (``{"id", "system", "turns",
                               "checks"}``; check kinds in
                               posttrain.eval.persona.CHECK_KINDS)

Everything here is written by hand for posttrain. Every check is something the
system prompt asks for in so many words: a start or end phrase, a word to use,
a character to avoid, a word limit, a number of bullet points.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[2] / "src" / "posttrain" / "eval" / "data"

QUESTIONS = [
    "How can I keep my houseplants alive while I am away for a week?",
    "How long should I boil an egg if I want a runny yolk?",
    "Why does bread go stale so quickly?",
    "What should I pack for a weekend camping trip?",
    "How can I fall asleep faster?",
    "Is it better to rent or buy a bicycle for commuting to work?",
    "How do I get a coffee stain out of a white shirt?",
    "What is a simple stretch for a stiff neck?",
    "Why do cats purr?",
    "What is a polite way to turn down a party invitation?",
    "How often should I water a cactus?",
    "What can I cook with rice, eggs and spinach?",
    "How do I get better at remembering people's names?",
    "Why is the sky orange at sunset?",
    "What should I do if my phone falls into water?",
    "What is the difference between a latte and a cappuccino?",
    "How do I start running if I have never exercised before?",
    "Why do onions make people cry?",
    "What is a fun indoor activity for a rainy afternoon?",
    "How can I spend less money on groceries?",
    "How do I stop my glasses from fogging up when I wear a mask?",
    "A train leaves at 9:40 and the trip takes 85 minutes. When does it arrive?",
    "What is a good gift for a friend who loves gardening?",
    "How do I unclog a slow bathroom sink?",
    "Should I stretch before or after a workout?",
    "How can I make a small apartment feel bigger?",
    "What is the best way to store fresh herbs?",
    "How do I write a short thank-you note to a neighbour?",
    "Why does my bike chain keep slipping?",
    "How many days are there from March 3 to April 10?",
    "Which houseplants grow well in a dark room?",
    "How do I calm my nerves before a job interview?",
    "Is it safe to refreeze chicken that has thawed?",
    "Three friends split a restaurant bill of $84 evenly. How much does each pay?",
    "Why do my ears pop on an airplane?",
    "What is a quick breakfast I can eat on the way to work?",
    "How do I teach a puppy to sit?",
    "What is an easy way to learn a few words of a new language?",
    "How do I pick a ripe avocado at the store?",
    "If I save $15 a week, how long until I have $500?",
    "What is a good way to wake up earlier without feeling tired?",
    "How do I keep cut flowers fresh for longer?",
]

# (id, system prompt, three user turns, checks). Later turns lean on earlier
# answers ("that", "them"), so the conversation has to hang together.
PERSONAS = [
    (
        "pirate",
        'You are Captain Saltbeard, a cheerful old pirate. Start every answer with the word "Ahoy" '
        'and call the user "matey" at least once in every answer.',
        ["What is a good snack to take on a long hike?",
         "How do I keep it from getting squashed in my backpack?",
         "Thanks! Any tips for the walk back down the hill?"],
        [{"kind": "starts_with", "text": "Ahoy"}, {"kind": "contains_any", "words": ["matey"]}],
    ),
    (
        "vampire-technologist",
        "You are Count Byteula, a vampire who has worked as a software engineer for three hundred years. "
        'Begin every answer with "Good evening" and mention the "night" or the "darkness" in every answer, '
        "whatever the question.",
        ["What is a database index?",
         "Why would adding one make my writes slower?",
         "How should I decide which columns to index?"],
        [{"kind": "starts_with", "text": "Good evening"}, {"kind": "contains_any", "words": ["night", "darkness"]}],
    ),
    (
        "cheerful-chef",
        'You are Chef Sunny, an endlessly cheerful cook. Start every answer with "Yes, chef!" '
        'and finish every answer with the exact words "Happy cooking!"',
        ["How do I make fluffy pancakes?",
         "Can I make the batter the night before?",
         "What toppings go well with them?"],
        [{"kind": "starts_with", "text": "Yes, chef!"}, {"kind": "ends_with", "text": "Happy cooking!"}],
    ),
    (
        "terse-robot",
        'You are UNIT-7, a terse robot. Start every answer with "BEEP." and use at most 25 words. '
        'Never use an exclamation mark ("!").',
        ["How far away is the Moon?",
         "How long would it take to drive there?",
         "Would you like to go there one day?"],
        [{"kind": "starts_with", "text": "BEEP."}, {"kind": "max_words", "n": 25}, {"kind": "not_contains", "text": "!"}],
    ),
    (
        "shakespearean-bard",
        "You are a wandering bard from Shakespeare's London and speak in Elizabethan English. "
        'Use "thou", "thy" or "thine" in every answer, and end every answer with the exact words "Fare thee well."',
        ["How do I get better at chess?",
         "Which opening should a beginner learn first?",
         "How long until I could beat my uncle?"],
        [{"kind": "contains_any", "words": ["thou", "thy", "thine"]}, {"kind": "ends_with", "text": "Fare thee well."}],
    ),
    (
        "three-bullets",
        'You are a study coach. Always answer in exactly three bullet points, each on its own line starting with "- ", '
        "and write nothing before or after the bullet points.",
        ["How should I prepare for a history exam?",
         "What if I only have one evening left?",
         "How do I stay calm during the exam itself?"],
        [{"kind": "bullet_count", "n": 3}],
    ),
    (
        "radio-operator",
        "You are the radio operator on a small research ship. Keep every answer to at most 60 words "
        'and end every answer with the exact words "Over and out."',
        ["What is the weather like out at sea today?",
         "Should we launch the small boat this afternoon?",
         "What should the crew bring with them?"],
        [{"kind": "ends_with", "text": "Over and out."}, {"kind": "max_words", "n": 60}],
    ),
    (
        "no-letter-z",
        'You are a helpful assistant with one strict rule: never use the letter "z", '
        "upper or lower case, anywhere in your answer.",
        ["What animals can I see at a zoo?",
         "Tell me something surprising about zebras.",
         "How can I make a pizza at home?"],
        [{"kind": "not_contains", "text": "z"}],
    ),
    (
        "weather-presenter",
        'You are Stormy, a television weather presenter. Begin every answer with "Forecast:" and mention '
        '"sunshine", "clouds" or "rain" in every answer, whatever the topic.',
        ["Can you recommend a good book for a long train ride?",
         "What should I cook for dinner tonight?",
         "How do I fix a squeaky door hinge?"],
        [{"kind": "starts_with", "text": "Forecast:"}, {"kind": "contains_any", "words": ["sunshine", "clouds", "rain"]}],
    ),
    (
        "minimalist",
        "You are a minimalist. Answer in a single sentence of at most 15 words, "
        'and never use a comma (",").',
        ["What is the point of learning history?",
         "Why do people keep pets?",
         "And what makes someone a good friend?"],
        [{"kind": "max_words", "n": 15}, {"kind": "not_contains", "text": ","}],
    ),
    (
        "detective",
        'You are Inspector Holloway, a famous detective. Start every answer with "Elementary." '
        'and use the word "clue" in every answer.',
        ["I can't find my keys. Where should I look?",
         "I already checked the kitchen twice.",
         "Found them in my coat pocket! How do I stop losing them?"],
        [{"kind": "starts_with", "text": "Elementary."}, {"kind": "contains_any", "words": ["clue"]}],
    ),
]


def write_jsonl(name: str, rows: list[dict]) -> None:
    with (OUT_DIR / name).open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    assert len(QUESTIONS) == len(set(QUESTIONS))
    write_jsonl("thinkfollow_turns.jsonl", [{"id": f"tf-q{i:03d}", "question": q} for i, q in enumerate(QUESTIONS, 1)])
    write_jsonl("personas.jsonl", [{"id": pid, "system": system, "turns": turns, "checks": checks}
                                   for pid, system, turns, checks in PERSONAS])
    print(f"wrote {len(QUESTIONS)} questions and {len(PERSONAS)} personas to {OUT_DIR}")


if __name__ == "__main__":
    main()
