"""tasks/evaluation.py: the one evaluation base hands the split from hook to hook through its
result (EvalOutput), not through the task's state, and writes what the task computes."""
import json

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lavis_xformer.datasets.skipping import EvalSkippingCollater, SkipUnreadable
from lavis_xformer.tasks.evaluation import EvalOutput, loader_dataset
from lavis_xformer.tasks.xformer_vqa import XFormerVQATask


class Questions(Dataset):
    annotation = [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "no"},
                  {"question_id": 3, "answer": "two", "question_type": "count"}]
    answer_list = ["yes", "no", "two"]  # LAVIS's VQA datasets carry their candidate answers

    def __len__(self):
        return len(self.annotation)

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 4, 4), "text_input": "q%d" % i,
                "question_id": self.annotation[i]["question_id"]}


class AlwaysYes(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # the device evaluation follows
        self.answer_lists = []

    def before_evaluation(self, **kwargs):
        pass

    def predict_answers(self, samples, **kwargs):
        self.answer_lists.append(kwargs["answer_list"])
        return ["yes"] * len(samples["text_input"])


def test_vqa_split_goes_through_eval_output_and_its_ground_truth_is_scored(result_dirs, capsys):
    tmp_path = result_dirs
    dataset = Questions()
    loader = DataLoader(SkipUnreadable(dataset), batch_size=2, collate_fn=EvalSkippingCollater())
    assert loader_dataset(loader) is dataset  # the runner's wrapper is looked through

    task = XFormerVQATask(metric="exact_match", benchmark="toy")
    task.current_split = "val"  # set by RunnerXFormer.eval_epoch
    model = AlwaysYes()
    task.before_evaluation(model, dataset)
    state_before = dict(vars(task))
    output = task.evaluation(model, loader)
    assert vars(task) == state_before  # nothing of the split stays on the task
    assert isinstance(output, EvalOutput) and output.dataset is dataset and output.skipped == []
    assert [r["question_id"] for r in output.records] == [1, 2, 3]
    # the ground truth came from the dataset's annotation (not in the batch)
    assert [r["correct"] for r in output.records] == [True, False, False]
    # the split's answer list reached every step from the dataset, not from the task's state
    assert model.answer_lists == [dataset.answer_list] * 2
    assert not hasattr(task, "answer_list")

    metrics = task.after_evaluation(output, "val", epoch=0)
    assert metrics["accuracy"] == pytest.approx(100.0 / 3) and metrics["questions_in_split"] == 3
    assert metrics["epoch"] == 0 and metrics["metric"] == "exact_match"
    assert list(metrics)[:4] == ["benchmark", "split", "metric", "model"]
    assert list(metrics)[-2:] == ["protocol", "predictions_file"]
    written = json.loads((tmp_path / "val_vqa_metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    predictions = json.loads((tmp_path / "val_vqa_predictions.json").read_text())
    assert [p["prediction"] for p in predictions] == ["yes"] * 3
    assert (tmp_path / "val_vqa_predictions.rank0.jsonl").exists()  # streamed as made
    assert json.loads((tmp_path / "evaluate.txt").read_text()) == {
        "split": "val", "epoch": 0, "agg_metrics": metrics["accuracy"]}
    out = capsys.readouterr().out
    assert "[toy, exact_match] Zero-shot VQA, split 'val': 3 questions" in out
    assert "count" in out  # the per-type row
