import pytest
from data_for_tests import toy_store


@pytest.fixture
def small_store(ws):
    """20k tokens of width 16 from a dictionary of 64 atoms (fast training runs)."""
    return toy_store()
