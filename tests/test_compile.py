"""torch.compile of whole models.

Every named model is captured as one graph (``fullgraph=True``, so a graph break fails) and run
forward and backward through AOTAutograd with the ``aot_eager`` backend, which checks the capture
without paying for code generation; one model also goes through the default inductor backend
(C++ code generation on the CPU) end to end. Losses must equal the eager ones.
"""
import pytest
import torch

import zoo


def _loss(m, idx):
    return m(idx[:, :-1], idx[:, 1:])[1]


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_named_model_compiles_as_one_graph(name):
    torch.manual_seed(0)
    model = zoo.build(name, "tiny")
    idx = torch.randint(0, model.spec["vocab_size"], (2, model.spec["block_size"] + 1))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss = _loss(compiled, idx)
    loss.backward()
    torch.testing.assert_close(loss, _loss(model, idx))
    assert all(p.grad is not None for p in model.parameters())


def test_inductor_compiles_and_matches_eager():
    torch.manual_seed(0)
    model = zoo.build("gpt2-rope-gqa", "tiny")
    idx = torch.randint(0, model.spec["vocab_size"], (2, model.spec["block_size"] + 1))
    torch._dynamo.reset()
    compiled = torch.compile(model)
    loss = _loss(compiled, idx)
    loss.backward()
    torch.testing.assert_close(loss, _loss(model, idx), rtol=1e-4, atol=1e-4)
