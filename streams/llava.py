"""A stream of tasks read from LLaVA / CoIN style files: conversations to train on, questions to test.

Training files hold LLaVA conversations (a JSON list, or one JSON object per line)::

    {"id": "x1", "image": "coco/1.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the table?"},
                       {"from": "gpt", "value": "a cup"}]}

The first ``human`` turn is the question and the ``gpt`` turn right after it the answer; the
later human / gpt pairs of a multi-turn conversation are its follow-ups, trained on with the
first (labels on every answer, one sample per record; ``turns: first`` leaves them out).
Only the first question may hold the ``<image>`` placeholder.

A record may read a video or a sound instead of, or beside, its image: ``"video": PATH`` (an
mp4, webm, mkv, mov or avi file, or a directory of frame images) with ``<video>`` in the
first question, ``"audio": PATH`` (wav, flac, mp3 or ogg) with ``<audio>``; one placeholder
per file, none without its file. A task, and a stream, may mix modalities. A clip's frames
are sampled as the stream's ``num_frames`` or ``fps`` say, or else as the model's processor
samples a whole decoded clip; a sound is resampled to the rate the model reads
(``contmm/model/media.py``).

Test files hold CoIN records, or conversations as above::

    {"question_id": 7, "image": "coco/2.jpg", "text": "What colour is the bus?", "answer": ["red", "red"]}

``answer`` is a string or a list of strings (VQA annotators). CoIN writes test questions
without the ``<image>`` placeholder and puts the image first, so a CoIN question without one
gets ``"<image>\\n"`` in front (and ``"<video>\\n"``, ``"<audio>\\n"`` for a record's clip
and sound). Conversations always come from LLaVA data, where the
placeholder marks where the image goes; a conversation without one is an error unless
``require_image_token`` is false.

Every file is read and checked in the constructor (fields, shapes, answers, media paths,
sample ids unique within a file, and every image, clip and sound decoded in full, in
parallel, once per file: ``streams/media_checks.py``), so a bad
record stops a run before any training with a message that names the file, the record and
the field. A test answer must keep a word after scoring's normalisation ("the" or "?" do
not): an empty prediction would match it.

A file is parsed and its records checked once per version of it, not once per run or DDP
rank: the samples a good file gave are kept in a cache (``streams/stream_cache.py``), from
which a later build over the unchanged file, with the same settings, loads them. Their
media are still looked up in the media checks (a file changed since is checked again;
one missing, moved or broken has the file read anew, which names the records).

A task whose scorer scores images (``clip_score``; see ``contmm/scoring/images.py``) is a
text-to-image task: both its files hold drawing records, the image being what to draw::

    {"id": "d1", "instruction": "Draw a red bus on a street.", "image": "gen/1.jpg",
     "caption": "a red bus on a street"}

``caption`` (optional; the instruction when absent) is what the generator's text encoder
reads in training (the alignment objective) and the text a test drawing is scored against.
The instruction asks for an image, so it holds no ``<image>`` placeholder.
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal

from torch.utils.data import Dataset

import contmm.scoring.text
from contmm.model.images import open_rgb
from contmm.model.media import Video, clip_metadata
from contmm.model.tokenizer import IMAGE_TOKEN, PLACEHOLDERS
from contmm.scoring.images import check_scorer, generates_images
from contmm.scoring.text import extract_choice, normalize
from contmm.stream import Task, TaskStream, check_task_names
from streams.media_checks import ImageChanges, ImageCheck, MediaChecks, media_kind
from streams.stream_cache import StreamCache, code_digest

# Problems listed per file: enough to see a pattern, few enough to read.
MAX_PROBLEMS = 5


@dataclass
class TaskFiles:
    """One task of a LLaVA stream.

    Args:
        name: the task's name in results, predictions and plots.
        train: training conversations (a JSON list or JSON lines), relative to the current directory.
        test: test records (CoIN ``question_id``/``text``/``answer`` or conversations).
        scorer: the test scorer: exact_match, vqa_accuracy, multiple_choice or contains; an
            image scorer (clip_score) makes it a text-to-image task.
    """

    name: str
    train: str
    test: str
    scorer: str = "exact_match"


@dataclass(frozen=True)
class Sample:
    """One checked record: its id, its media (``(modality, resolved path)`` pairs), the
    question and the answer(s). A drawing record (``caption`` set) has its instruction as the
    question, its image as the target to draw and its caption as the answer the drawing is
    scored against."""

    id: str | int
    media: tuple[tuple[str, Path], ...]
    question: str
    answer: str | list[str]
    followups: tuple[tuple[str, str], ...] = ()  # later (question, answer) turns
    caption: str | None = None


class LLaVADataset(Dataset):
    """Samples of one split; images are opened on access, a clip or a sound is handed on to
    be decoded by the collator (in the DataLoader's workers) as the model reads it.
    ``stamps``: the stamp of each of their media files when the stream was built
    (``streams/media_checks.py``; it may hold other splits' files too); ``sampling``: the
    stream's frame sampling (``num_frames`` / ``fps``)."""

    def __init__(self, samples: list[Sample], stamps: dict[Path, list], sampling: dict | None = None) -> None:
        self.samples = samples
        self.stamps = stamps
        self.sampling = sampling or {}

    def __len__(self) -> int:
        return len(self.samples)

    def image_stamps(self) -> dict[str, list]:
        """Each media file the split reads (images, clips, sounds), in the order its samples
        first name them → its stamp: what the run's fingerprint records
        (``contmm/rundir/fingerprint.py``)."""
        return {str(path): self.stamps[path] for sample in self.samples for _, path in sample.media}

    def text(self, index: int) -> dict:
        """The sample without its image (cheap): id, question and answer."""
        sample = self.samples[index]
        text = {"id": sample.id, "question": sample.question, "answer": sample.answer}
        if sample.caption is not None:
            text["caption"] = sample.caption
        if sample.followups:
            text["followups"] = [{"question": q, "answer": a} for q, a in sample.followups]
        return text

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        if sample.caption is not None:  # a drawing record's image is its target, not its input
            return {**self.text(index), "target": open_rgb(sample.media[0][1])}
        media = {
            "image": open_rgb,
            "video": lambda path: Video(path, **self.sampling),
            "audio": lambda path: path,
        }
        return {**self.text(index), **{modality: media[modality](path) for modality, path in sample.media}}


class RecordError(Exception):
    """A problem in one record; the file reader says which record it is."""


def _describe(value: object) -> str:
    """A short account of a JSON value for an error message."""
    text = repr(value)
    return f"{_json_type(value)} {text if len(text) <= 60 else text[:57] + '...'}"


def _json_type(value: object) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


def _field(record: dict, key: str, hint: str = "") -> object:
    if key not in record:
        raise RecordError(f"missing field {key!r}{hint}")
    return record[key]


def _string(record: dict, key: str, hint: str = "") -> str:
    value = _field(record, key, hint)
    if not isinstance(value, str):
        raise RecordError(f"field {key!r}: expected a string, got {_describe(value)}")
    return value


def _record_id(record: dict, key: str) -> str | int:
    value = _field(record, key)
    if not _is_id(value):
        raise RecordError(f"field {key!r}: expected a string or integer id, got {_describe(value)}")
    return value


def _is_id(value: object) -> bool:
    # bool is an int in Python but never an id.
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _conversation(record: dict) -> list[tuple[str, str]]:
    """The (human, gpt) turn pairs, from the first human turn on."""
    turns = _field(record, "conversations")
    if not isinstance(turns, list):
        raise RecordError(f"field 'conversations': expected a list of turns, got {_describe(turns)}")
    for i, turn in enumerate(turns):
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("from"), str)
            and isinstance(turn.get("value"), str)
        ):
            raise RecordError(
                f"field 'conversations', turn {i}: expected an object with string 'from' and 'value', "
                f"got {_describe(turn)}"
            )
    human = next((i for i, turn in enumerate(turns) if turn["from"] == "human"), None)
    if human is None:
        raise RecordError("field 'conversations': no turn from 'human'")
    pairs = []
    for i in range(human, len(turns), 2):
        if turns[i]["from"] != "human":
            raise RecordError(
                f"field 'conversations', turn {i}: expected a 'human' turn, got {turns[i]['from']!r}"
            )
        if i + 1 == len(turns) or turns[i + 1]["from"] != "gpt":
            raise RecordError(f"field 'conversations': the human turn {i} is not followed by a 'gpt' answer")
        if not turns[i + 1]["value"].strip():
            raise RecordError(f"field 'conversations': the gpt answer in turn {i + 1} is empty")
        if i > human and (shown := [t for t in PLACEHOLDERS.values() if t in turns[i]["value"]]):
            raise RecordError(
                f"field 'conversations', turn {i}: {shown[0]} in a follow-up question; "
                "only the first question shows the record's media"
            )
        pairs.append((turns[i]["value"], turns[i + 1]["value"]))
    return pairs


def _references(record: dict) -> str | list[str]:
    """A CoIN record's answer: one string or a non-empty list of them, none empty."""
    answer = _field(record, "answer")
    references = [answer] if isinstance(answer, str) else answer
    if not (isinstance(references, list) and references and all(isinstance(a, str) for a in references)):
        raise RecordError(
            f"field 'answer': expected a string or a non-empty list of strings, got {_describe(answer)}"
        )
    if not all(reference.strip() for reference in references):
        raise RecordError(f"field 'answer': empty answer in {_describe(answer)}")
    return answer


def _check_references(answer: str | list[str], scorer: str) -> None:
    """Test answers the scorer can tell from a wrong prediction; checked now, not at the first
    evaluation after training."""
    for reference in [answer] if isinstance(answer, str) else answer:
        if scorer == "multiple_choice":
            if extract_choice(reference) is None:
                raise RecordError(f"answer {reference!r} names no option letter (scorer multiple_choice)")
        elif not normalize(reference):
            # The other scorers compare normalised text: an empty prediction would match it.
            raise RecordError(
                f"answer {reference!r} is empty once normalised for scoring (articles and punctuation "
                f"are dropped), so an empty prediction would score 1 (scorer {scorer})"
            )


def _with_placeholders(question: str, modalities: list[str], prepend: bool, field: str) -> str:
    """The question (from ``field``) with exactly one placeholder per modality of its record's
    media and none of another; ``prepend`` puts a missing one in front."""
    for modality, token in PLACEHOLDERS.items():
        count = question.count(token)
        if modality not in modalities and count:
            raise RecordError(f"{field}: the question holds {token} but the record has no {modality!r} file")
        if count > 1:
            raise RecordError(
                f"{field}: the question holds {count} {token} placeholders, expected one: {question!r}"
            )
    missing = [m for m in modalities if PLACEHOLDERS[m] not in question]
    if missing and not prepend:
        raise RecordError(
            f"{field}: the question has no {PLACEHOLDERS[missing[0]]} placeholder for its {missing[0]!r} "
            f"file: {question!r} (require_image_token: false puts one in front)"
        )
    return "".join(f"{PLACEHOLDERS[m]}\n" for m in missing) + question


def _read_text(path: Path, label: str) -> str:
    try:
        # utf-8-sig: a byte-order mark, which some editors write, is not a JSON error.
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{label}: file not found (looked at {path.resolve()})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{label}: cannot read the file: {error}") from None


def _parse_records(text: str, label: str) -> list[tuple[str, object]]:
    """The records of a JSON list (the text starts with ``[``) or of JSON lines, each with
    where it is (for messages)."""
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{label}: not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
            ) from None
        return [(f"record {i}", record) for i, record in enumerate(records)]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"record {len(records)} at line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise ValueError(_json_lines_error(text, label, number, error)) from None
    return records


def _json_lines_error(text: str, label: str, number: int, error: json.JSONDecodeError) -> str:
    """The message for a line that is not JSON: a whole file of other JSON says what it holds."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return f"{label}: not valid JSON lines: {error.msg} at line {number}, column {error.colno}"
    found = _json_type(whole)
    return f"{label}: expected a JSON list of records or one JSON object per line, found one JSON {found}"


class _Reader:
    """Reads and checks the files of a stream; each media file is decoded once, however often
    it is named, and each file parsed once per version of it (``cache``). The caller saves the
    media checks (``images.save()``) when done."""

    def __init__(
        self,
        media_root: Path,
        require_image_token: bool,
        max_samples: int | None,
        followups: bool,
        check_images: ImageCheck = "decode",
        image_changes: ImageChanges = "stat",
        sampling: dict | None = None,
    ) -> None:
        self.media_root = media_root
        self.require_image_token = require_image_token
        self.max_samples = max_samples
        self.followups = followups
        self.sampling = sampling or {}
        self.images = MediaChecks(check_images, image_changes)
        # Each media name resolved once (a dataset names the same image from many records):
        # its path, or why it has none.
        self.resolved: dict[str, Path | RecordError] = {}
        self.real_folders: dict[str, str] = {}  # a folder of media names → its resolved path
        self.clip_frames: dict[Path, int] = {}  # a clip → its frame count, read when num_frames is set
        # How records are read is in this module; what makes a test answer scorable, in scoring's.
        self.cache = StreamCache(code_digest(Path(__file__), Path(contmm.scoring.text.__file__)))

    def task(self, files: TaskFiles) -> Task:
        """The task ``files`` name, both splits read and checked."""
        label = f"task {files.name!r}"
        drawing = generates_images(files.scorer)
        return Task(
            name=files.name,
            train=self.read(files.train, f"{label} train file {files.train}", False, files.scorer, drawing),
            test=self.read(files.test, f"{label} test file {files.test}", True, files.scorer, drawing),
            scorer=files.scorer,
        )

    def read(self, file: str, label: str, test: bool, scorer: str, drawing: bool = False) -> LLaVADataset:
        """The samples of ``file`` (``drawing``: text-to-image records); every bad record (up to
        :data:`MAX_PROBLEMS`) in one ValueError. From the cache if the file was read as these
        settings read it, is unchanged since, and its images still pass their checks."""
        path, settings = Path(file), self._settings(test, scorer, drawing)
        kept = self.cache.load(path, settings, lambda: _read_text(path, label))
        if kept is not None and (samples := self._still_good(*kept)) is not None:
            return self.dataset(samples)
        stamp = self.cache.stamp(path)  # before reading: a write while it is read makes the entry stale
        text = _read_text(path, label)
        images, samples = self._check(text, label, test, scorer, drawing)
        self.cache.store(path, settings, stamp, text, (images, samples))
        return self.dataset(samples)

    def dataset(self, samples: list[Sample]) -> LLaVADataset:
        """A split of ``samples``, whose media have been checked (and stamped)."""
        return LLaVADataset(samples, self.images.stamps, self.sampling)

    def _settings(self, test: bool, scorer: str, drawing: bool) -> dict:
        """What decides the samples a file gives, besides its text: its cache entry's key. (Not
        the kind of image check: the images of a kept read are looked up in the current kind's
        checks.)"""
        return {
            "media_root": str(self.media_root),
            "max_samples": self.max_samples,
            "placeholders": PLACEHOLDERS,
            "sampling": self.sampling,
            "test": test,
            "drawing": drawing,
            # Test answers are checked for their scorer; a drawing record has no conversation.
            "scorer": scorer if test and not drawing else None,
            "require_image_token": None if drawing else self.require_image_token,
            "followups": self.followups if not (test or drawing) else None,
        }

    def _still_good(self, images: dict[str, Path], samples: list[Sample]) -> list[Sample] | None:
        """``samples`` kept from an earlier read, if every media name of theirs (``images``: name
        → path) still resolves to the same file and every file still passes its check (looked
        up in the media checks, checked again if changed); None: read the file anew (which names
        the records of a missing or broken file)."""
        for name, path in images.items():
            resolved = self.resolved.get(name)
            if resolved is None:
                resolved = self.resolved[name] = self._resolve_again(name, path)
            if resolved is not path and resolved != path:
                return None
        try:
            self.images.run(list(images.values()))
        except OSError:  # gone since it was resolved
            return None
        if any(self._problem(path) for path in images.values()):
            return None
        return samples

    def _problem(self, path: Path) -> str | None:
        """Why the checked media file at ``path`` cannot be used: its check's finding, or a clip
        with fewer frames than ``num_frames`` asks."""
        if problem := self.images.problems[path]:
            return problem
        asked = self.sampling.get("num_frames")
        if asked is None or media_kind(path) != "video":
            return None
        if path not in self.clip_frames:
            self.clip_frames[path] = clip_metadata(path).total_num_frames
        if self.clip_frames[path] < asked:
            return f"{path} has {self.clip_frames[path]} frames, fewer than num_frames {asked}"
        return None

    def _check(
        self, text: str, label: str, test: bool, scorer: str, drawing: bool
    ) -> tuple[dict[str, Path], list[Sample]]:
        """The records of ``text`` read and checked: the path of each media name, and the samples."""
        # Only the records a run uses are checked, so a quick run on a huge file stays quick.
        records = _parse_records(text, label)[: self.max_samples]
        read, problems, images = [], [], {}
        for index, (where, record) in enumerate(records):
            try:
                sample = self._drawing(record) if drawing else self._sample(record, test, scorer)
            except RecordError as error:
                problems.append((index, error))
                continue
            read.append((index, sample))
            images.update({record[modality]: path for modality, path in sample.media})
        self.images.run(list(images.values()))
        for index, sample in read:  # a record's first bad file is named
            bad = next(((m, problem) for m, path in sample.media if (problem := self._problem(path))), None)
            if bad:
                problems.append((index, RecordError(f"field {bad[0]!r}: {bad[1]}")))
        if problems:
            listed = [
                f"{records[index][0]}{_id_note(records[index][1])}: {error}"
                for index, error in sorted(problems)
            ]
            shown = "\n".join(f"  {problem}" for problem in listed[:MAX_PROBLEMS])
            more = f" (the first {MAX_PROBLEMS} shown)" if len(problems) > MAX_PROBLEMS else ""
            raise ValueError(f"{label}: {len(problems)} invalid record(s){more}:\n{shown}")
        samples = [sample for _, sample in read]
        if not samples:
            raise ValueError(f"{label}: no samples (the file holds no records)")
        _check_unique_ids(samples, label)
        return images, samples

    def _sample(self, record: object, test: bool, scorer: str) -> Sample:
        if not isinstance(record, dict):
            raise RecordError(f"expected a JSON object, got {_describe(record)}")
        followups = ()
        if test and "conversations" not in record:
            record_id = _record_id(record, "question_id")
            hint = " (test records hold 'text' and 'answer', or 'conversations')"
            text = _string(record, "text", hint)
            media = self._media(record)
            question = _with_placeholders(text, [m for m, _ in media], True, "field 'text'")
            answer = _references(record)
        else:
            record_id = _record_id(record, "id")
            (question, answer), *later = _conversation(record)
            media = self._media(record)
            field = "field 'conversations', first human turn"
            question = _with_placeholders(
                question, [m for m, _ in media], not self.require_image_token, field
            )
            # A test record is one question; training takes the follow-ups unless turns: first.
            followups = tuple(later) if self.followups and not test else ()
        if test:
            _check_references(answer, scorer)
        return Sample(record_id, media, question, answer, followups)

    def _drawing(self, record: object) -> Sample:
        """A text-to-image record: the instruction, the image to draw, the caption."""
        if not isinstance(record, dict):
            raise RecordError(f"expected a JSON object, got {_describe(record)}")
        hint = " (a text-to-image task's records hold 'id', 'instruction' and 'image')"
        instruction = _string(record, "instruction", hint)
        if not instruction.strip():
            raise RecordError("field 'instruction' is empty")
        if IMAGE_TOKEN in instruction:
            raise RecordError(
                f"field 'instruction': {IMAGE_TOKEN} in an instruction that asks for an image: {instruction!r}"
            )
        caption = _string(record, "caption") if "caption" in record else instruction
        if not caption.strip():
            raise RecordError("field 'caption' is empty")
        record_id = _record_id(record, "id")
        return Sample(
            record_id, (("image", self._path(record, "image")),), instruction, caption, caption=caption
        )

    def _media(self, record: dict) -> tuple[tuple[str, Path], ...]:
        """The record's media files, as ``(modality, path)`` in the order image, video, audio."""
        media = tuple((m, self._path(record, m)) for m in PLACEHOLDERS if m in record)
        if not media:
            raise RecordError(
                f"no media: the record has none of the fields {', '.join(map(repr, PLACEHOLDERS))}"
            )
        return media

    def _path(self, record: dict, modality: str) -> Path:
        """The record's ``modality`` file, resolved inside the media root (its check comes after)."""
        name = _field(record, modality)
        if not isinstance(name, str) or not name:
            raise RecordError(f"field {modality!r}: expected a relative path, got {_describe(name)}")
        if name not in self.resolved:
            self.resolved[name] = self._resolve(name, modality)
        if isinstance(resolved := self.resolved[name], RecordError):
            raise RecordError(f"field {modality!r}: {resolved}")
        if (kind := media_kind(resolved)) != modality:
            article = "an" if modality == "image" else "a"
            raise RecordError(
                f"field {modality!r}: {name!r} is not {article} {modality} file (its name says {kind})"
            )
        return resolved

    def _resolve_again(self, name: str, path: Path) -> Path | RecordError:
        """What :meth:`_resolve` gives for ``name``, which resolved to ``path`` when it was last
        read: its folder resolved once per build, the file itself only lstat'ed (a regular file
        is no symlink); anything else is resolved in full."""
        folder, file = os.path.split(name)
        if folder not in self.real_folders:
            self.real_folders[folder] = os.path.realpath(os.path.join(self.media_root, folder))
        text = str(path)
        if file not in ("", ".", "..") and os.path.join(self.real_folders[folder], file) == text:
            try:
                if stat.S_ISREG(os.lstat(text).st_mode):
                    return path
            except OSError:
                pass
        return self._resolve(name, media_kind(path))

    def _resolve(self, name: str, modality: str) -> Path | RecordError:
        if PurePath(name).is_absolute():
            return RecordError(f"{name!r} is absolute; paths are relative to media_root")
        # resolve() follows symlinks, so a link out of the root is caught like "../".
        path = (self.media_root / name).resolve()
        if not path.is_relative_to(self.media_root):
            return RecordError(f"{name!r} resolves to {path}, outside media_root {self.media_root}")
        if not (path.is_file() or path.is_dir() and media_kind(path) == "video"):
            return RecordError(f"no {modality} file at {path}")
        return path


def _check_unique_ids(samples: list[Sample], label: str) -> None:
    """Predictions and replay are keyed by sample id: two samples of one split must not share one."""
    counts = Counter(sample.id for sample in samples)
    duplicates = [record_id for record_id, count in counts.items() if count > 1]
    if duplicates:
        shown = ", ".join(repr(record_id) for record_id in duplicates[:MAX_PROBLEMS])
        more = f" (the first {MAX_PROBLEMS} shown)" if len(duplicates) > MAX_PROBLEMS else ""
        raise ValueError(f"{label}: {len(duplicates)} sample id(s) used more than once{more}: {shown}")


def _id_note(record: object) -> str:
    """`` (id ...)`` for a record that has a usable id, to find it in the file."""
    if not isinstance(record, dict):
        return ""
    record_id = record.get("id", record.get("question_id"))
    return f" (id {record_id!r})" if _is_id(record_id) else ""


class LLaVAStream(TaskStream):
    """Tasks read from LLaVA conversation files (training) and CoIN question files (test).

    Every file, image, clip and sound is checked here (or its check found in the cache), before
    any training (see the module's docstring).

    Args:
        tasks: the instruction tasks in stream order, each ``{name, train, test, scorer}``.
        media_root: the folder the records' ``image``, ``video`` and ``audio`` paths are
            relative to; no path may leave it.
        pretrain: training conversations for MM pre-training (alignment); none: no pre-training task.
        pretrain_drawings: text-to-image records pre-training also trains on (aligning the
            Output Projector, for a model that draws); none: conversations only.
        max_samples: use (and check) only the first this many records of every file; none: all.
        require_image_token: a conversation without ``<image>`` is an error; false puts one in front.
        turns: ``all``: train on every answer of a multi-turn conversation; ``first``: on the
            first question and answer only. (Test records are one question either way.)
        check_images: ``decode`` every image, clip and sound in full before training, or read
            its ``header`` only (for sets too large to decode up front); see
            ``streams/media_checks.py``.
        image_changes: how a changed media file is told from the one read before, by the media
            checks' cache and by a resume, which refuses a changed file: ``stat``, its size,
            modification time and inode; ``content``, its size and a hash of its bytes (for
            file systems that keep no modification times; every file is read at every build).
        image_root: ``media_root``'s earlier name, still read (give one of the two).
        num_frames: sample this many frames of every clip, spread evenly (a clip with fewer is
            an error before training); none: as the model's processor samples a whole clip.
        fps: or sample this many frames per second of a clip (not with num_frames).
    """

    def __init__(
        self,
        tasks: list[TaskFiles],
        media_root: str | None = None,
        pretrain: str | None = None,
        pretrain_drawings: str | None = None,
        max_samples: int | None = None,
        require_image_token: bool = True,
        turns: Literal["all", "first"] = "all",
        check_images: ImageCheck = "decode",
        image_changes: ImageChanges = "stat",
        image_root: str | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
    ) -> None:
        media_root = _media_root(media_root, image_root)
        _check_settings(tasks, media_root, max_samples, num_frames, fps)
        root = Path(media_root).resolve()
        if pretrain_drawings is not None and pretrain is None:
            raise ValueError(
                "LLaVAStream: pretrain_drawings is set without pretrain (the conversations it goes with)"
            )
        sampling = {"num_frames": num_frames} if num_frames else {"fps": fps} if fps else {}
        reader = _Reader(
            root, require_image_token, max_samples, turns == "all", check_images, image_changes, sampling
        )
        try:
            self._read(reader, tasks, pretrain, pretrain_drawings)
        finally:
            reader.images.save()  # once, and also when a file's error stops the build

    def _read(
        self, reader: _Reader, tasks: list[TaskFiles], pretrain: str | None, pretrain_drawings: str | None
    ) -> None:
        self.tasks = [reader.task(files) for files in tasks]
        if pretrain is not None:
            train = reader.read(pretrain, f"pretrain file {pretrain}", False, "exact_match")
            if pretrain_drawings is not None:
                label = f"pretrain_drawings file {pretrain_drawings}"
                drawings = reader.read(pretrain_drawings, label, False, "exact_match", drawing=True)
                train = reader.dataset(train.samples + drawings.samples)
                _check_unique_ids(train.samples, f"pretrain and {label}")
            # The pre-training task is never evaluated, but a Task needs a test split.
            self.pretrain_task = Task(name="pretrain", train=train, test=train)


def _media_root(media_root: str | None, image_root: str | None) -> str:
    """The media root, given under its name or its earlier one (``image_root``)."""
    if media_root is None and image_root is None:
        raise ValueError("LLaVAStream: set media_root (the folder the records' media paths are relative to)")
    if media_root is not None and image_root is not None and Path(media_root) != Path(image_root):
        raise ValueError(
            f"LLaVAStream: media_root {media_root} and image_root {image_root} differ; image_root is "
            "media_root's earlier name: give one"
        )
    return media_root if media_root is not None else image_root


def _check_settings(
    tasks: list[TaskFiles],
    media_root: str,
    max_samples: int | None,
    num_frames: int | None,
    fps: float | None,
) -> None:
    """The checks that need no file read: they fail fastest."""
    # As TaskStream checks them once the files are read: here they fail before any is.
    check_task_names([task.name for task in tasks], "LLaVAStream")
    for task in tasks:
        try:
            check_scorer(task.scorer)
        except ValueError as error:
            raise ValueError(f"task {task.name!r}: {error}") from None
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"LLaVAStream: max_samples must be at least 1, got {max_samples}")
    if num_frames is not None and fps is not None:
        raise ValueError(
            f"LLaVAStream: num_frames {num_frames} and fps {fps} both set; frames are sampled by one"
        )
    for name, value in (("num_frames", num_frames), ("fps", fps)):
        if value is not None and value <= 0:
            raise ValueError(f"LLaVAStream: {name} must be positive, got {value}")
    if not Path(media_root).is_dir():
        raise ValueError(f"LLaVAStream: media_root {media_root} is not a directory")
