"""KAN feed-forward: the batched uniform-grid basis equals the textbook Cox-de Boor recursion,
the layer is what the formula says, and its parameter count is reported."""
import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.components import Dims
from zoo.errors import ManifestError
from zoo_plugins.ffn.kan import KAN, KANLinear


def cox_de_boor(x, knots, order):
    """B-spline bases over arbitrary knots (x: (N,), knots: (K,)) -> (N, K - order - 1), written
    as in de Boor's book and efficient-kan, with divisions by knot differences."""
    x = x[:, None]
    b = ((x >= knots[:-1]) & (x < knots[1:])).double()
    for p in range(1, order + 1):
        left = (x - knots[:-(p + 1)]) / (knots[p:-1] - knots[:-(p + 1)]) * b[:, :-1]
        right = (knots[p + 1:] - x) / (knots[p + 1:] - knots[1:-p]) * b[:, 1:]
        b = left + right
    return b


@pytest.mark.parametrize("grid_size,order", [(5, 3), (8, 2), (3, 0), (4, 1)])
def test_basis_equals_cox_de_boor(grid_size, order):
    layer = KANLinear(2, 3, grid_size, order, (-1.5, 2.5), "silu", True)
    knots = torch.tensor([layer.t0 + j * layer.h for j in range(grid_size + 2 * order + 1)], dtype=torch.float64)
    x = torch.cat([torch.linspace(-3, 3.5, 97), torch.tensor([-1.5, 0.0, 2.4999])])
    got = layer.basis(torch.stack([x, -x], 1).float())  # (N, 2, n_basis)
    assert got.shape == (x.numel(), 2, grid_size + order)
    torch.testing.assert_close(got[:, 0].double(), cox_de_boor(x.double(), knots, order), atol=1e-5, rtol=0)
    torch.testing.assert_close(got[:, 1].double(), cox_de_boor(-x.double(), knots, order), atol=1e-5, rtol=0)
    inside = (x >= -1.5) & (x < 2.5)  # the basis is a partition of unity on the grid range
    torch.testing.assert_close(got[inside, 0].sum(-1), torch.ones(int(inside.sum())), atol=1e-5, rtol=0)


def test_layer_is_base_plus_spline_branch():
    torch.manual_seed(0)
    layer = KANLinear(4, 3, 5, 3, (-2, 2), "silu", False)
    x = torch.randn(6, 4)
    # phi_{o,i}(x_i) = w_base[o,i] silu(x_i) + sum_k c[o,i,k] B_k(x_i), summed over inputs i
    c = layer.spline.weight.view(3, 4, 8)
    expect = torch.einsum("ni,oi->no", F.silu(x), layer.base.weight) + torch.einsum("nik,oik->no", layer.basis(x), c)
    torch.testing.assert_close(layer(x), expect, atol=1e-5, rtol=1e-5)


def test_default_width_matches_the_mlp_parameters():
    dims = Dims(d_model=128, n_heads=4, bias=False)
    kan = sum(p.numel() for p in KAN(dims).parameters())
    mlp = 2 * 4 * 128 * 128
    assert abs(kan - mlp) / mlp < 0.02
    wide = sum(p.numel() for p in KAN(dims, hidden=100, grid_size=7, spline_order=2).parameters())
    assert wide == 2 * 128 * 100 * (1 + 7 + 2)  # per edge: one base weight and grid + order spline weights


def test_zoo_show_reports_kan_parameters(capsys):
    from zoo.cli import main
    assert main(["show", "gpt2-kan", "--preset", "baby"]) == 0
    out = capsys.readouterr().out
    model = zoo.build("gpt2-kan", "baby")
    n = sum(p.numel() for b in model.blocks for p in b.ffn.parameters())
    assert f"ffn params   {n:,}" in out and "(KAN)" in out


def test_kan_model_learns_a_batch():
    torch.manual_seed(0)
    model = zoo.build("gpt2-kan", "tiny")
    idx = torch.randint(0, 96, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5
    assert model.blocks[0].ffn.fc.spline.weight.grad.abs().sum() > 0


def test_empty_grid_range_is_a_manifest_error():
    with pytest.raises(ManifestError, match=r"gpt2-kan.*ffn\.params: grid_range=\[1, -1\] is empty"):
        zoo.resolve("gpt2-kan", "tiny", **{"ffn.params.grid_range": [1, -1]})


@pytest.mark.parametrize("order", [1, 2, 3])
def test_closed_form_basis_derivative_passes_gradcheck(order):
    from zoo_plugins.ffn.kan import UniformBSpline
    u = (torch.rand(6, 3, dtype=torch.float64) * 9).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: UniformBSpline.apply(t, 6, order), (u,))
