"""Images are part of what a run's results depend on: a resume on an image replaced since the
run started (same name, other content) is refused, naming the image, before anything is
written; the image put back, the run resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from contmm.cli import main
from contmm.rundir.directory import RunDirectory
from contmm.rundir.fingerprint import IMAGES, changed_input, record_images, run_inputs
from streams.llava import LLaVAStream, TaskFiles
from tests.helpers import crash_in_training, fit_error
from tests.llava_files import cli_args, coin, conversation, write_cli_stream, write_image, write_json


class Vocabulary:
    """The tokenizer as the fingerprint reads it."""

    @staticmethod
    def get_vocab() -> dict[str, int]:
        return {"red": 0}


def build(tmp_path: Path, root: Path, **kwargs) -> LLaVAStream:
    """A one-task stream 'vqa' whose training and test records name both images of ``root``."""
    records = [("red.png", "red"), ("sub/blue.png", "blue")]
    train = [
        conversation(f"t{i}", image, "<image>\nwhat colour ?", a) for i, (image, a) in enumerate(records)
    ]
    test = [coin(i, image, "what colour ?", a) for i, (image, a) in enumerate(records)]
    task = TaskFiles(
        "vqa", write_json(tmp_path / "train.json", train), write_json(tmp_path / "test.json", test)
    )
    return LLaVAStream(tasks=[task], image_root=str(root), **kwargs)


def change(tmp_path: Path, root: Path, replace, **kwargs) -> str | None:
    """What a resume would say after ``replace(root)`` of a run started on ``build``'s stream."""
    before = build(tmp_path, root, **kwargs)
    run = RunDirectory(tmp_path / "run")
    record_images(run, before, checkpoint=None)
    replace(root)
    after = build(tmp_path, root, **kwargs)
    return changed_input(run_inputs(before, Vocabulary), run_inputs(after, Vocabulary), after, run.path)


def same_time(path: Path, like: Path) -> None:
    os.utime(path, ns=(like.stat().st_atime_ns, like.stat().st_mtime_ns))


def swap_for_a_twin(root: Path) -> None:
    """red.png replaced (``mv``) by a blue image of the same size and modification time, as
    two images unpacked from one archive can be."""
    write_image(root / "twin.png", "blue")
    assert (root / "twin.png").stat().st_size == (root / "red.png").stat().st_size
    same_time(root / "twin.png", root / "red.png")
    os.replace(root / "twin.png", root / "red.png")


def repaint(colour: str):
    """A change of red.png: rewritten in place in ``colour``, its size and modification time
    as they were (as on a file system that keeps no modification times)."""

    def rewrite(root: Path) -> None:
        red, stat = root / "red.png", (root / "red.png").stat()
        write_image(red, colour)
        assert red.stat().st_size == stat.st_size
        os.utime(red, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    return rewrite


def break_keeping_size_and_time(root: Path) -> None:
    """red.png overwritten in place with bytes that are no image, its size and modification
    time as they were (as on a file system that keeps no modification times)."""
    red = root / "red.png"
    stat = red.stat()
    red.write_bytes(b"x" * stat.st_size)
    os.utime(red, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_an_image_swapped_for_one_of_the_same_size_and_time_is_named_by_its_inode(tmp_path, root):
    changed = change(tmp_path, root, swap_for_a_twin)
    assert changed == f"the image {root.resolve() / 'red.png'} of task split 'vqa train'"


def test_image_changes_content_sees_an_image_rewritten_with_its_size_and_time_kept(tmp_path, root):
    assert change(tmp_path, root, repaint("green")) is None  # what size, time and inode cannot see
    changed = change(tmp_path, root, repaint("blue"), image_changes="content")
    assert changed == f"the image {root.resolve() / 'red.png'} of task split 'vqa train'"


def test_image_changes_content_checks_again_an_image_broken_with_its_size_and_time_kept(tmp_path, root):
    for changes in ("stat", "content"):
        build(tmp_path, root, image_changes=changes)  # checked, and the checks kept
    break_keeping_size_and_time(root)
    build(tmp_path, root)  # stat: the check kept for the image's stamp is served
    with pytest.raises(
        ValueError, match=r"record 0 \(id 't0'\): field 'image': .*red.png is not a readable image"
    ):
        build(tmp_path, root, image_changes="content")


def test_without_the_runs_record_of_the_images_the_split_is_named(tmp_path, root):
    before = build(tmp_path, root)
    swap_for_a_twin(root)
    after = build(tmp_path, root)
    changed = changed_input(run_inputs(before, Vocabulary), run_inputs(after, Vocabulary), after, tmp_path)
    assert changed == "an image of task split 'vqa train'"


def test_a_checkpoint_from_before_image_hashes_still_resumes(tmp_path, root):
    inputs = run_inputs(build(tmp_path, root), Vocabulary)
    assert set(inputs[IMAGES]) == {"vqa train", "vqa test"}
    older = {name: digest for name, digest in inputs.items() if name != IMAGES}
    assert changed_input(older, inputs) is None


def test_a_stream_that_renders_its_images_has_none_to_record(stream, tmp_path):
    assert IMAGES not in run_inputs(stream, Vocabulary)
    record_images(RunDirectory(tmp_path / "run"), stream, checkpoint=None)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")
def test_an_image_replaced_before_a_resume_is_named_and_the_run_resumes_once_it_is_back(
    tmp_path, monkeypatch, capsys
):
    config, out, images = write_cli_stream(tmp_path), tmp_path / "run", tmp_path / "images"
    with monkeypatch.context() as patch:
        crash_in_training(patch, task_id=1)  # killed in stage 2: stage 1's checkpoint is there
        with pytest.raises(RuntimeError, match="injected crash"):
            main(cli_args(config, out))
    os.replace(images / "red.png", tmp_path / "red.png")  # put aside, and another in its place
    write_image(images / "red.png", "blue", size=32)
    kept = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    message = fit_error(capsys, *cli_args(config, out)[1:])
    assert f"the image {images.resolve() / 'red.png'} of task split 'colour train' differs from" in message
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == kept

    os.replace(tmp_path / "red.png", images / "red.png")  # the same file back
    main(cli_args(config, out))
    assert "resuming after stage 1 of 2" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["stages_completed"] == 2
