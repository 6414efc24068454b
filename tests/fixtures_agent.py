"""Agent and tracker fixtures shared by the suite (see tests/conftest.py)."""
