"""The published numbers of Zhang, Choshen & Andreas, "Can Gradient Descent Simulate Prompting?" (arXiv
2506.20989, 2025), Tables 1–5, transcribed from the paper.

Llama 3.2 1B; accuracy in %, whose definition the paper does not give. Figure 2 is an
image whose bar values appear nowhere in the text, so it has no numbers here.
"""

from __future__ import annotations

CITATION = "Zhang, Choshen & Andreas 2025 (arXiv 2506.20989)"

# Table 1: LoRA, gold-label (LG) setting; SE within ±2.
TABLE1_COLUMNS = ("Base Prompt", "Base FT", "Full Meta FT", "LoRA Outer Loop FT (rank 1)",
                  "LoRA Inner Step: Untrained FT", "LoRA Inner Step: Meta FT")
TABLE1 = {
    "SQuAD": (87.7, 47.3, 58.6, 59.4, 45.1, 72.0),
    "WikiText": (43.0, 29.1, 37.2, 37.5, 32.2, 38.3),
}

# Table 2: multiple contexts, SQuAD, gold-label; SE < ±3; N sequential updates (the paper's §5.4).
TABLE2_COLUMNS = ("1 Update", "4 Updates", "16 Updates")
TABLE2 = {
    "Base": (47.3, 43.6, 42.6),
    "Meta-Learn (1 ctx trained)": (57.2, 46.3, 39.6),
    "Meta-Learn (4 ctx trained)": (55.1, 51.5, 45.6),
    "Meta-Learn (16 ctx trained)": (55.0, 47.2, 46.6),
}

# Table 3: WikiText meta-learning -> SQuAD; SE within ±2.
TABLE3_COLUMNS = ("No Meta-Learning Acc.", "In-Domain Acc.", "Transfer Acc.")
TABLE3 = {
    ("Sequential", "SQuAD FT"): (47.3, 58.6, 47.8),
    ("Joint", "SQuAD FT"): (47.3, 58.6, 48.0),
    ("Sequential", "WikiText Retain"): (29.1, 37.2, 34.8),
    ("Joint", "WikiText Retain"): (29.1, 37.2, 34.8),
}

# Table 4: SQuAD, meta-learned model, share of examples (%) by correctness without / with the inner step.
TABLE4_COLUMNS = ("Always Incorrect", "Always Correct", "Correct w/o Context", "Only Correct w/ Context")
TABLE4 = {
    "Val": (55.6, 28.0, 3.6, 12.8),
    "Train": (29.9, 29.7, 5.8, 34.7),
}

# Table 5: one step on an irrelevant context; SE within ±2. WikiText's irrelevant cell is printed ".010" (sic):
# its meaning is unclear, so it is kept as printed text, never as a number to compare with.
TABLE5_COLUMNS = ("No Context (base model)", "Irrelevant Context", "Normal Context")
TABLE5 = {
    "SQuAD": ("35.2", "29.7", "58.6"),
    "WikiText": ("33.1", ".010 (sic)", "37.2"),
}
