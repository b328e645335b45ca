"""Each chapter's own models and experiments, built on nblib.core (and nblib.book for seeds)."""
