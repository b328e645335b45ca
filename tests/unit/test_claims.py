"""The claims ledger: rows, tolerances, and a failing claim that stops the notebook."""
import numpy as np
import pytest
import torch

import nblib


def test_holding_claims_verify_and_render():
    ledger = nblib.Ledger("demo")
    ledger.close_to("k1", "ratio near one", np.float64(1.02), 1.0, rtol=0.05)
    ledger.at_most("k2", "small", torch.tensor(0.1), 0.2)
    ledger.at_least("k3", "large", 3, 2)
    assert [r.holds for r in ledger.rows] == [True, True, True] and not ledger.failed
    html = ledger._repr_html_()
    assert 'class="claims-table"' in html and html.count("✓ yes") == 3
    assert ledger.verify() is ledger


def test_a_failing_claim_raises_and_names_itself():
    ledger = nblib.Ledger("demo")
    ledger.close_to("k1", "ratio near one", 1.2, 1.0, rtol=0.05)
    ledger.at_most("k2", "fine", 0.0, 1.0)
    assert "✗ NO" in ledger._repr_html_()
    with pytest.raises(nblib.ClaimFailed, match="ratio near one.*1.2"):
        ledger.verify()


def test_nan_never_holds_and_empty_ledger_fails():
    ledger = nblib.Ledger("demo")
    ledger.at_most("k", "nan is not small", float("nan"), 1.0)
    assert ledger.failed == ledger.rows
    with pytest.raises(nblib.ClaimFailed):
        ledger.verify()
    with pytest.raises(nblib.ClaimFailed, match="empty"):
        nblib.Ledger("nothing").verify()


def test_keys_are_unique_and_values_single_numbers():
    ledger = nblib.Ledger("demo")
    ledger.at_most("k", "a", 0, 1)
    with pytest.raises(ValueError, match="already"):
        ledger.at_most("k", "b", 0, 1)
    with pytest.raises(ValueError, match="single number"):
        ledger.at_most("k2", "c", torch.ones(3), 1)


def test_glue_gives_plain_floats(monkeypatch):
    seen = {}
    monkeypatch.setattr("myst_nb.glue", lambda key, value, display: seen.update({key: value}))
    nblib.glue("x", np.float32(1.5))
    nblib.glue("t", torch.tensor([2.0]))
    assert seen == {"x": 1.5, "t": 2.0} and all(type(v) is float for v in seen.values())
