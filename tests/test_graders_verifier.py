"""The verifier grader: IFEval checks and math answers (math-verify, with our own
time limit) scored on the answer after the think block."""

import threading
import time

import pytest

from posttrain.eval import mathcheck
from posttrain.graders import Graded
from posttrain.graders.verifier import VerifierGrader

IFEVAL = {
    "key": 1,
    "prompt": "describe a cat. no commas, all lowercase.",
    "messages": [{"role": "user", "content": "describe a cat. no commas, all lowercase."}],
    "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
    "kwargs": [{}, {}],
}
# The lowercase checker also asks langdetect for English, so use real sentences.
GOOD = "cats are small furry animals that love to sleep in the warm sun all day long"
BAD = "Cats are small, furry animals that love to sleep in the warm sun all day long"
HALF = "cats are small, furry animals that love to sleep in the warm sun all day long"
THINK = "<think>\nThe user wants No Commas, and Lowercase. Let me write About Cats.\n</think>\n\n"


def math_doc(answer, key=10) -> dict:
    prompt = "Solve the problem."
    return {"key": key, "prompt": prompt, "messages": [{"role": "user", "content": prompt}], "answer": answer}


def kinds(graded: Graded) -> list[str]:
    return [i.kind for i in graded.issues]


@pytest.fixture
def grader():
    g = VerifierGrader(math_timeout_s=5.0)
    yield g
    g.close()


def test_ifeval_scores_the_answer_after_the_think_block(grader):
    (graded,) = grader.grade([IFEVAL], [[THINK + GOOD, THINK + BAD, THINK + HALF, GOOD, "<think>" + GOOD, BAD]])
    # The think block has commas and capitals; only the answer counts. An
    # unfinished think block is all reasoning: no answer, nothing followed.
    assert graded.scores == [1.0, 0.0, 0.5, 1.0, 0.0, 0.0]
    assert graded.issues == []
    assert grader.id == "verifier:ifeval+math"


def test_a_good_answer_in_the_think_block_does_not_count(grader):
    (graded,) = grader.grade([IFEVAL], [[f"<think>{GOOD}</think>\n{BAD}"]])
    assert graded.scores == [0.0]


@pytest.mark.parametrize(
    ("reference", "right", "wrong"),
    [
        ("42", "Adding 40 and 2, so the answer is \\boxed{42}.", "So the answer is \\boxed{41}."),
        (42, "The answer is 42.", "The answer is 24."),
        ("1/2", "The answer is 0.5", "The answer is 0.25"),
        ("\\frac{1}{2}", "The probability is $\\frac{1}{2}$.", "The probability is $\\frac{1}{3}$."),
        ("0.5", "So we get \\boxed{\\frac{1}{2}}", "So we get \\boxed{\\frac{2}{3}}"),
        ("x=3", "Solving for x, we get x = 3.", "Solving for x, we get x = 4."),
        ("x=3", "\\boxed{3}", "\\boxed{-3}"),
        ("3\\sqrt{2}", "The side is $\\sqrt{18}$.", "The side is $\\sqrt{17}$."),
    ],
)
def test_math_right_and_wrong_answers(grader, reference, right, wrong):
    (graded,) = grader.grade([math_doc(reference)], [[right, wrong, THINK + right, f"<think>{right}</think> I am not sure."]])
    assert graded.scores == [1.0, 0.0, 1.0, 0.0]
    assert graded.issues == []


def test_mathcheck_reports_no_problem_on_a_plain_check():
    assert mathcheck.check("so the answer is \\boxed{42}.", "42", timeout_s=5) == mathcheck.MathCheck(True)
    assert mathcheck.check("no number here", "42", timeout_s=5) == mathcheck.MathCheck(False)


def test_unverifiable_prompt_gets_no_scores(grader):
    doc = {"key": "chat-7", "prompt": "Tell me a joke.", "messages": [{"role": "user", "content": "Tell me a joke."}], "answer": ""}
    (graded,) = grader.grade([doc], [["Why did the chicken cross the road?"]])
    assert graded.scores is None
    assert kinds(graded) == ["prompt not verifiable"]
    example = graded.issues[0].example
    assert "chat-7" in example and "instruction_id_list + kwargs" in example and "answer" in example


def test_unparsable_reference_gets_no_scores(grader):
    docs = [math_doc("???", key=11), math_doc("", key=12), math_doc("7", key=13)]
    unparsable, empty, fine = grader.grade(docs, [["The answer is 7.", "\\boxed{???}"], ["The answer is 7."], ["The answer is 7."]])
    assert unparsable.scores is None
    assert kinds(unparsable) == ["math reference unparsable"]
    assert "11" in unparsable.issues[0].example and "???" in unparsable.issues[0].example
    assert empty.scores is None and kinds(empty) == ["prompt not verifiable"]
    assert fine.scores == [1.0] and fine.issues == []


def test_a_hanging_check_times_out(monkeypatch):
    import math_verify

    real_verify = math_verify.verify
    hanging = threading.Event()
    hanging.set()

    def hang(gold, target, **kwargs):
        if hanging.is_set():
            time.sleep(3)
        return real_verify(gold, target, **kwargs)

    monkeypatch.setattr(math_verify, "verify", hang)
    grader = VerifierGrader(math_timeout_s=0.5)
    start = time.monotonic()
    (graded,) = grader.grade([math_doc("13")], [["So the answer is \\boxed{13}."]])
    elapsed = time.monotonic() - start
    assert elapsed < 2.0
    assert graded.scores == [0.0]
    assert kinds(graded) == ["math-verify timed out"]
    assert "0.5s" in graded.issues[0].example
    hanging.clear()  # the abandoned check finishes on its own; later checks run normally
    assert grader.grade([math_doc("13")], [["So the answer is \\boxed{13}."]])[0].scores == [1.0]


def test_a_check_that_raises_scores_zero(monkeypatch, grader):
    import math_verify

    def boom(gold, target, **kwargs):
        raise RuntimeError("sympy exploded")

    monkeypatch.setattr(math_verify, "verify", boom)
    (graded,) = grader.grade([math_doc("42")], [["\\boxed{42}", "\\boxed{41}"]])
    assert graded.scores == [0.0, 0.0]
    assert kinds(graded) == ["verifier raised", "verifier raised"]
    assert "RuntimeError: sympy exploded" in graded.issues[0].example


def test_an_ifeval_check_that_raises_scores_zero(grader):
    doc = {**IFEVAL, "instruction_id_list": ["punctuation:no_such_check"], "kwargs": [{}]}
    (graded,) = grader.grade([doc], [[GOOD]])
    assert graded.scores == [0.0]
    assert kinds(graded) == ["verifier raised"]


def test_grading_works_from_a_worker_thread(grader):
    # math-verify's own timeouts use SIGALRM, which only the main thread may set.
    docs = [math_doc("1/2"), IFEVAL, math_doc("x=3")]
    responses = [["The answer is 0.5", "The answer is 2"], [THINK + GOOD, BAD], ["\\boxed{x=3}"]]
    results: list = []
    worker = threading.Thread(target=lambda: results.append(grader.grade(docs, responses)))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive()
    (graded,) = results
    assert [g.scores for g in graded] == [[1.0, 0.0], [1.0, 0.0], [1.0]]
    assert all(g.issues == [] for g in graded)
