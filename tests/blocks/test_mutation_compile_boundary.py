"""``compile_boundary.eager_under_compile``: in eager code the function itself, with its name and docstring, and
``torch.compiler.disable`` made only on the first trace, never by an eager call (issue 37's mutation testing of
``models/blocks/compile_boundary.py``; ``tests/blocks/test_import_side_effects.py`` covers the graph break)."""

import torch

from models.blocks import compile_boundary


def test_the_boundary_keeps_the_functions_name_and_docstring() -> None:
    def body(x: torch.Tensor) -> torch.Tensor:
        """The body's own words."""
        return x + 1

    boundary = compile_boundary.eager_under_compile("test_mutation_named", body)
    assert boundary.__name__ == boundary.__qualname__ == "test_mutation_named"
    assert boundary.__doc__ == "The body's own words."


def test_an_eager_call_makes_no_disabled_twin_and_a_trace_makes_one() -> None:
    """Eager calls run ``fn`` directly: ``torch.compiler.disable(fn)`` (which imports ``torch._dynamo``) is made
    on the first trace only."""
    calls = []

    def body(x: torch.Tensor) -> torch.Tensor:
        calls.append(torch.compiler.is_compiling())
        return x.sin()

    boundary = compile_boundary.eager_under_compile("test_mutation_eager_only", body)
    x = torch.randn(3)
    assert torch.equal(boundary(x), x.sin()) and torch.equal(boundary(x), x.sin())
    assert calls == [False, False]
    assert "test_mutation_eager_only" not in compile_boundary._disabled
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: boundary(t * 2).cos(), backend="eager")
    torch.testing.assert_close(compiled(x), (x * 2).sin().cos(), rtol=0, atol=0)
    assert "test_mutation_eager_only" in compile_boundary._disabled
