"""Writes the hand-made SQuAD v1.1-format files in this directory (answer_start computed from the text)."""

import json
from pathlib import Path

DEV = {
    "Lighthouse": ("The Bell Rock Lighthouse stands eleven miles off the coast of Angus, Scotland. It was built "
                   "between 1807 and 1810 by Robert Stevenson, and it is the oldest surviving sea-washed "
                   "lighthouse in the world. Its light was first lit on 1 February 1811. The tower is 35 metres "
                   "tall and was made of granite from Aberdeen.", [
                       ("Who built the Bell Rock Lighthouse?", ["Robert Stevenson"]),
                       ("When was its light first lit?", ["1 February 1811"]),
                       ("How tall is the tower?", ["35 metres"]),
                       ("Where did the granite come from?", ["Aberdeen"]),
                       ("How far off the coast does it stand?", ["eleven miles"]),
                   ]),
    "Tea": ("Tea was introduced to Britain in the seventeenth century. Catherine of Braganza, the Portuguese wife "
            "of Charles II, made it fashionable at court. By the nineteenth century most tea drunk in Britain "
            "came from India rather than China, and the clipper ship Cutty Sark carried tea from China to London "
            "in record time.", [
                ("Who made tea fashionable at court?", ["Catherine of Braganza"]),
                ("Whose wife was Catherine of Braganza?", ["Charles II"]),
                ("Which clipper ship carried tea to London?", ["Cutty Sark"]),
                ("In which century was tea introduced to Britain?", ["seventeenth century", "the seventeenth"]),
                ("Where did most tea drunk in Britain come from by the nineteenth century?", ["India"]),
            ]),
    "Glacier": ("The Aletsch Glacier is the largest glacier in the Alps, with a length of about 23 kilometres. It "
                "lies in the Swiss canton of Valais and is fed by three smaller glaciers that meet at "
                "Konkordiaplatz. In 2001 the glacier and its surroundings became part of a UNESCO World Heritage "
                "Site.", [
                    ("What is the largest glacier in the Alps?", ["The Aletsch Glacier", "Aletsch Glacier"]),
                    ("How long is the Aletsch Glacier?", ["about 23 kilometres", "23 kilometres"]),
                    ("In which canton does the glacier lie?", ["Valais"]),
                    ("Where do the three smaller glaciers meet?", ["Konkordiaplatz"]),
                    ("When did it become part of a World Heritage Site?", ["2001"]),
                ]),
    "Printing": ("Johannes Gutenberg introduced printing with movable type to Europe around 1440 in Mainz. His "
                 "best-known work, the Gutenberg Bible, was printed in Latin, and about 180 copies were made. "
                 "The press used oil-based ink, which stuck better to metal type than the water-based inks used "
                 "before.", [
                     ("Who introduced movable type printing to Europe?", ["Johannes Gutenberg"]),
                     ("In which city did Gutenberg work?", ["Mainz"]),
                     ("In what language was the Gutenberg Bible printed?", ["Latin"]),
                     ("How many copies of the Bible were made?", ["about 180", "180"]),
                     ("What kind of ink did the press use?", ["oil-based ink", "oil-based"]),
                 ]),
    "Volcano": ("Mount Tambora is a volcano on the island of Sumbawa in Indonesia. Its eruption in April 1815 was "
                "the largest in recorded history. The ash it threw into the atmosphere cooled the planet, and "
                "1816 became known as the Year Without a Summer, when crops failed across Europe and North "
                "America.", [
                    ("On which island is Mount Tambora?", ["Sumbawa"]),
                    ("When did Mount Tambora erupt?", ["April 1815"]),
                    ("What was 1816 known as?", ["the Year Without a Summer", "Year Without a Summer"]),
                    ("In which country is Mount Tambora?", ["Indonesia"]),
                    ("Where did crops fail?", ["across Europe and North America", "Europe and North America"]),
                ]),
    "Orchestra": ("The Vienna Philharmonic was founded in 1842 by the composer Otto Nicolai. Its members are "
                  "chosen from the orchestra of the Vienna State Opera. Since 1939 the orchestra has given a New "
                  "Year's Concert every year, which is broadcast to more than ninety countries.", [
                      ("Who founded the Vienna Philharmonic?", ["Otto Nicolai", "the composer Otto Nicolai"]),
                      ("When was the Vienna Philharmonic founded?", ["1842"]),
                      ("From which orchestra are its members chosen?",
                       ["the orchestra of the Vienna State Opera", "Vienna State Opera"]),
                      ("Since when has it given a New Year's Concert?", ["1939"]),
                      ("To how many countries is the concert broadcast?", ["more than ninety countries",
                                                                           "more than ninety"]),
                  ]),
}
TRAIN = {
    "Canal": ("The Suez Canal connects the Mediterranean Sea to the Red Sea. It opened in November 1869 after "
              "ten years of construction led by Ferdinand de Lesseps.", [
                  ("What does the Suez Canal connect the Mediterranean Sea to?", ["the Red Sea", "Red Sea"]),
                  ("When did the canal open?", ["November 1869"]),
                  ("Who led the construction?", ["Ferdinand de Lesseps"]),
              ]),
    "Bridge": ("The Forth Bridge is a railway bridge across the Firth of Forth in Scotland. It was opened on 4 "
               "March 1890 and was designed by John Fowler and Benjamin Baker.", [
                   ("What does the Forth Bridge cross?", ["the Firth of Forth", "Firth of Forth"]),
                   ("When was the Forth Bridge opened?", ["4 March 1890"]),
               ]),
}


def squad_file(articles: dict, prefix: str) -> dict:
    data = []
    for title, (context, questions) in articles.items():
        qas = []
        for n, (question, answers) in enumerate(questions):
            spans = [{"text": a, "answer_start": context.index(a)} for a in answers]
            qas.append({"id": f"{prefix}-{title.lower()}-{n}", "question": question, "answers": spans})
        data.append({"title": title, "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "1.1", "data": data}


if __name__ == "__main__":
    here = Path(__file__).parent
    for name, articles, prefix in (("dev-v1.1.json", DEV, "dev"), ("train-v1.1.json", TRAIN, "train")):
        (here / name).write_text(json.dumps(squad_file(articles, prefix), indent=1) + "\n", encoding="utf-8")
