"""Small SQuAD v2 and HotpotQA files for RULER's QA tasks, and the answers a perfect reader would give."""

from __future__ import annotations

import json
from pathlib import Path

CITIES = ["Aldmoor", "Brightwater", "Caerlin", "Dunmere", "Eastvale", "Fallowmere", "Glenrock", "Harrowgate",
          "Ironbridge", "Juniper Bay", "Kestrel Point", "Larkspur", "Millbrook", "Northwood", "Oakhaven", "Pinecrest",
          "Queensford", "Riverton", "Stonehill", "Thornbury", "Upton Vale", "Valewood", "Westmarch", "Yarrowby",
          "Zephyr Cove", "Ashford", "Blackwater", "Coldspring", "Deepdale", "Elmstead"]
RIVERS = ["Arden", "Belle", "Corran", "Deva", "Esk", "Frome"]
PEOPLE = ["Edmund Hale", "Matilda Crane", "Osric Vane", "Beatrice Lowe", "Walter Finch", "Agnes Thorne"]
GOODS = ["woollen cloth", "stained glass", "pocket watches", "hand-made paper", "blue cheese", "silk ribbons"]


def town(i: int) -> tuple[str, list[str], tuple[str, str]]:
    """A town's paragraph (as HotpotQA sentences) and one question about it with its answer."""
    city, river, founder, goods = CITIES[i], RIVERS[i % 6], PEOPLE[(i // 6) % 6], GOODS[(i * 5) % 6]
    sentences = [f"{city} is a market town on the banks of the River {river}.",
                 f" It was founded in {1100 + 23 * i} by {founder}, who built the first stone bridge there.",
                 f" Today the town is best known for its {goods}, sold in markets across the region.",
                 f" About {3000 + 417 * i} people live in {city}, and its old quarter draws visitors every summer."]
    questions = [(f"Who founded {city}?", founder), (f"In which year was {city} founded?", str(1100 + 23 * i)),
                 (f"What is {city} best known for?", goods)]
    return city, sentences, questions[i % 3]


QA_ANSWERS = dict(town(i)[2] for i in range(30))


def write_qa_files(root: Path) -> dict[str, str]:
    """A SQuAD v2 file (6 articles of 5 paragraphs, each with an answerable and an impossible question) and a
    HotpotQA file (30 questions, each with its town's paragraph and three others as context), in `root`."""
    articles = []
    for a in range(6):
        paragraphs = []
        for i in range(5 * a, 5 * a + 5):
            city, sentences, (question, answer) = town(i)
            paragraphs.append({"context": "".join(sentences), "qas": [
                {"question": question, "answers": [{"text": answer}], "is_impossible": False},
                {"question": f"Who demolished the bridge of {city}?", "answers": [], "is_impossible": True}]})
        articles.append({"title": f"Region {a}", "paragraphs": paragraphs})
    hotpot = []
    for i in range(30):
        city, sentences, (question, answer) = town(i)
        others = [town((i + j) % 30) for j in (7, 13, 21)]
        hotpot.append({"question": question, "answer": answer,
                       "context": [[city, sentences]] + [[c, s] for c, s, _ in others]})
    (root / "squad.json").write_text(json.dumps({"version": "v2.0", "data": articles}))
    (root / "hotpot.json").write_text(json.dumps(hotpot))
    return {"qa_1": str(root / "squad.json"), "qa_2": str(root / "hotpot.json")}
