"""A small BEIR folder written by the tests (English, so that a real encoder ranks it sensibly)."""

from __future__ import annotations

import json
from pathlib import Path

# _id -> (title or None for no title key, text)
CORPUS = {
    "c-temp": ("Coffee brewing", "Water between 90 and 96 degrees Celsius extracts coffee best, just off the boil."),
    # a near-duplicate of c-temp that is not judged: mining with a margin must drop it
    "c-temp-copy": ("Coffee brewing", "Water between 90 and 96 degrees Celsius extracts coffee best, just off the boil!"),
    "c-store": ("Coffee storage", "Keep coffee beans in an airtight, opaque container at room temperature."),
    "c-grind": ("", "Grind coffee beans just before brewing, because ground coffee goes stale within days."),
    "c-tea": ("Tea", "Green tea is brewed with water at about 80 degrees Celsius for two to three minutes."),
    "c-bitter": ("Bitter coffee", "Bitter coffee is often over-extracted: the grind is too fine or it steeped too long."),
    "c-bread": (None, "Knead bread dough by hand for about ten minutes, until it is smooth and elastic."),
    "c-oven": ("Baking", "A baked loaf sounds hollow when tapped on the bottom."),
    "c-train": ("Rail travel", "High-speed trains in Europe often require a reserved seat."),
    "c-bike": ("Rail travel", "Bicycles are allowed on many regional trains outside rush hour."),
    "c-cat": ("Pets", "Cats sleep between twelve and sixteen hours a day."),
    "c-dog": ("Pets", "Adult dogs need at least one walk a day, and energetic breeds need two."),
    "c-run": ("Running", "Beginners should increase their weekly running distance by no more than ten percent."),
    "c-tax": ("Finance", "Keep receipts of deductible expenses for at least five years."),
    "c-moon": ("Astronomy", "The Moon takes about 27 days to orbit the Earth."),
    "c-rain": ("Weather", "Rain forms when water droplets in clouds merge and become too heavy to float."),
}
QUERIES = {
    "q-temp": "What water temperature is best for brewing coffee?",
    "q-store": "How should I keep coffee beans fresh?",
    "q-bread": "How long should I knead bread dough?",
    "q-cat": "How many hours a day do cats sleep?",
    "q-unjudged": "Is this query judged anywhere?",
}
# (query-id, corpus-id, score); score 0 = judged non-relevant
TRAIN_QRELS = [
    ("q-temp", "c-temp", 1),
    ("q-temp", "c-tea", 0),
    ("q-store", "c-store", 1),
    ("q-store", "c-grind", 2),  # a second positive of the same query
    ("q-bread", "c-bread", 1),
]
DEV_QRELS = [("q-cat", "c-cat", 1), ("q-cat", "c-dog", 0)]


def document_text(doc_id: str) -> str:
    """The text BEIR gives a document: "title text" (the text alone without a title)."""
    title, text = CORPUS[doc_id]
    return f"{title} {text}" if title else text


def write_qrels(path: Path, rows: list[tuple[str, str, int]], header: bool = True) -> None:
    lines = ["query-id\tcorpus-id\tscore"] if header else []
    lines += [f"{q}\t{c}\t{s}" for q, c, s in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_beir_folder(folder: Path) -> Path:
    """Write corpus.jsonl, queries.jsonl, qrels/train.tsv and qrels/dev.tsv under ``folder``."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for doc_id, (title, text) in CORPUS.items():
            record = {"_id": doc_id, "text": text} if title is None else {"_id": doc_id, "title": title, "text": text}
            handle.write(json.dumps(record) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for query_id, text in QUERIES.items():
            handle.write(json.dumps({"_id": query_id, "text": text, "metadata": {}}) + "\n")
    write_qrels(folder / "qrels" / "train.tsv", TRAIN_QRELS)
    write_qrels(folder / "qrels" / "dev.tsv", DEV_QRELS)
    return folder
