"""Multiple-choice task files in their published forms, read into Questions with lm-eval's prompts.

Each format is one builder: a record (a JSON line, or a CSV row for C-Eval and CMMLU) in, a Question out, built
the way the lm-evaluation-harness task of the same name builds its request: `context` is its doc_to_text,
`choices` its doc_to_choice and `answer` its doc_to_target; the scorer adds lm-eval's default target_delimiter
(" ") between the context and each choice. Read from the harness's task YAMLs (the builders name them), so a
score here and `lm_eval --model hf` on the same file and model can agree.

A line that cannot be used stops the read with a DataError naming the file, the line and the field: a score
over a silently shortened task would look like a real one.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import DataError

TARGET_DELIMITER = " "  # lm-eval's default between doc_to_text and each choice


@dataclass(frozen=True)
class Question:
    context: str  # the prompt, doc_to_text
    choices: list[str]  # doc_to_choice: the continuations, without the delimiter
    answer: int  # index of the right choice
    id: str  # "file:line", for reports
    line: int


class _Problem(Exception):
    """A field of one record that cannot be used; read_questions adds the file and line."""

    def __init__(self, field: str, what: str):
        super().__init__(what)
        self.field, self.what = field, what


Record = dict[str, Any]
Builder = Callable[[Record], tuple[str, list[str], int]]


def _text(record: Record, field: str) -> str:
    if field not in record or record[field] is None:
        raise _Problem(field, "the column is missing")
    value = record[field]
    if isinstance(value, (dict, list)):
        raise _Problem(field, f"expected text, found {type(value).__name__}")
    return str(value)


def _choice_text(record: Record, field: str) -> str:
    value = _text(record, field)
    if not value.strip():
        raise _Problem(field, "the choice is empty")
    return value


def _index(record: Record, field: str, count: int, base: int = 0) -> int:
    """An integer answer (int or digits) naming a position, counted from `base`."""
    raw = record.get(field)
    if raw is None:
        raise _Problem(field, "the column is missing")
    if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit())):
        raise _Problem(field, f"{raw!r} is not a choice number")
    position = int(raw) - base
    if not 0 <= position < count:
        raise _Problem(field, f"{raw!r} is not among the {count} choices (numbered from {base})")
    return position


def _letter(record: Record, field: str, letters: list[str]) -> int:
    value = _text(record, field).strip()
    if value not in letters:
        raise _Problem(field, f"{value!r} is not among the choice labels {letters}")
    return letters.index(value)


def _labelled_choices(record: Record) -> tuple[list[str], list[str]]:
    """ARC / OpenBookQA `choices: {text: [...], label: [...]}`."""
    choices = record.get("choices")
    if not isinstance(choices, dict) or not isinstance(choices.get("text"), list) \
            or not isinstance(choices.get("label"), list):
        raise _Problem("choices", "expected {\"text\": [...], \"label\": [...]}")
    texts, labels = [str(t) for t in choices["text"]], [str(label) for label in choices["label"]]
    if len(texts) != len(labels) or not texts:
        raise _Problem("choices", f"{len(texts)} texts for {len(labels)} labels")
    if any(not t.strip() for t in texts):
        raise _Problem("choices.text", f"choice {[t.strip() for t in texts].index('') + 1} is empty")
    return texts, labels


def _key_index(key: str, labels: list[str]) -> int:
    # lm-eval's arc_easy.yaml: doc_to_target "{{choices.label.index(answerKey)}}". Some ARC rows label their
    # choices "1".."5"; a numeric key not among the labels names the position, as lm-eval's older ARC task did.
    if key in labels:
        return labels.index(key)
    if key.isdigit() and 1 <= int(key) <= len(labels):
        return int(key) - 1
    raise _Problem("answerKey", f"{key!r} is not among the choice labels {labels}")


def _multiple_choice_exam(question_field: str, answer_field: str) -> Builder:
    # lm-eval lm_eval/tasks/ceval/_default_ceval_yaml and lm_eval/tasks/cmmlu/_default_template_yaml:
    # doc_to_text "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案：", the choices are the
    # letters themselves, the target the answer letter's position.
    def build(record: Record) -> tuple[str, list[str], int]:
        question = _text(record, question_field).strip()
        options = [_choice_text(record, letter) for letter in "ABCD"]
        context = question + "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", options)) + "\n答案："
        return context, ["A", "B", "C", "D"], _letter(record, answer_field, ["A", "B", "C", "D"])
    return build


def _arc(record: Record) -> tuple[str, list[str], int]:
    # lm-eval lm_eval/tasks/arc/arc_easy.yaml (arc_challenge includes it): "Question: {{question}}\nAnswer:".
    texts, labels = _labelled_choices(record)
    return f"Question: {_text(record, 'question')}\nAnswer:", texts, _key_index(_text(record, 'answerKey'), labels)


def _openbookqa(record: Record) -> tuple[str, list[str], int]:
    # lm-eval lm_eval/tasks/openbookqa/openbookqa.yaml: doc_to_text question_stem, as is; answerKey.lstrip().
    texts, labels = _labelled_choices(record)
    key = _text(record, "answerKey").lstrip()
    if key not in labels:
        raise _Problem("answerKey", f"{key!r} is not among the choice labels {labels}")
    return _text(record, "question_stem"), texts, labels.index(key)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval lm_eval/tasks/hellaswag/utils.py `preprocess`: WikiHow's " [title]" becomes ". ", other
    bracketed tags go, double spaces become single."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(record: Record) -> tuple[str, list[str], int]:
    # lm-eval lm_eval/tasks/hellaswag/hellaswag.yaml + utils.process_docs: query = preprocess(activity_label +
    # ": " + ctx_a + " " + ctx_b.capitalize()), choices = preprocessed endings, gold = int(label). A file with
    # only `ctx` (which the dataset spells ctx_a + " " + ctx_b, uncapitalised) uses it in place of the join.
    if "ctx_a" in record and "ctx_b" in record:
        ctx = _text(record, "ctx_a") + " " + _text(record, "ctx_b").capitalize()
    else:
        ctx = _text(record, "ctx")
    label = record.get("activity_label")
    query = hellaswag_preprocess(f"{label}: {ctx}" if label is not None else ctx)
    endings = record.get("endings")
    if not isinstance(endings, list) or not endings:
        raise _Problem("endings", "expected a list of endings")
    choices = [hellaswag_preprocess(str(e)) for e in endings]
    if any(not c for c in choices):
        raise _Problem("endings", f"ending {choices.index('') + 1} is empty")
    return query, choices, _index(record, "label", len(choices))


def _piqa(record: Record) -> tuple[str, list[str], int]:
    # lm-eval lm_eval/tasks/piqa/piqa.yaml: "Question: {{goal}}\nAnswer:", choices [sol1, sol2], target label.
    choices = [_choice_text(record, "sol1"), _choice_text(record, "sol2")]
    return f"Question: {_text(record, 'goal')}\nAnswer:", choices, _index(record, "label", 2)


def _siqa(record: Record) -> tuple[str, list[str], int]:
    # lm-eval lm_eval/tasks/siqa/siqa.yaml: "Q: {{context}} {{question}}\nA:", answers A-C, target label - 1.
    choices = [_choice_text(record, f"answer{letter}") for letter in "ABC"]
    context = f"Q: {_text(record, 'context')} {_text(record, 'question')}\nA:"
    return context, choices, _index(record, "label", 3, base=1)


def _generic(record: Record) -> tuple[str, list[str], int]:
    # Ours (no lm-eval task): the context as the prompt, the choices as the continuations.
    choices = record.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _Problem("choices", "expected a list of choice texts")
    texts = [str(c) for c in choices]
    if any(not t.strip() for t in texts):
        raise _Problem("choices", f"choice {[t.strip() for t in texts].index('') + 1} is empty")
    answer = record.get("answer")
    if isinstance(answer, str) and answer in texts:  # the text of a choice wins over reading "4" as an index
        return _text(record, "context"), texts, texts.index(answer)
    if isinstance(answer, str) and not answer.strip().isdigit():
        raise _Problem("answer", f"{answer!r} is not the text of any choice nor a choice number")
    return _text(record, "context"), texts, _index(record, "answer", len(texts))


# name -> (columns the first line must have to be taken for it, builder). Detection tries them in this order.
FORMATS: dict[str, tuple[frozenset[str], Builder]] = {
    "ceval": (frozenset({"question", "A", "B", "C", "D", "answer"}), _multiple_choice_exam("question", "answer")),
    "cmmlu": (frozenset({"Question", "A", "B", "C", "D", "Answer"}), _multiple_choice_exam("Question", "Answer")),
    "arc": (frozenset({"question", "choices", "answerKey"}), _arc),
    "openbookqa": (frozenset({"question_stem", "choices", "answerKey"}), _openbookqa),
    "hellaswag": (frozenset({"ctx", "endings", "label"}), _hellaswag),
    "hellaswag_full": (frozenset({"activity_label", "ctx_a", "ctx_b", "endings", "label"}), _hellaswag),
    "piqa": (frozenset({"goal", "sol1", "sol2", "label"}), _piqa),
    "siqa": (frozenset({"context", "question", "answerA", "answerB", "answerC", "label"}), _siqa),
    "generic": (frozenset({"context", "choices", "answer"}), _generic),
}
CSV_FORMATS = ("ceval", "cmmlu")  # their published files are CSV


def detect_format(columns: set[str] | frozenset[str]) -> str | None:
    """The first format whose columns the record has all of; None if none fits."""
    for name, (needed, _) in FORMATS.items():
        if needed <= columns:
            return "hellaswag" if name == "hellaswag_full" else name
    return None


def _records(path: Path) -> Iterator[tuple[int, Record]]:
    """(line number, record) of a .jsonl or .csv file; blank JSON lines are skipped."""
    try:
        if path.suffix.lower() == ".csv":
            with path.open(encoding="utf-8-sig", newline="") as handle:
                reader = csv.DictReader(handle)
                for row in reader:
                    yield reader.line_num, {k: v for k, v in row.items() if k is not None}
            return
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno}). "
                                    "A task file holds one JSON object per line; fix or remove that line.") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}, line {number}: expected a JSON object, found "
                                    f"{type(record).__name__}. A task file holds one JSON object per line.")
                yield number, record
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the task file ({error}). Check the path and that it is UTF-8 "
                        "text (.jsonl, or .csv for C-Eval and CMMLU).") from None


def _columns_help() -> str:
    return "; ".join(f"{name}: {', '.join(sorted(cols))}" for name, (cols, _) in FORMATS.items())


def _check_columns(path: Path, number: int, record: Record, name: str) -> None:
    """A file named as one format but holding another: say so once, with every missing column."""
    forms = [FORMATS[n][0] for n in (("hellaswag", "hellaswag_full") if name.startswith("hellaswag") else (name,))]
    if any(needed <= set(record) for needed in forms):
        return
    missing = sorted(forms[0] - set(record))
    looks = detect_format(frozenset(record))
    raise DataError(f"{path}, line {number}, field {missing[0]!r}: the {name} format needs the columns "
                    f"{', '.join(sorted(forms[0]))}; this line lacks {', '.join(missing)}"
                    + (f" and looks like {looks}" if looks else "") + ". Pass the file's own format, or leave it "
                    "out to detect it.")


def read_questions(path: str | Path, format: str | None = None, limit: int | None = None) -> list[Question]:
    """The file's questions in order (the first `limit` of them). `format` is a key of FORMATS (or
    "hellaswag" for both of its forms); None detects it from the first line's columns."""
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise DataError(f"{path}: unknown task format {format!r}; use one of {', '.join(FORMATS)} or leave it out "
                        "to detect it from the columns.")
    builder: Builder | None = FORMATS[format][1] if format else None
    name = format
    questions: list[Question] = []
    if limit is not None and limit <= 0:
        return questions
    for number, record in _records(path):
        if builder is None:
            name = detect_format(frozenset(record))
            if name is None:
                raise DataError(f"{path}, line {number}: the columns ({', '.join(sorted(record)) or 'none'}) match "
                                f"no task format. The columns each format needs are {_columns_help()}. Convert "
                                "the file or pass its format.")
            builder = FORMATS[name][1]
        elif not questions and name is not None:
            _check_columns(path, number, record, name)
        try:
            context, choices, answer = builder(record)
        except _Problem as problem:
            raise DataError(f"{path}, line {number}, field {problem.field!r}: {problem.what}. The file is read "
                            f"as {name} (columns {', '.join(sorted(FORMATS[name or 'generic'][0]))}); fix or remove "
                            "that line, or pass the right format.") from None
        questions.append(Question(context, choices, answer, f"{path.name}:{number}", number))
        if limit is not None and len(questions) >= limit:
            break  # before reading the next line: a bad line after the first N does not stop a limited run
    if not questions:
        raise DataError(f"{path}: no questions in the file. A task file holds one JSON object per line (or CSV rows "
                        "with a header for C-Eval and CMMLU).")
    return questions
