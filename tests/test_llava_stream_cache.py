"""The LLaVA stream's cache of read files (streams/stream_cache.py) and the image checks' writes:
a later build (another DDP rank, the next run) parses nothing that has not changed, and
never serves what a fresh build would not give."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

import streams.llava
import streams.media_checks
import streams.stream_cache
from streams.llava import LLaVAStream, TaskFiles
from tests.llava_files import coin, conversation, write_image, write_json


@pytest.fixture
def parsed(monkeypatch) -> list[str]:
    """The label of every file whose records are parsed (and then checked)."""
    labels = []
    parse = streams.llava._parse_records
    monkeypatch.setattr(
        streams.llava, "_parse_records", lambda text, label: labels.append(label) or parse(text, label)
    )
    return labels


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """The name of every image opened (checked)."""
    names = []
    original = Image.open
    monkeypatch.setattr(
        Image, "open", lambda path, *a, **k: names.append(Path(path).name) or original(path, *a, **k)
    )
    return names


def write_files(folder: Path) -> None:
    multi_turn = conversation("t2", "red.png", "<image>\nfirst ?", "one")
    multi_turn["conversations"] += [{"from": "human", "value": "second ?"}, {"from": "gpt", "value": "two"}]
    write_json(
        folder / "train.json",
        [
            conversation("t0", "red.png", "<image>\nwhat colour ?", "red"),
            conversation("t1", "sub/blue.png", "what colour ? <image>", "blue"),
            multi_turn,
        ],
    )
    write_json(
        folder / "test.jsonl",
        [coin(0, "red.png", "what colour ?", "red"), coin("q1", "sub/blue.png", "which ?", ["blue", "blue"])],
        lines=True,
    )
    write_json(
        folder / "pretrain.json", [conversation("p0", "red.png", "<image>\ndescribe .", "a red square")]
    )
    write_json(folder / "drawings.json", [{"id": "d0", "instruction": "Draw blue.", "image": "sub/blue.png"}])


def build(folder: Path, root: Path, **kwargs) -> LLaVAStream:
    """A one-task stream over ``write_files``'s files, with pre-training conversations and drawings."""
    task = TaskFiles(
        "vqa", str(folder / "train.json"), str(folder / "test.jsonl"), kwargs.pop("scorer", "vqa_accuracy")
    )
    return LLaVAStream(
        tasks=[task],
        image_root=str(root),
        pretrain=str(folder / "pretrain.json"),
        pretrain_drawings=str(folder / "drawings.json"),
        **kwargs,
    )


def contents(stream: LLaVAStream) -> list:
    """Everything a stream gives to training and evaluation, images as paths."""
    tasks = [*stream.tasks, *([stream.pretrain_task] if stream.pretrain_task else [])]
    return [
        (task.name, task.scorer, split.samples, [split.text(i) for i in range(len(split))])
        for task in tasks
        for split in (task.train, task.test)
    ]


def shorter(files: list[str]) -> list[str]:
    return [label.split(" file ")[0] for label in files]


# ----------------------------------------------------------------------------- served from the cache


@pytest.mark.parametrize("racy", [True, False], ids=["just-written", "older"])
def test_a_second_build_parses_no_record_checks_no_image_and_equals_a_fresh_one(
    tmp_path, root, parsed, opened, monkeypatch, racy
):
    if not racy:  # files older than RACY_NS are trusted by their stat; newer ones by a digest too
        monkeypatch.setattr(streams.stream_cache, "RACY_NS", 0)
    write_files(tmp_path)
    first = build(tmp_path, root)
    assert len(parsed) == 4 and set(opened) == {"red.png", "blue.png"}
    parsed.clear(), opened.clear()

    second = build(tmp_path, root)  # another rank, the next run, a resume
    assert parsed == [] and opened == []
    assert contents(second) == contents(first)
    assert list(second.texts()) == list(first.texts())
    assert second.tasks[0].train[2]["image"].size == (8, 8)  # images open from the cached paths
    assert second.tasks[0].train.text(2)["followups"] == [{"question": "second ?", "answer": "two"}]
    assert second.pretrain_task.train[1]["target"].size == (8, 8)  # the drawing's image to draw


def test_a_cached_build_equals_one_from_an_empty_cache(tmp_path, root, monkeypatch):
    write_files(tmp_path)
    build(tmp_path, root)
    cached = build(tmp_path, root)
    monkeypatch.setenv("CONTMM_CACHE", str(tmp_path / "empty_cache"))
    assert contents(cached) == contents(build(tmp_path, root))


def test_the_cache_survives_a_change_of_directory_and_relative_paths(tmp_path, root, parsed, monkeypatch):
    write_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    task = TaskFiles("vqa", "train.json", "test.jsonl")
    first = LLaVAStream(tasks=[task], image_root="images")
    monkeypatch.chdir(root)  # the same files, named from elsewhere
    task = TaskFiles("vqa", "../train.json", "../test.jsonl")
    second = LLaVAStream(tasks=[task], image_root=".")
    assert len(parsed) == 2 and contents(second) == contents(first)


# ----------------------------------------------------------------------------- read anew


def test_an_edited_file_is_parsed_again_and_gives_the_edit(tmp_path, root, parsed):
    write_files(tmp_path)
    build(tmp_path, root)
    parsed.clear()
    train = tmp_path / "train.json"
    train.write_text(train.read_text().replace('"blue"', '"navy blue"'))
    stream = build(tmp_path, root)
    assert shorter(parsed) == ["task 'vqa' train"]  # only the edited file
    assert stream.tasks[0].train[1]["answer"] == "navy blue"


def test_a_file_touched_but_unchanged_is_parsed_again(tmp_path, root, parsed):
    write_files(tmp_path)
    first = build(tmp_path, root)
    parsed.clear()
    test = tmp_path / "test.jsonl"
    os.utime(test, ns=(test.stat().st_atime_ns, test.stat().st_mtime_ns + 1_000_000_000))
    assert shorter(parsed) == [] and contents(build(tmp_path, root)) == contents(first)
    assert shorter(parsed) == ["task 'vqa' test"]


def test_an_edit_that_leaves_the_files_stat_as_it_was_is_caught_by_the_digest(
    tmp_path, root, parsed, monkeypatch
):
    """A file written twice within its timestamp's resolution, at the same size, looks
    unchanged to stat (a coarse clock is simulated here): the digest of a just-written
    file's text tells."""
    real = streams.stream_cache.file_stamp
    monkeypatch.setattr(
        streams.stream_cache, "file_stamp", lambda path: {**real(path), "mtime_ns": 0, "ctime_ns": 0}
    )
    write_files(tmp_path)
    build(tmp_path, root)
    parsed.clear()
    train = tmp_path / "train.json"
    before = train.stat().st_size
    train.write_text(train.read_text().replace('"red"', '"rot"'))  # same size, same inode
    assert train.stat().st_size == before
    stream = build(tmp_path, root)
    assert shorter(parsed) == ["task 'vqa' train"] and stream.tasks[0].train[0]["answer"] == "rot"


def test_a_file_that_ages_past_the_racy_window_while_it_is_read_is_still_cached(
    tmp_path, root, parsed, monkeypatch
):
    real = streams.stream_cache.file_stamp
    monkeypatch.setattr(
        streams.stream_cache.StreamCache, "stamp", staticmethod(lambda path: {**real(path), "racy": True})
    )
    monkeypatch.setattr(streams.stream_cache, "file_stamp", lambda path: {**real(path), "racy": False})
    write_files(tmp_path)
    build(tmp_path, root)
    parsed.clear()
    build(tmp_path, root)
    assert parsed == []


def test_a_file_written_while_it_is_read_is_not_cached(tmp_path, root, monkeypatch):
    write_files(tmp_path)
    train, parse = tmp_path / "train.json", streams.llava._parse_records

    def parse_while_written(text, label):
        if "train" in label and '"crimson"' not in text:
            train.write_text(train.read_text().replace('"red"', '"crimson"'))
        return parse(text, label)

    monkeypatch.setattr(streams.llava, "_parse_records", parse_while_written)
    assert build(tmp_path, root).tasks[0].train[0]["answer"] == "red"  # what it read
    assert build(tmp_path, root).tasks[0].train[0]["answer"] == "crimson"  # not the kept "red"


@pytest.mark.parametrize(
    "setting, reparsed",
    [
        ({"max_samples": 1}, ["task 'vqa' train", "task 'vqa' test", "pretrain", "pretrain_drawings"]),
        # Follow-ups are training's: test records and drawings read the same either way.
        ({"turns": "first"}, ["task 'vqa' train", "pretrain"]),
        ({"require_image_token": False}, ["task 'vqa' train", "task 'vqa' test", "pretrain"]),
        # The scorer checks test answers only.
        ({"scorer": "contains"}, ["task 'vqa' test"]),
        # Images of another kind of check are looked up in that kind's checks: no file is parsed.
        ({"check_images": "header"}, []),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else "",
)
def test_a_changed_setting_is_not_served_from_another_settings_read(
    tmp_path, root, parsed, opened, setting, reparsed
):
    write_files(tmp_path)
    build(tmp_path, root)
    parsed.clear(), opened.clear()
    stream = build(tmp_path, root, **setting)
    assert shorter(parsed) == reparsed
    if "max_samples" in setting:
        assert len(stream.tasks[0].train) == 1
    if "turns" in setting:
        assert "followups" not in stream.tasks[0].train.text(2)
    if "check_images" in setting:
        assert set(opened) == {"red.png", "blue.png"}  # checked for the header check's cache
    parsed.clear()
    build(tmp_path, root, **setting)  # each setting keeps its own entries
    assert parsed == []


def test_a_change_to_the_reading_code_makes_every_entry_stale(tmp_path, root, parsed, monkeypatch):
    write_files(tmp_path)
    build(tmp_path, root)
    parsed.clear()
    monkeypatch.setattr(streams.llava, "code_digest", lambda *sources: "another version")
    build(tmp_path, root)
    assert len(parsed) == 4


# ----------------------------------------------------------------------------- images still checked


def test_a_changed_image_is_checked_again_without_parsing_the_files(tmp_path, root, parsed, opened):
    write_files(tmp_path)
    build(tmp_path, root)
    parsed.clear(), opened.clear()
    write_image(root / "red.png", "red", size=9)  # changed (size and time), still good
    stream = build(tmp_path, root)
    assert parsed == [] and set(opened) == {"red.png"}
    assert stream.tasks[0].train[0]["image"].size == (9, 9)


def test_an_image_broken_since_has_the_file_read_anew_and_named(tmp_path, root, parsed):
    write_files(tmp_path)
    build(tmp_path, root)
    (root / "sub/blue.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError) as cached_error:
        build(tmp_path, root)
    assert "task 'vqa' train file" in str(cached_error.value)
    assert "record 1 (id 't1'): field 'image':" in str(cached_error.value)
    assert "blue.png is not a readable image" in str(cached_error.value)
    with pytest.raises(ValueError) as fresh_error:
        build(tmp_path, root, max_samples=10)  # another setting: never cached, read fresh
    assert str(fresh_error.value) == str(cached_error.value)


def test_an_image_removed_since_has_the_file_read_anew_and_named(tmp_path, root):
    write_files(tmp_path)
    build(tmp_path, root)
    (root / "red.png").unlink()
    with pytest.raises(ValueError, match=r"record 0 \(id 't0'\): field 'image': no image file at .*red.png"):
        build(tmp_path, root)


def test_an_image_name_that_resolves_elsewhere_now_is_resolved_anew(tmp_path, root, parsed):
    """A symlink in the image root pointed at another file (say, another version of a
    dataset): a cached read must not keep serving the old file."""
    write_files(tmp_path)
    (root / "link.png").symlink_to("red.png")
    write_json(tmp_path / "test.jsonl", [coin(0, "link.png", "what colour ?", "red")], lines=True)
    assert build(tmp_path, root).tasks[0].test.samples[0].media == (("image", root / "red.png"),)
    (root / "link.png").unlink()
    (root / "link.png").symlink_to("sub/blue.png")
    parsed.clear()
    assert build(tmp_path, root).tasks[0].test.samples[0].media == (("image", root / "sub/blue.png"),)
    assert shorter(parsed) == ["task 'vqa' test"]
    (root / "link.png").unlink()
    (root / "link.png").symlink_to(tmp_path / "train.json")  # now out of the root
    with pytest.raises(ValueError, match="outside media_root"):
        build(tmp_path, root)


def test_a_folder_of_images_that_resolves_elsewhere_now_is_resolved_anew(tmp_path, root):
    write_files(tmp_path)
    write_image(tmp_path / "v1/blue.png", "blue")
    write_image(tmp_path / "v2/blue.png", "blue", size=9)
    (root / "sub/blue.png").unlink()
    (root / "sub").rmdir()
    (root / "sub").symlink_to(tmp_path / "v1")
    with pytest.raises(ValueError, match="outside media_root"):  # as a fresh build would say
        build(tmp_path, root)
    (root / "sub").unlink()
    (root / "v").mkdir()
    write_image(root / "v/1/blue.png", "blue")
    write_image(root / "v/2/blue.png", "blue", size=9)
    (root / "sub").symlink_to("v/1")
    assert build(tmp_path, root).tasks[0].test[1]["image"].size == (8, 8)
    (root / "sub").unlink()
    (root / "sub").symlink_to("v/2")
    assert build(tmp_path, root).tasks[0].test[1]["image"].size == (9, 9)


# ----------------------------------------------------------------------------- errors and unusable caches


def test_a_file_with_an_error_is_never_cached_and_keeps_its_message(tmp_path, root, parsed):
    write_files(tmp_path)
    write_json(tmp_path / "test.jsonl", [coin(0, "red.png", "what colour ?", "the")], lines=True)
    messages = []
    for _ in range(2):
        with pytest.raises(ValueError) as error:
            build(tmp_path, root)
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "is empty once normalised for scoring" in messages[0]
    # The good training file was kept; the bad test file read (and refused) both times.
    assert shorter(parsed) == ["task 'vqa' train", "task 'vqa' test", "task 'vqa' test"]


def test_an_unreadable_cache_entry_gives_a_warning_and_the_file_is_read_anew(
    tmp_path, root, parsed, image_check_cache
):
    write_files(tmp_path)
    first = build(tmp_path, root)
    entries = sorted((image_check_cache / "streams").glob("*.pickle"))
    assert len(entries) == 4
    for entry in entries[:2]:
        entry.write_bytes(entry.read_bytes()[:-20])  # cut short
    for entry in entries[2:]:
        entry.write_bytes(b"garbage")
    parsed.clear()
    with pytest.warns(UserWarning, match="stream cache .* unreadable, reading .* anew") as warned:
        second = build(tmp_path, root)
    assert len(warned) == 4 and len(parsed) == 4 and contents(second) == contents(first)
    parsed.clear()
    build(tmp_path, root)  # written anew
    assert parsed == []


def test_a_cache_that_cannot_be_written_gives_warnings_not_errors(tmp_path, root, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("CONTMM_CACHE", str(blocker))
    write_files(tmp_path)
    with pytest.warns(UserWarning) as warned:
        stream = build(tmp_path, root)
    messages = [str(warning.message) for warning in warned]
    assert sum("stream cache" in message and "not written" in message for message in messages) == 1
    assert sum("media check cache" in message and "not written" in message for message in messages) == 1
    assert len(stream.tasks[0].train) == 3


# ----------------------------------------------------------------------------- the image checks' writes


@pytest.fixture
def image_cache_writes(monkeypatch) -> list[str]:
    written = []
    write = streams.media_checks.atomic_write
    monkeypatch.setattr(
        streams.media_checks,
        "atomic_write",
        lambda path, text: written.append(path.name) or write(path, text),
    )
    return written


def test_the_image_checks_are_written_once_per_build_and_only_if_an_image_was_checked(
    tmp_path, root, image_cache_writes
):
    write_files(tmp_path)
    write_image(root / "green.png", "green")  # new in the second file read
    write_json(tmp_path / "test.jsonl", [coin(0, "green.png", "what colour ?", "green")], lines=True)
    build(tmp_path, root)  # three files bring new images
    assert image_cache_writes == ["media_checks_decode.json"]
    build(tmp_path, root)
    assert image_cache_writes == ["media_checks_decode.json"]  # nothing new: not written


def test_the_image_checks_done_before_a_files_error_are_kept(tmp_path, root, opened, image_cache_writes):
    write_files(tmp_path)
    write_json(tmp_path / "test.jsonl", [coin(0, "red.png", "what colour ?", 7)], lines=True)
    with pytest.raises(ValueError, match="field 'answer'"):
        build(tmp_path, root)
    assert image_cache_writes == ["media_checks_decode.json"]
    write_files(tmp_path)  # fixed
    opened.clear()
    build(tmp_path, root)
    assert opened == []  # the training file's images were checked before the error, and kept
