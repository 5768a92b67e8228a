import os
import sys

import numpy as np
import pytest
from hypothesis import settings

# "ci" (the default) runs the same examples on every run, so a red suite is reproducible;
# "dev" draws new ones each run to explore (HYPOTHESIS_PROFILE=dev).
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

sys.path.insert(0, os.path.dirname(__file__))  # tests/strategies.py for every test module
