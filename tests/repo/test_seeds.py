"""Seeds are an input: each chapter draws every replicate from one ``SEEDS = nblib.book.seeds(n)`` list
(at least five replicates), which ``$BOOK_SEED_OFFSET`` shifts, and writes no other literal seed in its code
cells: a literal ``seed=3``, ``manual_seed(3)``, ``seeds=[3, 4]``, ``default_rng(3)`` or a ``range`` of seeds
would be a draw that no reader can change and no offset moves."""
import re
import sys

import pytest
from bookinfo import ROOT, chapters

sys.path.insert(0, str(ROOT / "tools"))
from chapter_code import code_cells  # noqa: E402

# Chapters whose claims do not depend on random draws (they read stored benchmark results).
NO_RANDOM_DRAWS = {"book/performance"}
MIN_REPLICATES = 5
LITERAL_SEED = re.compile(
    r"(\bseeds?\s*=\s*(\[\s*)?-?\d)"                      # seed=0, seeds=[1, 2]
    r"|(manual_seed\(\s*-?\d)"                            # torch.manual_seed(0), Generator().manual_seed(1)
    r"|(default_rng\(\s*-?\d)|(RandomState\(\s*-?\d)"      # numpy
    r"|(\bseeds?\s*=\s*range\()"                          # seeds=range(4)
    r"|(random\.seed\(\s*-?\d)")
SEEDS_LINE = re.compile(r"^SEEDS\s*=\s*(?:nblib\.)?book\.seeds\(\s*(\d+)\s*(,[^)]*)?\)", re.M)


def code(doc):
    return [(cell, row, line) for cell in code_cells(ROOT / f"{doc}.md") for row, line in enumerate(cell.lines, 1)]


@pytest.mark.parametrize("doc", [d for d in chapters() if d not in NO_RANDOM_DRAWS])
def test_one_seeds_list_of_at_least_five_replicates(doc):
    source = "\n".join(line for _, _, line in code(doc))
    found = SEEDS_LINE.findall(source)
    assert len(found) == 1, f"{doc}: needs exactly one `SEEDS = nblib.book.seeds(n)` line, found {len(found)}"
    assert int(found[0][0]) >= MIN_REPLICATES, f"{doc}: {found[0][0]} replicates, at least {MIN_REPLICATES}"
    assert re.search(r"Ledger\([^)]*seeds\s*=\s*SEEDS", source), f"{doc}: the ledger must know SEEDS"


@pytest.mark.parametrize("doc", chapters())
def test_no_other_literal_seed(doc):
    bad = [f"{doc}.md:{cell.md_line(row)}: {line.strip()}" for cell, row, line in code(doc)
           if LITERAL_SEED.search(line.split("#", 1)[0])]
    assert not bad, "literal seeds (draw them from SEEDS or nblib.book.substream):\n" + "\n".join(bad)


@pytest.mark.parametrize("line, literal", [
    ("P = init(seed=0)", True), ("g = torch.Generator().manual_seed(12)", True),
    ("run(seeds=[10, 11, 12])", True), ("rng = np.random.default_rng(3)", True), ("seeds = range(4)", True),
    ("run(seeds=SEEDS)", False), ("P = init(seed=s)", False), ("g.manual_seed(nblib.book.substream(s, 'x'))", False),
    ("SEEDS = nblib.book.seeds(5)", False), ("x = 1  # seed=0 in a comment", False)])
def test_the_literal_seed_pattern(line, literal):
    assert bool(LITERAL_SEED.search(line.split("#", 1)[0])) is literal
