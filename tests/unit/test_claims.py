"""The claims ledger: replicated rows, gates, statuses, the record, and a failing claim that stops the notebook."""
import json

import numpy as np
import pytest
import torch

import nblib
from nblib.book.claims import LEDGER_MIME, mean_interval

SEEDS = [0, 1, 2, 3, 4]


def test_replicated_rows_count_what_holds_and_gate_on_all():
    ledger = nblib.book.Ledger("demo", seeds=SEEDS)
    row = ledger.at_most("k", "small", [0.1, 0.2, 0.3, 0.4, 0.5], 0.45)
    assert row.held == "4/5" and not row.holds and row.statistic == pytest.approx(0.3)
    row = ledger.at_most("k2", "small, by the median", torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), 0.45,
                         gate="median")
    assert row.holds and row.held == "4/5"
    assert [r.key for r in ledger.failed] == ["k"]


def test_mean_gate_needs_the_whole_interval_inside_the_tolerance():
    mean, lo, hi = mean_interval([1.0, 1.1, 0.9, 1.05, 0.95])
    assert lo < mean < hi and mean == pytest.approx(1.0)
    half = 2.776 * np.std([1.0, 1.1, 0.9, 1.05, 0.95], ddof=1) / np.sqrt(5)
    assert hi - mean == pytest.approx(half)
    ledger = nblib.book.Ledger("demo", seeds=SEEDS)
    assert ledger.close_to("tight", "near one", [1.0, 1.1, 0.9, 1.05, 0.95], 1.0, rtol=0.2, gate="mean").holds
    assert not ledger.close_to("loose", "near one", [1.0, 1.1, 0.9, 1.05, 0.95], 1.0, rtol=0.05,
                               gate="mean").holds
    assert ledger.at_least("above", "interval above 0.5", [1.0, 1.1, 0.9, 1.05, 0.95], 0.5, gate="mean").holds


def test_single_values_must_say_exact_or_pooled_and_counts_must_match_seeds():
    ledger = nblib.book.Ledger("demo", seeds=SEEDS)
    with pytest.raises(ValueError, match="every replicate"):
        ledger.at_most("k", "a", 0.0, 1.0)
    assert ledger.at_most("k", "a", 0.0, 1.0, kind="exact").range_text() == "exact"
    assert ledger.at_least("z", "pooled z", 2.5, 2.0, kind="pooled").held == "1/1"
    with pytest.raises(ValueError, match="3 values for 5 replicates"):
        ledger.at_most("k3", "b", [0.0, 0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="single value"):
        ledger.at_most("k4", "c", [0.0, 0.0, 0.0, 0.0, 0.0], 1.0, kind="exact")
    with pytest.raises(ValueError, match="already"):
        ledger.at_most("k", "b", 0, 1, kind="exact")
    with pytest.raises(ValueError, match="1-D"):
        ledger.at_most("k5", "d", torch.ones(5, 2), 1)


def test_status_is_separate_from_the_gate_and_papers_are_named():
    ledger = nblib.book.Ledger("demo", seeds=SEEDS)
    with pytest.raises(ValueError, match="source"):
        ledger.at_most("k", "a", [0.0] * 5, 1.0, status="reproduced")
    with pytest.raises(ValueError, match="status"):
        ledger.at_most("k", "a", [0.0] * 5, 1.0, status="confirmed")
    ledger.at_most("yes", "paper's claim holds", [0.0] * 5, 1.0, status="reproduced", paper="Paper, Thm 1")
    ledger.at_most("no", "paper's claim does not", [0.0] * 5, 1.0, status="not reproduced", paper="Paper")
    ledger.at_most("own", "a derivation", [0.0] * 5, 1.0)
    html = ledger._repr_html_()
    assert html.count("✓") == 1 and "✗ not reproduced at this scale" in html and "the book&#x27;s own" in html
    assert "Paper, Thm 1" in html and html.count('class="holds') == 3


def test_check_takes_one_flag_per_replicate_in_order():
    ledger = nblib.book.Ledger("demo", seeds=SEEDS)
    row = ledger.check("c", "flags", [1, float("nan"), 3, 4, 5], holds=[True, True, False, True, True],
                       tolerance="as flagged")
    assert row.per_replicate == [True, False, False, True, True] and not row.holds
    with pytest.raises(ValueError, match="gate='all'"):
        ledger.check("c2", "x", [1] * 5, holds=True, tolerance="-", gate="median")


def test_verify_writes_a_record_and_a_failing_claim_raises_naming_itself(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append(obj))
    ledger = nblib.book.Ledger("demo", seeds=SEEDS)
    ledger.close_to("k1", "ratio near one", [1.02] * 5, 1.0, rtol=0.05)
    assert ledger.verify() is ledger
    record = shown[-1][LEDGER_MIME]
    json.dumps(record)
    assert record["chapter"] == "demo" and record["seeds"] == SEEDS
    assert record["rows"][0]["n_hold"] == 5 and record["rows"][0]["holds"]
    ledger.close_to("k2", "ratio near two", [1.2, 2.0, 2.0, 2.0, 2.0], 2.0, rtol=0.05)
    with pytest.raises(nblib.book.ClaimFailed, match="ratio near two.*4/5"):
        ledger.verify()


def test_nan_never_holds_and_empty_ledger_fails():
    ledger = nblib.book.Ledger("demo", seeds=SEEDS)
    ledger.at_most("k", "nan is not small", [float("nan")] + [0.0] * 4, 1.0, gate="median")
    assert ledger.failed == ledger.rows
    with pytest.raises(nblib.book.ClaimFailed):
        ledger.verify()
    with pytest.raises(nblib.book.ClaimFailed, match="empty"):
        nblib.book.Ledger("nothing").verify()


def test_glue_gives_plain_floats(monkeypatch):
    seen = {}
    monkeypatch.setattr("myst_nb.glue", lambda key, value, display: seen.update({key: value}))
    nblib.book.glue("x", np.float32(1.5))
    nblib.book.glue("t", torch.tensor([2.0]))
    assert seen == {"x": 1.5, "t": 2.0} and all(type(v) is float for v in seen.values())


def test_seeds_are_shifted_by_the_offset_and_substreams_are_stable(monkeypatch):
    monkeypatch.delenv("BOOK_SEED_OFFSET", raising=False)
    assert nblib.book.seeds(5) == [0, 1, 2, 3, 4]
    monkeypatch.setenv("BOOK_SEED_OFFSET", "1000")
    assert nblib.book.seeds(3, start=10) == [1010, 1011, 1012]
    monkeypatch.setenv("BOOK_SEED_OFFSET", "-3")
    with pytest.raises(ValueError, match="BOOK_SEED_OFFSET"):
        nblib.book.seeds(3)
    monkeypatch.setenv("BOOK_SEED_OFFSET", "ten")
    with pytest.raises(ValueError, match="ten"):
        nblib.book.seed_offset()
    with pytest.raises(ValueError, match="positive"):
        nblib.book.seeds(0)
    a, b = nblib.book.substream(3, "teacher"), nblib.book.substream(3, "init")
    assert a != b and a == nblib.book.substream(3, "teacher") and 0 <= a < 2 ** 62
    assert a == 0x0 + nblib.book.substream(3, "teacher")
    torch.Generator().manual_seed(a)


def test_exact_checks_are_a_status_of_their_own():
    ledger = nblib.book.Ledger("demo", seeds=SEEDS)
    row = ledger.at_most("id", "an identity", 1e-15, 1e-12, kind="exact", status="exact check",
                         paper="Paper, Prop. 1")
    assert row.holds and row.status == "exact check"
    assert "= exact check" in ledger._repr_html_() and "✓" not in ledger._repr_html_()


def test_a_reproduced_row_fails_when_its_ablation_passes_the_gate_too():
    ledger = nblib.book.Ledger("demo", seeds=SEEDS)
    good = ledger.at_most("noise", "test error with noise ~0", [0.001] * 5, 0.01, status="reproduced",
                          paper="P", ablation=("without noise", [3.0, 2.5, 0.005, 3.3, 2.9]))
    assert good.holds and not good.ablation_holds and good.ablation_held == "1/5"
    assert good.ablation_text() == "without noise: 2.9 (fails the gate, 1/5)"
    bad = ledger.at_most("both", "cannot tell the arms apart", [0.001] * 5, 0.01, status="reproduced",
                         paper="P", ablation=("without noise", [0.002] * 5))
    assert not bad.holds and bad.ablation_holds and bad.n_hold == 5
    mean = ledger.at_least("m", "mean gate", [1.0, 1.1, 0.9, 1.0, 1.0], 0.5, gate="mean", status="reproduced",
                           paper="P", ablation=("balanced start", [0.1, 0.9, 0.2, 0.8, 0.0]))
    assert mean.holds                                       # the ablation's interval is not above 0.5
    flags = ledger.check("c", "flags", [1] * 5, holds=True, tolerance="as flagged", status="reproduced",
                         paper="P", ablation=("frozen", [0] * 5, [True, False, True, True, True]))
    assert flags.holds and flags.ablation_held == "4/5"
    assert "without noise: 2.9" in ledger._repr_html_()
    record = ledger.record()["rows"]
    assert record[0]["ablation_text"].startswith("without noise") and record[0]["ablation_values"][2] == 0.005
    with pytest.raises(ValueError, match="belongs to a reproduced row"):
        ledger.at_most("own", "x", [0.0] * 5, 1.0, ablation=("arm", [2.0] * 5))
    with pytest.raises(ValueError, match="3 values for 5"):
        ledger.at_most("n", "x", [0.0] * 5, 1.0, status="reproduced", paper="P", ablation=("arm", [2.0] * 3))
    with pytest.raises(nblib.book.claims.ClaimFailed, match="its ablation without noise"):
        ledger.verify()
