"""The LLaVA / CoIN file stream: samples as the files say, and every bad input named before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contmm.cli import main
from streams.llava import LLaVAStream, TaskFiles
from tests.helpers import REPO, crash_in_training, fit_error
from tests.llava_files import COLOURS, cli_args, coin, conversation, write_cli_stream, write_image, write_json


def good_train() -> list[dict]:
    return [
        conversation("t0", "red.png", "<image>\nwhat colour ?", "red"),
        conversation("t1", "sub/blue.png", "what colour ? <image>", "blue"),
    ]


def good_test() -> list[dict]:
    return [
        coin(0, "red.png", "what colour ?", "red"),
        coin(1, "sub/blue.png", "what colour ?", ["blue", "blue"]),
    ]


def stream_with(tmp_path: Path, root: Path, train=None, test=None, **kwargs) -> LLaVAStream:
    """A one-task stream 'vqa' whose files hold ``train`` and ``test`` (good records by default)."""
    train_file = write_json(tmp_path / "train.json", good_train() if train is None else train)
    test_file = write_json(tmp_path / "test.json", good_test() if test is None else test)
    task = TaskFiles(name="vqa", train=train_file, test=test_file, scorer=kwargs.pop("scorer", "exact_match"))
    return LLaVAStream(tasks=[task], image_root=str(root), **kwargs)


def error_of(tmp_path: Path, root: Path, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        stream_with(tmp_path, root, **kwargs)
    return str(error.value)


# ----------------------------------------------------------------------------- good files


def test_a_two_task_stream_reads_questions_answers_and_images(tmp_path, root, monkeypatch):
    multi_turn = conversation("t2", "red.png", "<image>\nfirst ?", "one")
    multi_turn["conversations"] += [{"from": "human", "value": "second ?"}, {"from": "gpt", "value": "two"}]
    write_json(tmp_path / "a_train.json", [*good_train(), multi_turn])
    write_json(
        tmp_path / "a_test.jsonl",
        [*good_test(), coin("q2", "red.png", "is it <image> red ?", "yes")],
        lines=True,
    )
    write_json(tmp_path / "b_train.jsonl", good_train(), lines=True)
    # Conversations are accepted as test records too.
    write_json(tmp_path / "b_test.json", [conversation("c0", "sub/blue.png", "<image>\nwhich ?", "blue")])
    write_json(
        tmp_path / "pretrain.json", [conversation("p0", "red.png", "<image>\ndescribe .", "a red square")]
    )
    monkeypatch.chdir(tmp_path)  # file and image_root paths are relative to the current directory
    stream = LLaVAStream(
        tasks=[
            TaskFiles("colour", "a_train.json", "a_test.jsonl", "vqa_accuracy"),
            TaskFiles("which", "b_train.jsonl", "b_test.json"),
        ],
        image_root="images",
        pretrain="pretrain.json",
    )
    monkeypatch.chdir(REPO)  # resolved at construction: a later change of directory does not matter

    assert stream.task_names == ["colour", "which"]
    assert [task.scorer for task in stream.tasks] == ["vqa_accuracy", "exact_match"]
    train, test = stream.tasks[0].train, stream.tasks[0].test
    assert len(train) == 3 and len(test) == 3 and len(stream.tasks[1].test) == 1

    sample = train[1]
    assert (
        sample["id"] == "t1" and sample["question"] == "what colour ? <image>" and sample["answer"] == "blue"
    )
    assert sample["image"].mode == "RGB" and sample["image"].size == (8, 8)
    assert sample["image"].getpixel((0, 0)) == COLOURS["blue"]
    # A multi-turn conversation gives its first question and answer.
    assert {k: train[2][k] for k in ("id", "question", "answer")} == {
        "id": "t2",
        "question": "<image>\nfirst ?",
        "answer": "one",
    }
    # CoIN test questions without the placeholder get it in front; one that has it keeps it where it is.
    assert test[0]["question"] == "<image>\nwhat colour ?" and test[0]["id"] == 0
    assert test[2]["question"] == "is it <image> red ?"
    assert test[1]["answer"] == ["blue", "blue"]  # answer lists pass through
    assert test[1]["image"].getpixel((3, 3)) == COLOURS["blue"]
    assert stream.tasks[1].test[0]["question"] == "<image>\nwhich ?"

    assert stream.pretrain_task.train[0]["answer"] == "a red square"
    assert train.text(0) == {"id": "t0", "question": "<image>\nwhat colour ?", "answer": "red"}
    texts = list(stream.texts())
    assert "<image>\nwhat colour ?" in texts and ["blue", "blue"] in texts and "a red square" in texts


def test_max_samples_cuts_every_split_and_checks_only_what_is_used(tmp_path, root):
    broken = conversation("bad", "missing.png", "<image>\nq ?", "a")
    stream = stream_with(tmp_path, root, train=[*good_train(), broken], max_samples=1)
    assert len(stream.tasks[0].train) == 1 and len(stream.tasks[0].test) == 1


def test_require_image_token_false_puts_the_placeholder_in_front(tmp_path, root):
    train = [conversation("t0", "red.png", "what colour ?", "red")]
    stream = stream_with(tmp_path, root, train=train, require_image_token=False)
    assert stream.tasks[0].train[0]["question"] == "<image>\nwhat colour ?"


def test_an_image_named_by_many_records_is_checked_once(tmp_path, root, monkeypatch):
    opened = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(path) or original(path, *a, **k))
    train = [
        conversation(f"t{i}", image, "<image>\nq", "a")
        for i, image in enumerate(["red.png", "sub/blue.png"] * 5)
    ]
    test = [coin(i, image, "q", "red") for i, image in enumerate(["red.png", "sub/blue.png"] * 5)]
    stream_with(tmp_path, root, train=train, test=test)
    assert len(opened) == 4  # red.png and blue.png: verified, then decoded


def test_a_later_build_checks_only_images_new_or_changed_since(
    tmp_path, root, monkeypatch, image_check_cache
):
    stream_with(tmp_path, root)  # checks red.png and blue.png, and keeps the outcome
    assert list(image_check_cache.glob("media_checks_*.json"))
    opened = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(path) or original(path, *a, **k))
    stream_with(tmp_path, root)  # another rank, or the next run: nothing to check
    assert opened == []
    write_image(root / "red.png", "red", size=9)  # changed (size and time): checked again
    stream_with(tmp_path, root)
    assert {Path(p).name for p in opened} == {"red.png"}


def test_a_broken_image_stays_an_error_when_its_check_comes_from_the_cache(tmp_path, root):
    (root / "broken.png").write_bytes(b"not an image at all")
    test = [coin(0, "red.png", "q", "red"), coin("b", "broken.png", "q", "red")]
    first, second = (error_of(tmp_path, root, test=test) for _ in range(2))
    assert first == second and "broken.png is not a readable image" in second


def test_check_images_header_skips_the_decode_that_finds_a_truncated_jpeg(tmp_path, root):
    (root / "cut.jpg").write_bytes(truncated_jpeg(tmp_path / "whole.jpg"))
    test = [coin(0, "red.png", "q", "red"), coin("c", "cut.jpg", "q", "red")]
    assert "cut.jpg is not a readable image" in error_of(tmp_path, root, test=test)
    stream = stream_with(tmp_path, root, test=test, check_images="header")
    assert len(stream.tasks[0].test) == 2


# ----------------------------------------------------------------------------- bad files


def test_a_missing_file_is_named(tmp_path, root):
    task = TaskFiles("vqa", str(tmp_path / "nope.json"), write_json(tmp_path / "test.json", good_test()))
    with pytest.raises(ValueError, match=r"task 'vqa' train file .*nope\.json: file not found"):
        LLaVAStream(tasks=[task], image_root=str(root))


def test_an_unreadable_file_is_named(tmp_path, root):
    (tmp_path / "train.json").write_bytes(b'[{"id": "\xff\xfe"}]')  # not UTF-8
    task = TaskFiles("vqa", str(tmp_path / "train.json"), write_json(tmp_path / "test.json", good_test()))
    with pytest.raises(ValueError, match=r"train file .*train\.json: cannot read the file"):
        LLaVAStream(tasks=[task], image_root=str(root))


def test_invalid_json_gives_its_line_and_column(tmp_path, root):
    (tmp_path / "test.json").write_text('[\n  {"question_id": 1,\n   "text" "q"}\n]')
    task = TaskFiles("vqa", write_json(tmp_path / "train.json", good_train()), str(tmp_path / "test.json"))
    with pytest.raises(ValueError) as error:
        LLaVAStream(tasks=[task], image_root=str(root))
    assert "test file" in str(error.value) and "test.json: not valid JSON" in str(error.value)
    assert "line 3, column 11" in str(error.value)


def test_invalid_json_lines_give_the_line(tmp_path, root):
    lines = json.dumps(good_test()[0]) + "\n\n" + '{"question_id": 2, oops}\n'
    (tmp_path / "test.jsonl").write_text(lines)
    task = TaskFiles("vqa", write_json(tmp_path / "train.json", good_train()), str(tmp_path / "test.jsonl"))
    with pytest.raises(ValueError, match=r"test\.jsonl: not valid JSON lines: .* at line 3, column 20"):
        LLaVAStream(tasks=[task], image_root=str(root))


def test_a_file_of_one_json_object_is_not_taken_for_json_lines(tmp_path, root):
    message = error_of(tmp_path, root, train={"data": good_train()})
    assert (
        "train.json: expected a JSON list of records or one JSON object per line, found one JSON object"
        in (message)
    )


def test_a_file_with_no_records_names_the_task_and_file(tmp_path, root):
    message = error_of(tmp_path, root, test=[])
    assert message.startswith("task 'vqa' test file ") and "test.json: no samples" in message


def test_an_unknown_scorer_names_the_task(tmp_path, root):
    message = error_of(tmp_path, root, scorer="bleu")
    assert "task 'vqa': unknown scorer 'bleu'" in message and "vqa_accuracy" in message


def test_duplicate_task_names_are_refused(tmp_path, root):
    files = TaskFiles(
        "vqa", write_json(tmp_path / "t.json", good_train()), write_json(tmp_path / "e.json", good_test())
    )
    with pytest.raises(ValueError, match=r"duplicate task name\(s\) \['vqa'\]"):
        LLaVAStream(tasks=[files, TaskFiles("other", files.train, files.test), files], image_root=str(root))


def test_an_image_root_that_is_not_a_folder_is_named(tmp_path, root):
    message = error_of(tmp_path, tmp_path / "nowhere")
    assert "image_root" in message and "nowhere" in message


def test_max_samples_below_one_is_refused(tmp_path, root):
    assert "max_samples must be at least 1, got 0" in error_of(tmp_path, root, max_samples=0)


def with_turns(turns) -> dict:
    return {"id": "x", "image": "red.png", "conversations": turns}


HUMAN = {"from": "human", "value": "<image>\nq ?"}
GPT = {"from": "gpt", "value": "a"}

# Bad training records: the record, then fragments the message must hold after "record 1".
BAD_TRAIN = {
    "not an object": (["x"], "expected a JSON object, got list"),
    "no id": ({"image": "red.png", "conversations": [HUMAN, GPT]}, "missing field 'id'"),
    "id of the wrong type": (
        {**with_turns([HUMAN, GPT]), "id": 1.5},
        "field 'id': expected a string or integer id",
    ),
    "no image": (
        {"id": "x", "conversations": [HUMAN, GPT]},
        "(id 'x'): no media: the record has none of the fields 'image', 'video', 'audio'",
    ),
    "no conversations": (
        {"id": "x", "image": "red.png", "text": "q ?", "answer": "a"},
        "missing field 'conv",
    ),
    "conversations not a list": (with_turns("q a"), "field 'conversations': expected a list of turns"),
    "a turn without value": (
        with_turns([HUMAN, {"from": "gpt"}]),
        "field 'conversations', turn 1: expected an",
    ),
    "no human turn": (with_turns([GPT]), "field 'conversations': no turn from 'human'"),
    "no gpt turn after the human one": (
        with_turns([GPT, HUMAN]),
        "the human turn 1 is not followed by a 'gpt'",
    ),
    "an empty answer": (
        with_turns([HUMAN, {"from": "gpt", "value": " "}]),
        "the gpt answer in turn 1 is empty",
    ),
    "no image placeholder": (
        with_turns([{**HUMAN, "value": "q ?"}, GPT]),
        "first human turn: the question has no <image> placeholder for its 'image' file: 'q ?'",
    ),
    "two image placeholders": (
        with_turns([{**HUMAN, "value": "<image> <image> q"}, GPT]),
        "holds 2 <image> placeholders",
    ),
}


@pytest.mark.parametrize("case", BAD_TRAIN, ids=list(BAD_TRAIN))
def test_a_bad_training_record_is_named(tmp_path, root, case):
    record, fragment = BAD_TRAIN[case]
    message = error_of(tmp_path, root, train=[good_train()[0], record])
    assert message.startswith(f"task 'vqa' train file {tmp_path / 'train.json'}: 1 invalid record(s):\n")
    assert "  record 1" in message and fragment in message


BAD_TEST = {
    "no question_id": ({"image": "red.png", "text": "q", "answer": "a"}, "missing field 'question_id'"),
    "no text": ({"question_id": 5, "image": "red.png", "answer": "a"}, "(id 5): missing field 'text'"),
    "text not a string": (coin(5, "red.png", ["q"], "a"), "field 'text': expected a string, got list"),
    "no answer": ({"question_id": 5, "image": "red.png", "text": "q"}, "missing field 'answer'"),
    "an empty answer": (coin(5, "red.png", "q", ""), "field 'answer': empty answer"),
    "an empty answer list": (coin(5, "red.png", "q", []), "expected a string or a non-empty list of strings"),
    "an answer list of numbers": (
        coin(5, "red.png", "q", [1, 2]),
        "non-empty list of strings, got list [1, 2]",
    ),
    "two image placeholders": (
        coin(5, "red.png", "<image><image>", "a"),
        "field 'text': the question holds 2",
    ),
    "a conversation without a gpt answer": (with_turns([HUMAN]), "not followed by a 'gpt' answer"),
    "an answer of an article only": (
        coin(5, "red.png", "q", ["red", "the"]),
        "answer 'the' is empty once normalised",
    ),
    "an answer of punctuation only": (coin(5, "red.png", "q", "?"), "answer '?' is empty once normalised"),
    "a conversation answering an article only": (
        with_turns([HUMAN, {"from": "gpt", "value": "An."}]),
        "answer 'An.' is empty once normalised for scoring",
    ),
}


@pytest.mark.parametrize("case", BAD_TEST, ids=list(BAD_TEST))
def test_a_bad_test_record_is_named(tmp_path, root, case):
    record, fragment = BAD_TEST[case]
    message = error_of(tmp_path, root, test=[good_test()[0], record])
    assert message.startswith(f"task 'vqa' test file {tmp_path / 'test.json'}: 1 invalid record(s):\n")
    assert "  record 1" in message and fragment in message


def test_multiple_choice_answers_are_letters_not_normalised_text(tmp_path, root):
    # "A" normalises to nothing (the article) but is an option letter; "the" is refused elsewhere.
    test = [coin(0, "red.png", "pick", "A"), coin(1, "red.png", "pick", "(B)")]
    assert stream_with(tmp_path, root, test=test, scorer="multiple_choice").tasks[0].test[0]["answer"] == "A"
    assert "answer 'A' is empty once normalised" in error_of(tmp_path, root, test=test, scorer="exact_match")


def test_multiple_choice_answers_must_name_an_option(tmp_path, root):
    test = [coin(0, "red.png", "pick", "(B)"), coin(1, "red.png", "pick", ["C", "maybe"])]
    message = error_of(tmp_path, root, test=test, scorer="multiple_choice")
    assert "record 1 (id 1): answer 'maybe' names no option letter" in message


def test_an_absolute_image_path_is_refused(tmp_path, root):
    record = conversation("abs", str(root / "red.png"), "<image>", "a")
    message = error_of(tmp_path, root, train=[record])
    assert "record 0 (id 'abs'): field 'image'" in message and "is absolute" in message


def test_an_image_path_that_leaves_the_root_is_refused(tmp_path, root):
    write_image(tmp_path / "outside.png")
    message = error_of(tmp_path, root, train=[conversation("up", "sub/../../outside.png", "<image>", "a")])
    assert "(id 'up'): field 'image': 'sub/../../outside.png' resolves to" in message
    assert "outside media_root" in message


def test_a_symlink_out_of_the_root_is_refused(tmp_path, root):
    write_image(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    message = error_of(tmp_path, root, train=[conversation("ln", "link.png", "<image>", "a")])
    assert "'link.png' resolves to" in message and "outside media_root" in message


def test_a_missing_image_is_named(tmp_path, root):
    message = error_of(tmp_path, root, train=[conversation("m", "sub/gone.png", "<image>", "a")])
    assert f"(id 'm'): field 'image': no image file at {root / 'sub/gone.png'}" in message


def truncated_jpeg(path: Path) -> bytes:
    """A JPEG cut in the middle of its data: its header is whole, so only decoding finds the cut."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, "JPEG")
    return path.read_bytes()[: path.stat().st_size // 2]


@pytest.mark.parametrize(
    "content",
    [b"not an image at all", "truncated png", "truncated jpeg"],
    ids=["garbage", "truncated png", "truncated jpeg"],
)
def test_an_unreadable_image_is_named(tmp_path, root, content):
    if content == "truncated png":
        content = (root / "red.png").read_bytes()[:-20]  # the end chunk and part of the data are cut
    elif content == "truncated jpeg":
        content = truncated_jpeg(tmp_path / "whole.jpg")
    (root / "broken.png").write_bytes(content)
    message = error_of(
        tmp_path, root, test=[coin(0, "red.png", "q", "red"), coin("b", "broken.png", "q", "red")]
    )
    assert (
        f"test.json: 1 invalid record(s):\n  record 1 (id 'b'): field 'image': {root / 'broken.png'} is not a readable image"
        in message
    )


def test_image_problems_are_listed_in_record_order_with_the_other_problems(tmp_path, root):
    (root / "broken.png").write_bytes(truncated_jpeg(tmp_path / "whole.jpg"))
    train = [
        conversation("b0", "broken.png", "<image>", "a"),
        conversation("n1", "red.png", "no placeholder", "a"),
        conversation("b2", "broken.png", "<image>", "a"),
    ]
    lines = error_of(tmp_path, root, train=train).splitlines()
    assert [line.split(":")[0] for line in lines[1:]] == [
        "  record 0 (id 'b0')",
        "  record 1 (id 'n1')",
        "  record 2 (id 'b2')",
    ]


def test_sample_ids_used_twice_in_a_split_are_named_with_the_file(tmp_path, root):
    train = [conversation(record_id, "red.png", "<image>", "a") for record_id in ["a", "b", "a", 7, 7, "7"]]
    message = error_of(tmp_path, root, train=train)
    assert (
        message
        == f"task 'vqa' train file {tmp_path / 'train.json'}: 2 sample id(s) used more than once: 'a', 7"
    )
    test = [coin(3, "red.png", "q", "red"), coin(3, "sub/blue.png", "q", "blue")]
    assert error_of(tmp_path, root, test=test).endswith("test.json: 1 sample id(s) used more than once: 3")
    # The same id in the train and the test split is no clash: they are scored apart.
    stream_with(
        tmp_path,
        root,
        train=[conversation(0, "red.png", "<image>", "a")],
        test=[coin(0, "red.png", "q", "red")],
    )


def test_several_bad_records_are_listed_together(tmp_path, root):
    bad = [conversation(f"m{i}", f"gone{i}.png", "<image>", "a") for i in range(7)]
    message = error_of(tmp_path, root, train=[*good_train(), *bad])
    lines = message.splitlines()
    assert lines[0].endswith("train.json: 7 invalid record(s) (the first 5 shown):")
    assert [line.split(":")[0] for line in lines[1:]] == [
        f"  record {i} (id 'm{i - 2}')" for i in range(2, 7)
    ]


# ----------------------------------------------------------------------------- through the CLI


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")
def test_a_llava_stream_runs_end_to_end_through_the_cli(tmp_path):
    out = tmp_path / "run"
    main(cli_args(write_cli_stream(tmp_path), out))

    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] == ["colour", "hue"]
    matrix = results["matrix"]
    assert len(matrix) == 3 and all(len(row) == 2 for row in matrix)
    records = [json.loads(line) for line in (out / "predictions/stage_2/hue.jsonl").open()]
    assert sorted(r["id"] for r in records) == [f"hue-q{i}" for i in range(4)]
    assert records[0]["question"].startswith("<image>\n") and isinstance(records[0]["answer"], list)


@pytest.mark.usefixtures("in_repo")
def test_a_bad_file_stops_the_cli_before_training_with_one_message(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(write_cli_stream(tmp_path, bad_test=True), out))
    assert exit_info.value.code != 0
    message = capsys.readouterr().err
    assert "Traceback" not in message and message.count("contmm: error:") == 1
    # jsonargparse wraps a constructor's error in its own "Does not validate against any of the
    # Union subtypes" message (contmm/cli.py prints it whole), so the stream's message is looked
    # for inside it rather than right after "contmm: error:".
    assert f"task 'hue' test file {tmp_path / 'hue_test.jsonl'}: 1 invalid record(s)" in message
    assert "record 2 at line 3 (id 'hue-q2'): field 'image': '../secret.png' resolves to" in message
    assert not out.exists()  # nothing of a run was written


@pytest.mark.usefixtures("in_repo")
def test_the_example_config_composes_with_the_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                "experiments/seq_vqa.yaml",
                "--config",
                "experiments/llava_example.yaml",
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: streams.llava.LLaVAStream" in printed and "scorer: vqa_accuracy" in printed


# ----------------------------------------------------------------------------- multi-turn


def two_turns(record_id, image: str, first: tuple[str, str], second: tuple[str, str]) -> dict:
    record = conversation(record_id, image, *first)
    record["conversations"] += [{"from": "human", "value": second[0]}, {"from": "gpt", "value": second[1]}]
    return record


def test_a_conversations_later_turns_are_follow_ups_unless_turns_first(tmp_path, root):
    train = [two_turns("t0", "red.png", ("<image>\nwhat colour ?", "red"), ("is it bright ?", "no"))]
    sample = stream_with(tmp_path, root, train=train).tasks[0].train[0]
    assert (sample["question"], sample["answer"]) == ("<image>\nwhat colour ?", "red")
    assert sample["followups"] == [{"question": "is it bright ?", "answer": "no"}]
    assert "followups" not in stream_with(tmp_path, root, train=train, turns="first").tasks[0].train[0]
    # A test record is one question: a conversation's follow-ups are not test questions.
    assert "followups" not in stream_with(tmp_path, root, test=train).tasks[0].test[0]


def test_an_image_placeholder_in_a_follow_up_is_named(tmp_path, root):
    train = [two_turns("t0", "red.png", ("<image>\nwhat colour ?", "red"), ("<image> and now ?", "no"))]
    message = error_of(tmp_path, root, train=train)
    assert "(id 't0'): field 'conversations', turn 2: <image> in a follow-up question" in message


BRIGHT = {"red": "no", "green": "no", "blue": "no", "white": "yes"}


def write_follow_up_stream(tmp_path: Path, turns: str) -> Path:
    """One task whose test asks "is it bright ?", a question training asks only as a follow-up
    to "what colour is it ?"."""
    images = tmp_path / "images"
    for colour in COLOURS:
        write_image(images / f"{colour}.png", colour, size=32)
    # Colour and shape are asked in either order, so the model learns to answer a question
    # wherever it comes; brightness only ever comes second.
    colour, shape = ("what colour is it ?", lambda c: c), ("what shape is it ?", lambda c: "a square")
    bright = ("is it bright ?", BRIGHT.get)
    orders = [(colour, shape), (shape, colour), (colour, bright), (shape, bright)]
    train = [
        two_turns(
            i,
            f"{c}.png",
            *((f"<image>\n{q}" if n == 0 else q, a(c)) for n, (q, a) in enumerate(orders[i % 4])),
        )
        for i, c in enumerate([c for c in COLOURS for _ in range(4)] * 8)
    ]
    test = [coin(i, f"{c}.png", "is it bright ?", BRIGHT[c]) for i, c in enumerate(list(COLOURS) * 2)]
    task = {
        "name": "bright",
        "train": write_json(tmp_path / "train.json", train),
        "test": write_json(tmp_path / "test.json", test),
    }
    config = tmp_path / f"stream_{turns}.yaml"
    stream = {"tasks": [task], "image_root": str(images), "turns": turns}
    config.write_text(
        json.dumps({"stream": {"class_path": "streams.llava.LLaVAStream", "init_args": stream}})
    )
    return config


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")
def test_a_skill_asked_only_in_follow_up_turns_is_learnt_and_turns_first_does_not_learn_it(tmp_path):
    scores = {}
    for turns in ("all", "first"):
        out = tmp_path / turns
        args = cli_args(write_follow_up_stream(tmp_path, turns), out)
        main([*args, "--trainer.max_epochs", "20", "--optimizer.lr", "0.003"])
        scores[turns] = json.loads((out / "results.json").read_text())["matrix"][1][0]
    assert scores["all"] == 1.0
    assert scores["first"] == 0.0


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")
def test_a_data_file_edited_before_a_resume_is_named_and_the_run_directory_is_untouched(
    tmp_path, monkeypatch, capsys
):
    config, out = write_cli_stream(tmp_path), tmp_path / "run"
    with monkeypatch.context() as patch:
        crash_in_training(patch, task_id=1)
        with pytest.raises(RuntimeError, match="injected crash"):
            main(cli_args(config, out))
    train = tmp_path / "hue_train.json"
    train.write_text(train.read_text().replace('"red"', '"crimson"'))  # new answers, new words
    kept = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    message = fit_error(capsys, *cli_args(config, out)[1:])
    assert "the data of task split 'hue train' differs from what the run" in message
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == kept
