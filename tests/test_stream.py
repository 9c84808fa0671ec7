"""The synthetic stream: deterministic from its seed, distinct tasks, an Avalanche view."""

import pytest
from PIL import ImageChops

from streams.synthetic import QUESTIONS, UNDERSTANDING, SyntheticShapes


def _sample(stream, task, i):
    return stream.tasks[task].train[i]


def test_the_same_seed_gives_the_same_samples_and_images():
    a, b = SyntheticShapes(train_size=20, seed=3), SyntheticShapes(train_size=20, seed=3)
    for task in range(4):
        for i in range(20):
            x, y = _sample(a, task, i), _sample(b, task, i)
            assert {k: x[k] for k in ("id", "question", "answer")} == {
                k: y[k] for k in ("id", "question", "answer")
            }
            assert ImageChops.difference(x["image"], y["image"]).getbbox() is None


def test_another_seed_gives_other_samples():
    a, b = SyntheticShapes(train_size=50, seed=0), SyntheticShapes(train_size=50, seed=1)
    answers = lambda s: [_sample(s, 0, i)["answer"] for i in range(50)]
    assert answers(a) != answers(b)


def test_each_task_has_its_own_answer_words():
    stream = SyntheticShapes(train_size=200)
    vocab = {t.name: {w for i in range(200) for w in t.train[i]["answer"].split()} for t in stream.tasks}
    names = list(vocab)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not vocab[first] & vocab[second], (first, second)
    assert vocab["count"] == {"one", "two", "three", "four"}


def test_count_answers_match_the_objects_drawn():
    stream = SyntheticShapes(tasks=["count"], train_size=30)
    task = stream.tasks[0]
    for i in range(30):
        image = task.train[i]["image"]
        half = image.size[0] // 2
        background = image.getpixel((0, 0))
        occupied = sum(
            any(
                image.getpixel((x, y)) != background
                for x in range(qx, qx + half)
                for y in range(qy, qy + half)
            )
            for qx in (0, half)
            for qy in (0, half)
        )
        assert ["one", "two", "three", "four"][occupied - 1] == task.train[i]["answer"]


def test_unknown_task_names_are_refused():
    with pytest.raises(ValueError, match="'size'"):
        SyntheticShapes(tasks=["colour", "size"])


def test_the_stream_is_an_avalanche_benchmark_with_task_labels():
    stream = SyntheticShapes(tasks=["colour", "shape"], train_size=10, test_size=5, pretrain_size=0)
    benchmark = stream.benchmark()
    assert [e.task_labels for e in benchmark.train_stream] == [[0], [1]]
    assert len(benchmark.test_stream[1].dataset) == 5
    assert benchmark.train_stream[1].dataset[3]["id"] == stream.tasks[1].train[3]["id"]


def test_general_tuning_adds_every_question_type_to_pretraining_with_two_of_its_three_questions():
    stream = SyntheticShapes(
        tasks=["colour", "shape"], train_size=30, test_size=30, pretrain_size=4, general_size=30
    )
    pretrain = stream.pretrain_task.train
    assert len(pretrain) == 4 + 30 * len(UNDERSTANDING)
    general = [pretrain.text(i) for i in range(4, len(pretrain))]
    for kind in UNDERSTANDING:
        asked = {
            s["question"].removeprefix("<image>\n") for s in general if s["id"].startswith(f"{kind}-general")
        }
        assert asked == set(QUESTIONS[kind][:2])  # the third is never asked in general tuning
    tested = {stream.tasks[0].test.text(i)["question"].removeprefix("<image>\n") for i in range(30)}
    assert tested == set(QUESTIONS["colour"])  # the tasks ask with all three
    with pytest.raises(ValueError, match="general_size adds to pre-training"):
        SyntheticShapes(pretrain_size=0, general_size=10)
