"""The README's Python examples run and print what the README says (doctest on its ```python blocks)."""

import doctest
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2, reason="the README shows numpy 2 scalar reprs")
def test_readme_examples_print_what_the_readme_shows():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "no ```python blocks in the README"
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), {}, "README.md", str(README), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
