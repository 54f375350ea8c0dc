"""``models/blocks/row_order.py``: a batch run longest first and put back, with its first and second derivatives."""

import torch

from models.blocks.row_order import longest_first, reorder


def test_longest_first_sorts_descending_keeping_ties_in_order_and_inverse_undoes_it() -> None:
    lengths = torch.tensor([3, 7, 3, 9, 1, 7])
    order, inverse = longest_first(lengths)
    assert order.tolist() == [3, 1, 5, 0, 2, 4]
    assert lengths[order].tolist() == [9, 7, 7, 3, 3, 1]
    assert torch.equal(order[inverse], torch.arange(6))
    assert torch.equal(inverse[order], torch.arange(6))


def test_reorder_is_index_select_with_its_first_and_second_derivatives() -> None:
    torch.manual_seed(0)
    order, inverse = longest_first(torch.tensor([2, 5, 1, 4]))
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.equal(reorder(x, 1, order, inverse), x.index_select(1, order))
    assert torch.autograd.gradcheck(lambda t: reorder(t, 1, order, inverse).sin(), (x,))
    assert torch.autograd.gradgradcheck(lambda t: reorder(t, 1, order, inverse).sin(), (x,))
    grad = torch.randn(3, 4, 2, dtype=torch.float64)
    (got,) = torch.autograd.grad(reorder(x, 1, order, inverse), x, grad)
    assert torch.equal(got, grad.index_select(1, inverse))


def test_ties_keep_their_given_order_in_a_batch_of_hundreds() -> None:
    """Ties in their given order (the docstring's promise) also where an unstable sort would move them: PyTorch's
    CPU ``argsort`` without ``stable=True`` reorders ties from about 100 rows on (6 rows, as above, stay in order
    either way)."""
    torch.manual_seed(0)
    lengths = torch.randint(1, 5, (300,))
    order, inverse = longest_first(lengths)
    # Python's sort is stable: the reference order, longest first, ties by position
    assert order.tolist() == sorted(range(300), key=lambda row: -int(lengths[row]))
    assert torch.equal(order[inverse], torch.arange(300))
