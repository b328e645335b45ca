"""Makes tests/bookinfo.py importable from every test folder (pytest puts this folder on sys.path)."""
