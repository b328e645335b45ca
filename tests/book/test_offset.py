"""The claims hold on seeds the book never uses.

`make offset-check` executes every chapter through nbmake once more, with BOOK_SEED_OFFSET set to
TEST_SEED_OFFSET (104729 unless set): every seed of every chapter is shifted to values the book is never
built with. A chapter whose gate fails there fails nbmake; these checks make sure that run really used
the shifted seeds, disjoint from the book build's, and that every chapter's ledger held on them.
"""
import json

import pytest
from bookinfo import EXECUTED, OFFSET_DIR, TEST_SEED_OFFSET, chapters, skip_or_fail

LEDGER_MIME = "application/vnd.nblib.ledger+json"


def record(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if LEDGER_MIME in out.get("data", {}):
                return out["data"][LEDGER_MIME]
    return None


@pytest.mark.parametrize("doc", chapters())
def test_every_gate_holds_on_shifted_seeds(doc):
    name = doc.split("/")[-1]
    shifted = OFFSET_DIR / f"{name}.ipynb"
    if not shifted.exists():
        skip_or_fail(f"no {shifted}: run `make offset-check` first")
    rec = record(shifted)
    assert rec is not None, f"{doc}: the run at offset {TEST_SEED_OFFSET} wrote no ledger record"
    assert rec["seed_offset"] == TEST_SEED_OFFSET
    failed = [r["key"] for r in rec["rows"] if not r["holds"]]
    assert not failed, f"{doc}: gates failing at offset {TEST_SEED_OFFSET}: {failed}"
    book = EXECUTED / f"{doc}.ipynb"
    if book.exists() and (base := record(book)) is not None and base["seeds"]:
        assert not set(base["seeds"]) & set(rec["seeds"]), f"{doc}: the shifted run reused the book's seeds"
        assert [r["key"] for r in base["rows"]] == [r["key"] for r in rec["rows"]], f"{doc}: different claims"
