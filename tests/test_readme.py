"""Every ```python block of README.md runs as written (each in a fresh namespace, in order)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i, capsys):
    code = compile(BLOCKS[i], f"README.md[python block {i}]", "exec")
    exec(code, {"__name__": f"readme_block_{i}"})
