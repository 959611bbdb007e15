"""Regenerate the demo data files of ``hf_codiemb/demo_data`` from the hand-written templates.

Usage: ``python tools/demo_data/make_demo_data.py`` (deterministic: same files every run). This generator is
tooling, not part of the installed package: the package ships only the jsonl files it writes
(``tests/test_demo_data.py`` checks that they are what it writes).

- ``_ir_topics.py``: 40 everyday topics with 5 question/passage facts each. An IR record is one question,
  its passage (plus a second, differently worded passage for some facts) as positives, and 3-5 negatives: the
  question's *echo* (a page that repeats the question word for word without answering it, from a template) and
  2-4 passages of the *same topic* answering other questions. 30 topics go to ``ir_train.jsonl`` (150
  records), 10 others to ``ir_dev.jsonl`` (50 records); train and dev echoes come from different templates.
  The echoes make the task hard for a word-matching encoder (all-MiniLM-L6-v2 ranks most of them above the
  answer), so that training has something to change.
- ``_sts_scenes.py``: 70 scenes of 5 sentences; each scene gives 5 pairs scored by a fixed rubric band
  (paraphrase 4.6-5.0, changed detail 3.2-4.0, same topic 1.8-2.8, loosely related 0.6-1.6, other scene
  0.0-0.4; the value inside a band is drawn with a fixed seed, in steps of 0.2). 50 scenes go to
  ``sts_train.jsonl`` (250 pairs), 20 others to ``sts_dev.jsonl`` (100 pairs).
"""

from __future__ import annotations

import json
import pathlib
import random

# The template modules sit next to this script (its folder is on the path when it runs).
from _ir_topics import ECHO_TEMPLATES_DEV, ECHO_TEMPLATES_TRAIN, IR_TOPICS
from _sts_scenes import STS_SCENES

OUT_DIR = pathlib.Path(__file__).resolve().parents[2] / "hf_codiemb" / "demo_data"
SEED = 2508
IR_INSTRUCTION = "Given a question, retrieve a passage that answers it"
# (low, high) score band of each pair kind, in the order of a scene's sentences after the base.
STS_BANDS = {
    "paraphrase": (4.6, 5.0),
    "changed_detail": (3.2, 4.0),
    "same_topic": (1.8, 2.8),
    "loosely_related": (0.6, 1.6),
    "other_scene": (0.0, 0.4),
}


def _band_score(band: tuple[float, float], rng: random.Random) -> float:
    low, high = band
    steps = round((high - low) / 0.2)
    return round(low + 0.2 * rng.randint(0, steps), 1)


def ir_records(topic_names: list[str], echo_templates: list[str], rng: random.Random) -> list[dict]:
    """One record per fact of the given topics; negatives are the question's echo (from ``echo_templates``) and
    the other facts' passages of the topic."""
    echo_rng = random.Random(f"{SEED}-echo-{len(topic_names)}")
    records = []
    for topic in topic_names:
        facts = IR_TOPICS[topic]
        for index, (question, *passages) in enumerate(facts):
            others = [fact for other, fact in enumerate(facts) if other != index]
            negatives = [fact[1] for fact in others]
            rng.shuffle(negatives)
            extra = [fact[2] for fact in others if len(fact) > 2]
            roll = rng.random()
            if roll < 0.3:
                negatives = negatives[:2]
            elif roll > 0.75 and extra:
                negatives = negatives[:3] + [rng.choice(extra)]
            # a separate generator for the echoes keeps the draws of `rng` (hence the STS files) as they were
            echo = echo_rng.choice(echo_templates).format(question=question)
            negatives.insert(echo_rng.randrange(len(negatives) + 1), echo)
            records.append(
                {
                    "task": "ir",
                    "instruction": IR_INSTRUCTION,
                    "query": question,
                    "positives": list(passages),
                    "negatives": negatives,
                }
            )
    return records


def sts_records(scene_indices: list[int], rng: random.Random) -> list[dict]:
    """Five scored pairs per scene; the unrelated pair uses the next scene of the same split."""
    records = []
    for position, index in enumerate(scene_indices):
        base, paraphrase, changed, same_topic, loose = STS_SCENES[index]
        other = STS_SCENES[scene_indices[(position + 1) % len(scene_indices)]][0]
        pairs = [
            (base, paraphrase, "paraphrase"),
            (base, changed, "changed_detail"),
            (base, same_topic, "same_topic"),
            (base, loose, "loosely_related"),
            (paraphrase, other, "other_scene"),
        ]
        for sentence1, sentence2, kind in pairs:
            records.append(
                {
                    "task": "sts",
                    "query": sentence1,
                    "positives": [sentence2],
                    "positive_scores": [_band_score(STS_BANDS[kind], rng)],
                }
            )
    return records


def write_jsonl(path: pathlib.Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(SEED)
    topics = list(IR_TOPICS)
    dev_topics = topics[3::4]
    train_topics = [topic for topic in topics if topic not in dev_topics]
    write_jsonl(OUT_DIR / "ir_train.jsonl", ir_records(train_topics, ECHO_TEMPLATES_TRAIN, rng))
    write_jsonl(OUT_DIR / "ir_dev.jsonl", ir_records(dev_topics, ECHO_TEMPLATES_DEV, rng))
    dev_scenes = [index for index in range(len(STS_SCENES)) if index % 7 in (3, 6)]
    train_scenes = [index for index in range(len(STS_SCENES)) if index not in dev_scenes]
    write_jsonl(OUT_DIR / "sts_train.jsonl", sts_records(train_scenes, rng))
    write_jsonl(OUT_DIR / "sts_dev.jsonl", sts_records(dev_scenes, rng))


if __name__ == "__main__":
    main()
