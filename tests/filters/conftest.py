import pytest

from core.records import Example


@pytest.fixture
def ex():
    """Build a teacher Example: ex("id", "input text", output="pos")."""
    def make(id: str, input: str, output: str | None = "pos") -> Example:
        return Example(id=id, skill="t", input=input, output=output, source="teacher")
    return make
