"""Do our multiple-choice scores agree with lm-evaluation-harness's? `python -m bench.eval_agreement [--checkpoint DIR]`

Writes task files in two published formats (ARC and PIQA) from the built-in held-out questions (each fact's
answer among three wrong answers of the same kind), exports the checkpoint to a Hugging Face directory, and
scores the same files twice: with engine.eval.choice on our model, and with lm-eval's own `hf` backend on the
export, through lm-eval's own arc_easy and piqa task configs (only the dataset pointed at the local file).
Prints, and with --results appends to bench/RESULTS.md, acc and acc_norm of both, how many questions chose
differently, and the largest difference of a choice's log-likelihood. Needs lm-eval installed
(`pip install lm_eval`); tests/engine/test_eval_agreement.py runs the same comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "tests" / "fixtures" / "run_before_issue21" / "checkpoints" / "sft" / "step_000003"


def fact_questions(n: int, seed: int = 0) -> list[tuple[str, str, list[str]]]:
    """(question, right answer, three wrong answers of the same kind) from dataset/heldout.jsonl's facts."""
    items = [json.loads(line) for line in (ROOT / "dataset" / "heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    facts = [i for i in items if i.get("kind") == "fact"]
    by_kind: dict[str, set[str]] = {}
    for item in facts:
        by_kind.setdefault(item["id"].split("-")[1] + item.get("lang", ""), set()).add(item["answer"])
    rng = random.Random(seed)
    out = []
    for item in facts[:n]:
        pool = sorted(by_kind[item["id"].split("-")[1] + item.get("lang", "")] - {item["answer"]})
        if len(pool) >= 3:
            out.append((item["messages"][-1]["content"], item["answer"], rng.sample(pool, 3)))
    return out


def write_task_files(folder: Path, n: int) -> dict[str, Path]:
    """arc.jsonl (four choices, answerKey a letter) and piqa.jsonl (two solutions, label an index)."""
    rng = random.Random(1)
    arc, piqa = [], []
    for k, (question, right, wrong) in enumerate(fact_questions(n)):
        choices = [right, *wrong]
        rng.shuffle(choices)
        labels = ["A", "B", "C", "D"]
        arc.append({"id": f"q{k}", "question": question, "choices": {"text": choices, "label": labels},
                    "answerKey": labels[choices.index(right)]})
        pair = [right, wrong[0]]
        rng.shuffle(pair)
        piqa.append({"goal": question, "sol1": pair[0], "sol2": pair[1], "label": pair.index(right)})
    files = {"arc": folder / "arc.jsonl", "piqa": folder / "piqa.jsonl"}
    for name, rows in (("arc", arc), ("piqa", piqa)):
        files[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return files


def lm_eval_task_yaml(folder: Path, name: str, data: Path) -> None:
    """A task that includes lm-eval's own config of the task (its prompt, choices and metrics) and points only its
    dataset at the local file."""
    import lm_eval

    base = Path(lm_eval.__file__).parent / "tasks"
    own = {"arc": base / "arc" / "arc_easy.yaml", "piqa": base / "piqa" / "piqa.yaml"}[name]
    (folder / f"mm_{name}.yaml").write_text(
        f"include: {own}\ntask: mm_{name}\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "training_split: null\nvalidation_split: null\ntest_split: test\n", encoding="utf-8")


def ours(checkpoint: Path, files: dict[str, Path]) -> dict[str, Any]:
    from engine.chat.session import load_model
    from engine.checkpoints.checkpoint import read_checkpoint
    from engine.data.tokenizer import load_tokenizer
    from engine.eval.choice import evaluate_file

    ckpt = read_checkpoint(checkpoint)
    model, tokenizer = load_model(ckpt, "cpu"), load_tokenizer(ckpt.tokenizer_dir)
    return {name: evaluate_file(model, tokenizer, path) for name, path in files.items()}


def theirs(hf_dir: Path, folder: Path, names: list[str]) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(model="hf", model_args=f"pretrained={hf_dir},dtype=float32,device=cpu",
                              tasks=[f"mm_{n}" for n in names], task_manager=TaskManager(include_path=str(folder)),
                              batch_size=8, log_samples=True)
    assert results is not None
    return results


def compare(checkpoint: Path = DEFAULT_CHECKPOINT, n: int = 60) -> dict[str, dict[str, float]]:
    """{task: {ours_acc, theirs_acc, ours_acc_norm, theirs_acc_norm, differing, max_ll_diff, n}}."""
    from engine.checkpoints.checkpoint import read_checkpoint
    from engine.checkpoints.hf_export import export_hf

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_task_files(folder, n)
        for name, path in files.items():
            lm_eval_task_yaml(folder, name, path)
        hf_dir = export_hf(read_checkpoint(checkpoint), folder / "hf")
        mine = ours(checkpoint, files)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        lm = theirs(hf_dir, folder, list(files))
    table = {}
    for name, result in mine.items():
        samples = sorted(lm["samples"][f"mm_{name}"], key=lambda s: s["doc_id"])
        their_lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        our_lls = [q.loglikelihoods for q in result.questions]
        metrics = lm["results"][f"mm_{name}"]
        table[name] = {
            "n": len(our_lls), "ours_acc": result.acc, "theirs_acc": metrics["acc,none"],
            "ours_acc_norm": result.acc_norm, "theirs_acc_norm": metrics["acc_norm,none"],
            "differing": sum(max(range(len(a)), key=a.__getitem__) != max(range(len(b)), key=b.__getitem__)
                             for a, b in zip(our_lls, their_lls)),
            "max_ll_diff": max(abs(x - y) for a, b in zip(our_lls, their_lls) for x, y in zip(a, b)),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("-n", type=int, default=60, help="questions per task")
    parser.add_argument("--results", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    import lm_eval

    from engine.hardware.cpu import describe_cpu

    table = compare(args.checkpoint, args.n)
    version = getattr(lm_eval, "__version__", "?")
    where = args.checkpoint.relative_to(ROOT) if args.checkpoint.is_relative_to(ROOT) else args.checkpoint
    lines = [f"`python -m bench.eval_agreement`: lm-eval {version}, checkpoint {where}, torch float32 on the CPU", "",
             "| task format | n | acc ours / lm-eval | acc_norm ours / lm-eval | choices differing "
             "| max log-likelihood difference |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['n']} | {row['ours_acc']:.4f} / {row['theirs_acc']:.4f} | "
                     f"{row['ours_acc_norm']:.4f} / {row['theirs_acc_norm']:.4f} | {row['differing']} | {row['max_ll_diff']:.2e} |")
    from bench.train import publish

    publish(f"Multiple choice: engine.eval.choice against lm-eval's hf backend, on {describe_cpu()}", "\n".join(lines),
            print_only=not args.results)

if __name__ == "__main__":
    main()
