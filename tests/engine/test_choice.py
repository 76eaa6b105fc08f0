"""Multiple choice by log-likelihood (engine.eval.tasks, engine.eval.choice): lm-eval's prompts and scoring."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine.config import ModelConfig
from engine.data.tokenizer import load_tokenizer
from engine.errors import DataError
from engine.eval.choice import (
    ChoiceResult,
    QuestionScore,
    choice_loglikelihoods,
    encode_pair,
    evaluate_file,
    prefix_token_id,
    score_questions,
)
from engine.eval.tasks import Question, read_questions
from engine.model.transformer import CausalLM
from tests.engine.chat_fixtures import write_jsonl


def tiny_model(vocab_size: int, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(ModelConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=64,
                                 max_position_embeddings=64))
    with torch.no_grad():  # larger weights than the 0.02 init, so the choices' scores really differ
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval()


# --- readers and prompts -------------------------------------------------------------------------------------


def test_ceval_csv_with_chinese_text_builds_lm_evals_prompt(tmp_path: Path) -> None:
    """Guards against the C-Eval CSV (its published form, with id and explanation columns and a BOM) being
    misread, and against a prompt that differs from lm-eval's ceval template (question stripped, options
    "A. ..." on their own lines, "答案：" at the end, the letters as the choices)."""
    path = tmp_path / "ceval_val.csv"
    path.write_text("\ufeffid,question,A,B,C,D,answer,explanation\n"
                    "0, 中国的首都是哪里？ ,北京,上海,广州,深圳,A,\n"
                    "1,1+1=?,1,2,3,4,B,很简单\n", encoding="utf-8")
    questions = read_questions(path)
    assert [q.context for q in questions] == [
        "中国的首都是哪里？\nA. 北京\nB. 上海\nC. 广州\nD. 深圳\n答案：",
        "1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\n答案：",
    ]
    assert all(q.choices == ["A", "B", "C", "D"] for q in questions)
    assert [q.answer for q in questions] == [0, 1] and [q.line for q in questions] == [2, 3]
    jsonl = write_jsonl(tmp_path / "ceval.jsonl", [{"question": "问？", "A": "甲", "B": "乙", "C": "丙", "D": "丁",
                                                    "answer": "D"}])
    assert read_questions(jsonl)[0].context == "问？\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："


def test_cmmlu_csv_and_jsonl(tmp_path: Path) -> None:
    """Guards against CMMLU's capitalised columns (Question, Answer) and its unnamed index column being taken
    for C-Eval's or refused."""
    path = tmp_path / "cmmlu.csv"
    path.write_text(",Question,A,B,C,D,Answer\n0,水的化学式是？,H2O,CO2,O2,N2,A\n", encoding="utf-8")
    (question,) = read_questions(path)
    assert question.context == "水的化学式是？\nA. H2O\nB. CO2\nC. O2\nD. N2\n答案："
    assert question.choices == ["A", "B", "C", "D"] and question.answer == 0
    jsonl = write_jsonl(tmp_path / "c.jsonl", [{"Question": "Q", "A": "a", "B": "b", "C": "c", "D": "d",
                                                "Answer": "C"}])
    assert read_questions(jsonl)[0].answer == 2


def test_arc_prompt_and_numeric_answer_keys(tmp_path: Path) -> None:
    """Guards against ARC rows whose labels are "1".."4" (some of the published set) being refused or
    mis-mapped, and a prompt other than lm-eval's arc_easy "Question: {question}\\nAnswer:"."""
    path = write_jsonl(tmp_path / "arc.jsonl", [
        {"id": "a", "question": "Which is a mammal?", "choices": {"text": ["trout", "whale", "eagle"],
                                                                  "label": ["A", "B", "C"]}, "answerKey": "B"},
        {"question": "Pick four.", "choices": {"text": ["one", "two", "three", "four"],
                                               "label": ["1", "2", "3", "4"]}, "answerKey": "4"},
        {"question": "Pick two.", "choices": {"text": ["one", "two"], "label": ["A", "B"]}, "answerKey": "2"},
    ])
    questions = read_questions(path)
    assert questions[0].context == "Question: Which is a mammal?\nAnswer:"
    assert questions[0].choices == ["trout", "whale", "eagle"]
    assert [q.answer for q in questions] == [1, 3, 1]


def test_hellaswag_both_forms_are_preprocessed_as_lm_eval(tmp_path: Path) -> None:
    """Guards against skipping lm-eval's hellaswag preprocess ("[title]" -> ". ", other brackets dropped,
    double spaces) or its query "activity_label: ctx_a Ctx_b" (ctx_b capitalised)."""
    path = write_jsonl(tmp_path / "hs.jsonl", [
        {"activity_label": "Making tea", "ctx_a": "A man boils water.", "ctx_b": "then he",
         "ctx": "A man boils water. then he", "endings": ["pours it [substeps] out.", "sings  loudly."],
         "label": "1"},
        {"ctx": "How to cook [title] Heat the pan.", "endings": ["Add oil.", "Leave."], "label": 0},
    ])
    first, second = read_questions(path)
    assert first.context == "Making tea: A man boils water. Then he"
    assert first.choices == ["pours it out.", "sings loudly."] and first.answer == 1
    assert second.context == "How to cook. Heat the pan." and second.answer == 0


def test_piqa_openbookqa_siqa_generic(tmp_path: Path) -> None:
    """Guards against a prompt that differs from lm-eval's piqa ("Question: {goal}\\nAnswer:"), openbookqa
    (question_stem as is, answerKey lstripped), social_iqa ("Q: {context} {question}\\nA:", label 1-based)
    templates, and the generic format's answer given as the text of a choice."""
    piqa = read_questions(write_jsonl(tmp_path / "piqa.jsonl", [
        {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "freeze it", "label": 0}]))[0]
    assert (piqa.context, piqa.choices, piqa.answer) == ("Question: Open a jar\nAnswer:",
                                                        ["twist the lid", "freeze it"], 0)
    obqa = read_questions(write_jsonl(tmp_path / "obqa.jsonl", [
        {"id": "7-1", "question_stem": "The sun is a", "choices": {"text": ["star", "planet"], "label": ["A", "B"]},
         "answerKey": " A"}]))[0]
    assert (obqa.context, obqa.choices, obqa.answer) == ("The sun is a", ["star", "planet"], 0)
    siqa = read_questions(write_jsonl(tmp_path / "siqa.jsonl", [
        {"context": "Tom fed the dog.", "question": "Why did Tom do this?", "answerA": "it was hungry",
         "answerB": "to sleep", "answerC": "for fun", "label": "1"}]))[0]
    assert (siqa.context, siqa.choices, siqa.answer) == ("Q: Tom fed the dog. Why did Tom do this?\nA:",
                                                        ["it was hungry", "to sleep", "for fun"], 0)
    generic = read_questions(write_jsonl(tmp_path / "g.jsonl", [
        {"context": "2+2=", "choices": ["3", "4"], "answer": "4"}, {"context": "x", "choices": ["a", "b"], "answer": 0},
    ]))
    assert [(q.context, q.choices, q.answer) for q in generic] == [("2+2=", ["3", "4"], 1), ("x", ["a", "b"], 0)]


def test_format_argument_and_limit(tmp_path: Path) -> None:
    """Guards against `limit` reading past the first N (or failing on a bad line after them) and the
    format= argument being ignored."""
    path = write_jsonl(tmp_path / "g.jsonl", [{"context": "c", "choices": ["a", "b"], "answer": 1}] * 2 + ["{bad"])
    assert len(read_questions(path, limit=2)) == 2
    assert len(read_questions(path, format="generic", limit=1)) == 1
    with pytest.raises(DataError, match="field 'goal'"):
        read_questions(path, format="piqa")


@pytest.mark.parametrize(("records", "line", "needle"), [
    ([{"context": "c", "choices": ["a", "b"], "answer": 0}, {"context": "c", "choices": ["a", "b"]}], 2, "'answer'"),
    ([{"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"}], 1, "'answerKey'"),
    ([{"goal": "g", "sol1": "a", "sol2": " ", "label": 0}], 1, "'sol2'"),
    ([{"context": "c", "choices": ["a", ""], "answer": 0}], 1, "'choices'"),
    ([{"text": "pretrain text, not a task"}], 1, "match no task format"),
    ([{"context": "c", "choices": ["a", "b"], "answer": 0}, "{not json"], 2, "not valid JSON"),
    ([{"context": "c", "choices": ["a", "b"], "answer": 5}], 1, "'answer'"),
    ([{"question": "q", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "E"}], 1, "'answer'"),
    ([{"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c", "label": "0"}], 1, "'label'"),
])
def test_bad_lines_name_file_line_and_field(tmp_path: Path, records: list, line: int, needle: str) -> None:
    """Guards against a bad task line (missing column, answer not among the choices, empty choice, wrong
    format, invalid JSON) crashing with a KeyError or being skipped: a DataError names file, line and field."""
    path = write_jsonl(tmp_path / "task.jsonl", records)
    with pytest.raises(DataError) as caught:
        read_questions(path)
    message = str(caught.value)
    assert str(path) in message and f"line {line}" in message and needle in message
    assert "\n" not in message


def test_bad_csv_row_names_its_line(tmp_path: Path) -> None:
    """Guards against a CSV row's problem being reported at the wrong line (the header is line 1)."""
    path = tmp_path / "ceval.csv"
    path.write_text("id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n1,q,a,,c,d,B\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3, field 'B'.*empty"):
        read_questions(path)


# --- scoring -------------------------------------------------------------------------------------------------


@torch.no_grad()
def brute_force(model: CausalLM, context: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([context + continuation])
    logp = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]  # (T, V)
    return sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(continuation))


QUESTIONS = [
    Question("The capital of France is", ["Paris", "a big blue whale", "北京"], 0, "q:1", 1),
    Question("Mira bought 3 apples and 2 pears. ", ["five fruits", "7"], 1, "q:2", 2),  # trailing space moves
    Question("", ["the sea", "river"], 0, "q:3", 3),  # empty context: the prefix token
    Question("2+2=", ["4", "5", "22", "four"], 0, "q:4", 4),
]


def test_batched_loglikelihoods_equal_one_forward_per_choice(builtin_dir: Path) -> None:
    """Guards against the shared-context KV cache, the copy to one row per choice or the right padding
    changing any choice's score: each equals an unbatched forward over context + choice, to 1e-5."""
    tokenizer = load_tokenizer(builtin_dir)
    model = tiny_model(len(tokenizer))
    result = score_questions(model, tokenizer, QUESTIONS)
    for question, scored in zip(QUESTIONS, result.questions):
        for choice, ll in zip(question.choices, scored.loglikelihoods):
            context, continuation = encode_pair(tokenizer, question.context, " " + choice)
            assert math.isclose(ll, brute_force(model, context, continuation), abs_tol=1e-5), (question.id, choice)
    assert len(set(result.questions[0].tokens)) > 1  # the padding was really exercised


def test_encode_pair_follows_lm_eval(builtin_dir: Path) -> None:
    """Guards against a trailing space left on the context (lm-eval moves it to the continuation) and an
    empty context scored from nothing (lm-eval starts from BOS, else EOS)."""
    tokenizer = load_tokenizer(builtin_dir)
    context, continuation = encode_pair(tokenizer, "Mira bought ", "apples")
    assert context == tokenizer.encode("Mira bought", add_special_tokens=False)
    assert context + continuation == tokenizer.encode("Mira bought apples", add_special_tokens=False)
    context, continuation = encode_pair(tokenizer, "", " the sea")
    expected = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    assert context == [prefix_token_id(tokenizer)] == [expected]
    assert continuation == tokenizer.encode(" the sea", add_special_tokens=False)


def test_uniform_model_scores_minus_n_tokens_ln_v(builtin_dir: Path) -> None:
    """Guards against scoring the wrong positions or counting the context: with every logit 0 each choice
    scores exactly -n_tokens * ln V, V the model's width."""
    tokenizer = load_tokenizer(builtin_dir)
    vocab = len(tokenizer) + 5
    model = tiny_model(vocab)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    result = score_questions(model, tokenizer, QUESTIONS)
    for scored in result.questions:
        for ll, n in zip(scored.loglikelihoods, scored.tokens):
            assert math.isclose(ll, -n * math.log(vocab), rel_tol=1e-6)


def test_long_context_is_cut_from_the_left(builtin_dir: Path) -> None:
    """Guards against a context longer than the model's positions overflowing the KV cache: it is cut from
    the left so context + choice fits, as lm-eval truncates."""
    tokenizer = load_tokenizer(builtin_dir)
    model = tiny_model(len(tokenizer))
    limit = model.config.max_position_embeddings
    context = [5] * (limit + 10)
    (ll,) = choice_loglikelihoods(model, context, [[6, 7, 8]])
    assert math.isclose(ll, brute_force(model, context[-(limit - 2):], [6, 7, 8]), abs_tol=1e-5)


def test_metrics_on_a_hand_made_case() -> None:
    """Guards against acc_norm dividing by tokens (lm-eval divides by characters), acc_bytes by characters,
    ties not going to the first choice, and the centred accuracy using the wrong baseline."""
    result = ChoiceResult("hand", [
        # sums pick 0; per character (-1, -0.6) picks 1; per byte (-1, -0.2... ) picks 1 too
        QuestionScore("a", 1, [-4.0, -6.0], [2, 3], [4, 10], [4, 30]),
        # sums pick 1 (right); per character: -2/2=-1 vs -1/1=-1, a tie -> 0; per byte -2/2 vs -1/3 -> 1
        QuestionScore("b", 1, [-2.0, -1.0], [1, 1], [2, 1], [2, 3]),
        # four choices: sums pick 2, wrong; per character 3 (-3/30); per byte the same
        QuestionScore("c", 3, [-5.0, -9.0, -1.0, -3.0], [1, 1, 1, 1], [1, 1, 1, 30], [1, 1, 1, 30]),
        # all right
        QuestionScore("d", 0, [-1.0, -9.0, -9.0, -9.0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]),
    ])
    assert [q.chosen for q in result.questions] == [0, 1, 2, 0]
    assert [q.chosen_norm for q in result.questions] == [1, 0, 3, 0]
    assert [q.chosen_bytes for q in result.questions] == [1, 1, 3, 0]
    assert result.acc == 0.5 and result.acc_norm == 0.75 and result.acc_bytes == 1.0
    b = (1 / 2 + 1 / 2 + 1 / 4 + 1 / 4) / 4
    assert math.isclose(result.baseline, b) and math.isclose(result.acc_centered, (0.5 - b) / (1 - b))
    data = result.to_dict()
    assert data["n"] == 4 and data["acc"] == 0.5 and data["questions"][1]["chosen_norm"] == 0


def test_evaluate_file_end_to_end(builtin_dir: Path, tmp_path: Path) -> None:
    """Guards against the file path, limit and per-question details not reaching the result."""
    tokenizer = load_tokenizer(builtin_dir)
    path = write_jsonl(tmp_path / "arc_easy.jsonl", [
        {"question": "Which is a fruit?", "choices": {"text": ["apple", "rock"], "label": ["A", "B"]},
         "answerKey": "A"}] * 3)
    result = evaluate_file(tiny_model(len(tokenizer)), tokenizer, path, limit=2)
    data = result.to_dict()
    assert data["task"] == "arc_easy" and data["n"] == 2 and data["questions"][0]["id"] == "arc_easy.jsonl:1"
    assert data["baseline"] == 0.5 and len(data["questions"][0]["loglikelihoods"]) == 2
