"""What the book adds around a run: the claims ledger and glue, the replicates' seeds, one figure style.

    SEEDS = nblib.book.seeds(5)                  the replicates (shifted by $BOOK_SEED_OFFSET)
    nblib.book.substream(seed, "init")           a named stream derived from a replicate's seed
    ledger = nblib.book.Ledger("Chapter", seeds=SEEDS)   the claims table
    nblib.book.glue("key", value)                a number for the text (myst-nb glue)
    nblib.book.use_style(); nblib.book.COLORS    the book's figure style
"""
from . import claims, plots, stats, style
from .claims import ClaimFailed, Ledger, glue
from .replicates import seed_offset, seeds, substream
from .style import COLORS, use_style

__all__ = ["ClaimFailed", "Ledger", "glue", "seeds", "seed_offset", "substream", "COLORS", "use_style",
           "claims", "plots", "stats", "style"]
