"""zoo-relu2's own tests: the zoo's conformance kit on the component, its math, and its named model.

They need the package installed (``pip install -e .`` or ``pip install .``): the zoo finds it
through its entry points, exactly as it will for a user.
"""
import torch
import torch.nn.functional as F

import zoo
from zoo.components import Dims
from zoo.testing import parametrize_with_checks


@parametrize_with_checks(kind="ffn", names=["relu2"])
def test_conformance(component, check):
    check(component)


def test_registered_by_this_distribution():
    comp = zoo.get_registry().get("ffn", "relu2")
    assert comp.dist == "zoo-relu2"
    assert zoo.get_registry().models["gpt2-relu2"].dist == "zoo-relu2"


def test_it_is_the_squared_relu_of_primer():
    from zoo_relu2.relu2 import ReLU2
    torch.manual_seed(0)
    m = ReLU2(Dims(d_model=8, n_heads=2), hidden_mult=2)
    x = torch.randn(2, 3, 8)  # (B, T, C)
    h = m.fc(x)  # (B, T, 16)
    expected = m.proj(torch.where(h > 0, h * h, torch.zeros_like(h)))  # (B, T, C)
    assert m.fc.out_features == 16
    torch.testing.assert_close(m(x), expected)
    # and it is not GELU: negative pre-activations give exactly zero, positive ones their square
    assert not torch.allclose(F.relu(h).square(), F.gelu(h))


def test_reports_its_flops():
    from zoo_relu2.relu2 import ReLU2
    m = ReLU2(Dims(d_model=8, n_heads=2), hidden_mult=4)
    assert m.flops_per_token(seq_len=16) == 2 * (8 * 32 + 32 * 8)


def test_named_model_trains_a_step_at_tiny():
    spec = zoo.resolve("gpt2-relu2", "tiny")
    assert spec["ffn"] == {"name": "relu2", "params": {"hidden_mult": 4}}
    assert spec["posenc"]["name"] == "learned"  # the rest comes from gpt2
    model = zoo.build_from_spec(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, spec["vocab_size"], (4, spec["block_size"]), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(5):  # the same batch: the loss must go down
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
