"""Generate the built-in corpus: a small fictional world a tiny model can learn in minutes.

Three files come out, in minimind's jsonl formats:
  pretrain.jsonl  {"text": ...}            every fact stated many times, in varied forms, EN and ZH,
                                           including FAQ lines in every question wording
  sft.jsonl       {"conversations": [...]}  terse Q&A about every fact and sum, plus identity chats
  heldout.jsonl   {"id", "kind", "lang", "messages", "answer"}  questions in wordings SFT never used

The split is by wording: one question template per attribute, language and for sums is kept out of
SFT (it appears only in pretraining text), and the held-out questions use exactly those templates,
for a random 30% of the facts and sums. So no held-out question appears in sft.jsonl; answering one
needs the fact (taught by both stages), the held-out wording (seen only in pretraining) and the terse
chat behaviour (taught by SFT). A model without pretraining, or without SFT, fails it.

Pure stdlib, seeded, no network: `python dataset/make_corpus.py` is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

ATTRS = ("city", "job", "colour", "age")
LANGS = ("en", "zh")
N_PEOPLE = 30
HELDOUT_SHARE = 0.3

# How often each fact is stated in pretrain.jsonl, per language. Tuned so a ~3M-parameter model
# memorises all of it in the tiny preset's ~10 passes of CPU training (dataset/README.md).
STATEMENTS_PER_LANG = 20  # single-sentence statements, mixed into multi-person paragraphs
BIOS_PER_LANG = 8  # short biographies; each states all four facts of one person, shuffled
FAQ_ROUNDS = 8  # "Q: ... A: ..." lines: every SFT question template, this many times per fact
SUM_STATEMENTS_PER_LANG = 12
SUM_FAQ_ROUNDS = 4
SFT_TEMPLATES_PER_LANG = 2  # distinct question phrasings per SFT fact and language

IDENTITY = {
    "en": "I am MiniMind, a small language model trained with minimind-studio.",
    "zh": "我是 MiniMind，一个用 minimind-studio 训练的小型语言模型。",
}

# Invented cities; the same string is used in both languages.
CITIES = ["Velmora", "Ostrig", "Kaldun", "Mirefen", "Saltreach", "Brisquay", "Tolvane", "Harrowmet"]
# (English, Chinese). English jobs all start with a consonant so "a {job}" is always right.
JOBS = [("baker", "面包师"), ("farmer", "农民"), ("teacher", "老师"), ("doctor", "医生"),
        ("fisher", "渔夫"), ("painter", "画家"), ("potter", "陶匠"), ("sailor", "水手")]
COLOURS = [("red", "红色"), ("blue", "蓝色"), ("green", "绿色"), ("yellow", "黄色"),
           ("purple", "紫色"), ("orange", "橙色"), ("white", "白色"), ("black", "黑色")]

# Name parts: two or three open syllables and a closing consonant, e.g. "Tavoren", "Brisel".
ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "th"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou"]  # repeats weight the plain vowels
CODAS = ["", "n", "r", "l", "s", "th", "m"]

# Statement templates: {n} is the person's name, {v} the answer string in that language.
STATEMENTS = {
    "en": {
        "city": ["{n} lives in {v}.", "{n}'s home city is {v}.", "{n} has a house in {v}.",
                 "The home of {n} is the city of {v}.", "{n} lives in the city of {v}."],
        "job": ["{n} works as a {v}.", "{n} is a {v}.", "By trade, {n} is a {v}.",
                "The job of {n} is {v}.", "{n} earns a living as a {v}."],
        "colour": ["{n}'s favourite colour is {v}.", "{n} likes {v} more than any other colour.",
                   "The favourite colour of {n} is {v}.", "{n} loves the colour {v}."],
        "age": ["{n} is {v} years old.", "{n}'s age is {v}.", "The age of {n} is {v} years.",
                "{n} turned {v} this year."],
    },
    "zh": {
        "city": ["{n}住在{v}。", "{n}的家乡城市是{v}。", "{n}的家在{v}。", "{n}在{v}生活。",
                 "{n}住在{v}这座城市。"],
        # Chinese answers stand after "：" or inside「」: a Han run like "的工作是老师" would become one
        # BPE token, and the answer token "老师" that SFT expects would never follow the name.
        "job": ["{n}的职业：{v}。", "{n}的工作：{v}。", "{n}从事的工作：{v}。", "职业方面，{n}是一名「{v}」。"],
        "colour": ["{n}最喜欢的颜色：{v}。", "{n}最爱的颜色：{v}。", "颜色里，{n}最喜欢「{v}」。"],
        "age": ["{n}今年{v}岁。", "{n}的年龄是{v}岁。", "{n}已经{v}岁了。"],
    },
}

# Question templates, shared by SFT, held-out and the FAQ lines of pretrain.
QUESTIONS = {
    "en": {
        "city": ["Where does {n} live?", "Which city is {n}'s home?", "What is the home city of {n}?",
                 "In which city does {n} live?"],
        "job": ["What is {n}'s job?", "What does {n} do for a living?", "What work does {n} do?"],
        "colour": ["What is {n}'s favourite colour?", "Which colour does {n} like best?",
                   "What colour does {n} love most?"],
        "age": ["How old is {n}?", "What is {n}'s age?", "How many years old is {n}?"],
    },
    "zh": {
        "city": ["{n}住在哪里？", "{n}住在哪个城市？", "{n}的家乡城市是哪里？"],
        "job": ["{n}的工作是什么？", "{n}是做什么工作的？", "{n}的职业是什么？"],
        "colour": ["{n}最喜欢什么颜色？", "{n}最喜欢的颜色是什么？", "{n}最爱哪种颜色？"],
        "age": ["{n}今年几岁？", "{n}多大了？", "{n}的年龄是多少？"],
    },
}

# Sums: the first statement of each language ("{a} + {b} = {s}" and a full stop) is always used,
# so tests can look for it verbatim.
SUM_STATEMENTS = {
    "en": ["{a} + {b} = {s}.", "{a} plus {b} is {s}.", "Adding {a} and {b} gives {s}.", "The sum of {a} and {b} is {s}."],
    "zh": ["{a} + {b} = {s}。", "{a}加{b}等于{s}。", "{a}和{b}的和是{s}。", "{a}加上{b}得{s}。"],
}
SUM_QUESTIONS = {
    "en": ["What is {a} + {b}?", "What is {a} plus {b}?", "How much is {a} plus {b}?"],
    "zh": ["{a}加{b}等于多少？", "{a}加{b}是几？", "{a}加上{b}是多少？"],
}
# Two FAQ layouts: inline "Q: ... A: ...", and transcript lines with the answer alone on the next line.
# The transcript puts the answer right after a newline, as the chat template does, so the answer is
# the same token sequence in pretraining and in SFT (" teacher" and "teacher" are different tokens).
FAQ_FORMATS = {"en": ("Q: {q} A: {a}", "user\n{q}\nassistant\n{a}"), "zh": ("问：{q} 答：{a}", "user\n{q}\nassistant\n{a}")}

IDENTITY_QUESTIONS = {
    "en": ["Who are you?", "What are you?", "What is your name?", "Introduce yourself.", "Tell me about yourself."],
    "zh": ["你是谁？", "你是什么？", "你叫什么名字？", "介绍一下你自己。", "请做个自我介绍。"],
}
# Phrasings kept out of SFT: held-out identity checks that the reply generalises past templates.
IDENTITY_HELDOUT = {
    "en": ["Who are you, exactly?", "Can you tell me who you are?", "What should I call you?"],
    "zh": ["你到底是谁？", "能告诉我你是谁吗？", "我该怎么称呼你？"],
}
IDENTITY_PRETRAIN = {
    "en": ["MiniMind is a small language model trained with minimind-studio.",
           "The assistant is called MiniMind. It is a small language model trained with minimind-studio."],
    "zh": ["MiniMind是一个用minimind-studio训练的小型语言模型。", "这个助手叫MiniMind，是一个用minimind-studio训练的小型语言模型。"],
}
SYSTEM_PROMPTS = {
    "en": ["You are MiniMind, a helpful assistant.", "Answer with just the answer.",
           "You are a helpful assistant. Keep answers short."],
    "zh": ["你是MiniMind，一个乐于助人的助手。", "请只回答答案。", "你是一个有用的助手，回答要简短。"],
}
BIO_OPENERS = {
    "en": ["Here is a short note about {n}.", "This is {n}.", "Let me tell you about {n}.", "About {n}:"],
    "zh": ["下面介绍一下{n}。", "这是{n}。", "关于{n}：", "我来讲讲{n}。"],
}
# Light filler about the world's places: never mentions a person, so it cannot contradict a fact.
FILLER = {
    "en": ["The market in {c} opens early in the morning.", "A wide river runs past {c}.",
           "In spring the hills around {c} turn green.", "The road from {c} to {d} is long and quiet.",
           "Many boats stop at the harbour of {c}.", "The streets of {c} are busy on market days.",
           "People in {c} like to walk by the water in the evening.", "Snow rarely falls in {c}."],
    "zh": ["{c}的集市一大早就开门了。", "一条宽阔的河从{c}旁边流过。", "春天，{c}周围的山都变绿了。",
           "从{c}到{d}的路又长又安静。", "很多船会停在{c}的港口。", "赶集的日子，{c}的街道很热闹。",
           "{c}的人喜欢傍晚在水边散步。", "{c}很少下雪。"],
}
FILLER_PROB = 0.35  # chance that a paragraph gets one filler sentence


@dataclass(frozen=True)
class Person:
    name: str
    city: int
    job: int
    colour: int
    age: int

    def value(self, attr: str, lang: str) -> str:
        """The exact answer string for one attribute in one language."""
        if attr == "city":
            return CITIES[self.city]
        if attr == "age":
            return str(self.age)
        pair = (JOBS if attr == "job" else COLOURS)[getattr(self, attr)]
        return pair[LANGS.index(lang)]


Fact = tuple[int, str]  # (person index, attribute)
Sum = tuple[int, int]  # (a, b), 0..9 each


def fill(lang: str, template: str, **values: object) -> str:
    """Format a template; Chinese text gets a space between Han characters and Latin letters (not digits).

    That spacing is common Chinese typography, and it matters here: a byte-level BPE pre-tokenizer
    treats a run of letters (Han and Latin alike) as one word, so on a small repetitive corpus
    "Taliro住在Velmora" would become a single token and the fact would be unreachable from a question.
    """
    text = template.format(**values)
    if lang == "zh":
        text = _HAN_THEN_ALNUM.sub(r"\1 \2", _ALNUM_THEN_HAN.sub(r"\1 \2", text))
    return text


_HAN_THEN_ALNUM = re.compile(r"([\u4e00-\u9fff])([A-Za-z])")
_ALNUM_THEN_HAN = re.compile(r"([A-Za-z])([\u4e00-\u9fff])")


def make_name(rng: random.Random) -> str:
    syllables = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(rng.choice((2, 2, 3)))]
    return ("".join(syllables) + rng.choice(CODAS)).capitalize()


def make_people(rng: random.Random) -> list[Person]:
    names: list[str] = []
    while len(names) < N_PEOPLE:
        name = make_name(rng)
        # No name may contain another (or a city), so text searches stay unambiguous; distinct first
        # three letters keep people apart early in the name, which a tiny model needs.
        taken = names + CITIES + ["MiniMind"]
        if 5 <= len(name) <= 9 and not any(name in t or t in name or name[:3] == t[:3] for t in taken):
            names.append(name)
    return [Person(n, rng.randrange(len(CITIES)), rng.randrange(len(JOBS)), rng.randrange(len(COLOURS)),
                   rng.randint(18, 79)) for n in names]


def split_heldout(rng: random.Random, people: list[Person]) -> tuple[list[Fact], list[Sum]]:
    """Pick the facts and sums the held-out file asks about: the same share of every attribute, and of the 100 sums."""
    facts: list[Fact] = []
    for attr in ATTRS:
        idx = list(range(len(people)))
        rng.shuffle(idx)
        facts += [(i, attr) for i in sorted(idx[: round(HELDOUT_SHARE * len(people))])]
    sums = [(a, b) for a in range(10) for b in range(10)]
    rng.shuffle(sums)
    return sorted(facts), sorted(sums[: round(HELDOUT_SHARE * len(sums))])


def cycle(rng: random.Random, templates: list[str], k: int) -> list[str]:
    """k templates, each used as evenly as possible, in a random order."""
    order = list(templates)
    rng.shuffle(order)
    return [order[i % len(order)] for i in range(k)]


def chunks(rng: random.Random, items: list[str], lo: int, hi: int) -> list[list[str]]:
    out, i = [], 0
    while i < len(items):
        n = rng.randint(lo, hi)
        out.append(items[i : i + n])
        i += n
    return out


def filler(rng: random.Random, lang: str) -> str:
    c, d = rng.sample(CITIES, 2)
    return fill(lang, rng.choice(FILLER[lang]), c=c, d=d)


def pretrain_texts(rng: random.Random, people: list[Person]) -> list[str]:
    """Every fact in every form; documents are shuffled so no stage of training sees one kind only."""
    docs: list[str] = []
    sep = {"en": " ", "zh": ""}
    for lang in LANGS:
        statements, faq = [], []
        for p in people:
            for attr in ATTRS:
                v = p.value(attr, lang)
                statements += [fill(lang, t, n=p.name, v=v) for t in cycle(rng, STATEMENTS[lang][attr], STATEMENTS_PER_LANG)]
                questions = QUESTIONS[lang][attr]
                faq += [(j % 2, fill(lang, FAQ_FORMATS[lang][j % 2], q=fill(lang, q, n=p.name), a=v))
                        for j, q in enumerate(cycle(rng, questions, FAQ_ROUNDS * len(questions)))]
            for _ in range(BIOS_PER_LANG):
                attrs = list(ATTRS)
                rng.shuffle(attrs)
                parts = [fill(lang, rng.choice(BIO_OPENERS[lang]), n=p.name)]
                parts += [fill(lang, rng.choice(STATEMENTS[lang][a]), n=p.name, v=p.value(a, lang)) for a in attrs]
                docs.append(sep[lang].join(parts))
        for a in range(10):
            for b in range(10):
                s = a + b
                forms = SUM_STATEMENTS[lang][:1] + cycle(rng, SUM_STATEMENTS[lang][1:], SUM_STATEMENTS_PER_LANG - 1)
                statements += [fill(lang, t, a=a, b=b, s=s) for t in forms]
                questions = SUM_QUESTIONS[lang]
                faq += [(j % 2, fill(lang, FAQ_FORMATS[lang][j % 2], q=fill(lang, q, a=a, b=b), a=s))
                        for j, q in enumerate(cycle(rng, questions, SUM_FAQ_ROUNDS * len(questions)))]
        statements += [fill(lang, t) for t in IDENTITY_PRETRAIN[lang]] * 10
        faq += [(j, fill(lang, FAQ_FORMATS[lang][j], q=q, a=IDENTITY[lang])) for q in IDENTITY_QUESTIONS[lang] for j in (0, 1)]
        rng.shuffle(statements)
        rng.shuffle(faq)
        for para in chunks(rng, statements, 3, 7):
            if rng.random() < FILLER_PROB:
                para.insert(rng.randrange(len(para) + 1), filler(rng, lang))
            docs.append(sep[lang].join(para))
        for form in (0, 1):
            lines = [text for f, text in faq if f == form]
            docs += ["\n".join(block) for block in chunks(rng, lines, 3, 6)]
    rng.shuffle(docs)
    return docs


def sft_templates(templates: list[str]) -> list[str]:
    """The wordings SFT may use: all but the last, which is kept for the held-out questions."""
    return templates[:-1]


def heldout_template(templates: list[str]) -> str:
    return templates[-1]


def fact_qas(rng: random.Random, people: list[Person], facts: list[Fact], k: int) -> list[tuple[str, str, str]]:
    """(lang, question, answer) for each fact, asked with k distinct SFT templates per language."""
    out = []
    for i, attr in facts:
        p = people[i]
        for lang in LANGS:
            templates = sft_templates(QUESTIONS[lang][attr])
            for q in rng.sample(templates, min(k, len(templates))):
                out.append((lang, fill(lang, q, n=p.name), p.value(attr, lang)))
    return out


def sum_qas(rng: random.Random, sums: list[Sum], k: int) -> list[tuple[str, str, str]]:
    out = []
    for a, b in sums:
        for lang in LANGS:
            templates = sft_templates(SUM_QUESTIONS[lang])
            out += [(lang, fill(lang, q, a=a, b=b), str(a + b)) for q in rng.sample(templates, min(k, len(templates)))]
    return out


def sft_conversations(rng: random.Random, people: list[Person], facts: list[Fact], sums: list[Sum]) -> list[dict]:
    """Terse single- and multi-turn chats; about one in six starts with a system message."""
    qas = fact_qas(rng, people, facts, SFT_TEMPLATES_PER_LANG) + sum_qas(rng, sums, SFT_TEMPLATES_PER_LANG)
    qas += [(lang, q, IDENTITY[lang]) for lang in LANGS for q in IDENTITY_QUESTIONS[lang] for _ in range(4)]
    convs: list[dict] = []
    for lang in LANGS:
        pool = [qa for qa in qas if qa[0] == lang]
        rng.shuffle(pool)
        i = 0
        while i < len(pool):
            # Multi-turn chats make the loss mask matter across turns: only assistant turns count.
            n = rng.choice((1, 1, 1, 2, 3))
            msgs = []
            if rng.random() < 0.17:
                msgs.append({"role": "system", "content": fill(lang, rng.choice(SYSTEM_PROMPTS[lang]))})
            for _, q, a in pool[i : i + n]:
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            convs.append({"conversations": msgs})
            i += n
    rng.shuffle(convs)
    return convs


def heldout_items(rng: random.Random, people: list[Person], facts: list[Fact], sums: list[Sum]) -> list[dict]:
    """One question per held-out fact (and sum) and language, in the wording SFT never used."""
    items = []
    for i, attr in facts:
        p = people[i]
        for lang in LANGS:
            q = fill(lang, heldout_template(QUESTIONS[lang][attr]), n=p.name)
            items.append(_item(f"fact-{attr}-{p.name}-{lang}", "fact", lang, q, p.value(attr, lang)))
    for a, b in sums:
        for lang in LANGS:
            q = fill(lang, heldout_template(SUM_QUESTIONS[lang]), a=a, b=b)
            items.append(_item(f"add-{a}-{b}-{lang}", "arithmetic", lang, q, str(a + b)))
    for lang in LANGS:
        for j, q in enumerate(IDENTITY_HELDOUT[lang]):
            items.append(_item(f"identity-{j}-{lang}", "identity", lang, q, IDENTITY[lang]))
    return items


def _item(id_: str, kind: str, lang: str, question: str, answer: str) -> dict:
    return {"id": id_, "kind": kind, "lang": lang, "messages": [{"role": "user", "content": question}],
            "answer": answer}


def build(seed: int = 42) -> dict[str, list[dict]]:
    """The three files' records, keyed by file name. Separate RNG streams keep parts independent."""
    people = make_people(random.Random(seed))
    held_facts, held_sums = split_heldout(random.Random(seed + 1), people)
    sft_facts = [(i, a) for i in range(len(people)) for a in ATTRS]  # every fact, in the SFT wordings
    sft_sums = [(a, b) for a in range(10) for b in range(10)]
    return {
        "pretrain.jsonl": [{"text": t} for t in pretrain_texts(random.Random(seed + 2), people)],
        "sft.jsonl": sft_conversations(random.Random(seed + 3), people, sft_facts, sft_sums),
        "heldout.jsonl": heldout_items(random.Random(seed + 4), people, held_facts, held_sums),
    }


def world(seed: int = 42) -> tuple[list[Person], list[Fact], list[Sum]]:
    """The people and the held-out split, for tests and evaluation scripts."""
    people = make_people(random.Random(seed))
    return (people, *split_heldout(random.Random(seed + 1), people))


def write(out_dir: Path, seed: int = 42) -> dict[str, int]:
    """Write the three files; returns their sizes in bytes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, records in build(seed).items():
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
        path = out_dir / name
        path.write_bytes(text.encode("utf-8"))  # bytes, so no platform newline translation
        sizes[name] = path.stat().st_size
    return sizes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    for name, size in write(args.out, args.seed).items():
        print(f"{args.out / name}: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
