"""`contmm export`: a run's model reloaded by transformers and peft alone predicts what contmm
predicted for it."""

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

from contmm.cli import main
from streams.synthetic import SyntheticShapes
from tests.checkpoints import fit_config, reference_answer, save_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_repo")]

STREAM = {"tasks": ["colour", "shape"], "train_size": 16, "test_size": 6}  # fit_config's
MAX_NEW_TOKENS = 4


def fit(tmp_path, strategies: list[dict], lr: float, epochs: int, kind: str = "llava") -> tuple:
    """A tiny LLaVA tuned on two tasks, then exported; enough training to change its answers,
    little enough that they are still words."""
    checkpoint = save_checkpoint(kind, tmp_path / kind)
    config = fit_config(
        checkpoint, tmp_path, model={"backbone": {"freeze": bool(strategies)}}, strategies=strategies,
        optimizer={"lr": lr}, trainer={"max_epochs": epochs},
    )  # fmt: skip
    run = tmp_path / "run"
    main(["fit", "--config", config, "--output_dir", str(run)])
    main(["export", str(run), "-o", str(tmp_path / "export")])
    return run, tmp_path / "export"


def transformers_predictions(model, processor, task: str) -> list[str]:
    """Greedy answers to the task's test questions, by transformers alone, in id order."""
    tests = SyntheticShapes(**STREAM).tasks[STREAM["tasks"].index(task)].test
    answers = {
        str(sample["id"]): reference_answer(model, processor, sample, MAX_NEW_TOKENS).strip()
        for sample in (tests[i] for i in range(len(tests)))
    }
    return [answers[key] for key in sorted(answers)]


def contmm_predictions(run, task: str) -> list[str]:
    lines = (run / f"predictions/stage_2/{task}.jsonl").read_text().splitlines()
    return [json.loads(line)["prediction"] for line in lines]  # written sorted by id


@pytest.mark.parametrize(
    "kind",
    [
        "llava",
        "qwen2_vl",
        "qwen3_vl",
        "internvl",
        "gemma3",
        "smolvlm",
        "llava_onevision",
        "llava_next_video",
        "video_llava",
    ],
)
def test_an_exported_whole_model_loads_with_transformers_and_predicts_as_contmm_did(tmp_path, kind):
    run, exported = fit(tmp_path, strategies=[], lr=5e-4, epochs=1, kind=kind)
    model = AutoModelForImageTextToText.from_pretrained(exported).eval()
    processor = AutoProcessor.from_pretrained(exported)
    for task in STREAM["tasks"]:
        assert transformers_predictions(model, processor, task) == contmm_predictions(run, task)
        assert any(contmm_predictions(run, task)), "answers of words: the comparison can fail"
    assert json.loads((exported / "manifest.json").read_text())["stage"] == 2


def test_lora_per_task_exports_the_base_and_one_peft_adapter_per_task(tmp_path):
    lora = [{"class_path": "strategies.lora_per_task.LoRAPerTask"}]
    run, exported = fit(tmp_path, strategies=lora, lr=2e-3, epochs=1)
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["adapters"] == {"task_0": "adapters/task_0", "task_1": "adapters/task_1"}
    processor = AutoProcessor.from_pretrained(exported)
    base = AutoModelForImageTextToText.from_pretrained(exported)
    tuned = PeftModel.from_pretrained(base, exported / "adapters/task_0", adapter_name="task_0")
    tuned.load_adapter(exported / "adapters/task_1", adapter_name="task_1")
    for task_id, task in enumerate(STREAM["tasks"]):  # each task is answered by its own adapter
        tuned.set_adapter(f"task_{task_id}")
        assert transformers_predictions(tuned.eval(), processor, task) == contmm_predictions(run, task)
        assert any(contmm_predictions(run, task)), "answers of words: the comparison can fail"
    # The adapters were trained: without them the base model answers otherwise.
    with tuned.disable_adapter():
        assert transformers_predictions(tuned, processor, "colour") != contmm_predictions(run, "colour")
