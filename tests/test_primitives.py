"""Primitive ops against the paper's formulas (eqs. 4-8), hand-written in plain torch."""

import math

import pytest
import torch

from fusion_search.blocks import ReshapeInput, resize_length
from fusion_search.primitives import PRIMITIVES, Primitive, build_primitive, register

N, C, L = 3, 4, 5


@pytest.fixture
def xy():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, C, L, generator=g), torch.randn(N, C, L, generator=g)


def test_registry_holds_the_five_paper_primitives():
    assert list(PRIMITIVES) == ["Zero", "Sum", "Attention", "LinearGLU", "ConcatFC"]


def test_zero_and_sum(xy):
    x, y = xy
    assert torch.equal(build_primitive("Zero", C, L)(x, y), torch.zeros(N, C, L))
    assert torch.allclose(build_primitive("Sum", C, L)(x, y), x + y)


def test_attention_is_eq6_query_x_key_value_y(xy):
    x, y = xy
    z = build_primitive("Attention", C, L)(x, y)
    for n in range(N):
        q, kv = x[n].T, y[n].T  # (L, C) rows are positions
        att = torch.softmax(q @ kv.T / math.sqrt(C), dim=-1)
        assert torch.allclose(z[n], (att @ kv).T, atol=1e-6)
    assert not torch.allclose(z, build_primitive("Attention", C, L)(y, x))  # asymmetric


def test_linear_glu_is_eq7_two_linears(xy):
    x, y = xy
    op = build_primitive("LinearGLU", C, L)
    w1, w2 = op.weight[:C], op.weight[C:]
    expected = torch.einsum("oc,ncl->nol", w1, x) * torch.sigmoid(torch.einsum("oc,ncl->nol", w2, y))
    assert torch.allclose(op(x, y), expected, atol=1e-6)
    assert sum(p.numel() for p in op.parameters()) == 2 * C * C


def test_concat_fc_is_eq8(xy):
    x, y = xy
    op = build_primitive("ConcatFC", C, L)
    cat = torch.cat([x, y], dim=1)
    expected = torch.relu(torch.einsum("oc,ncl->nol", op.weight, cat) + op.bias[None, :, None])
    assert torch.allclose(op(x, y), expected, atol=1e-6)
    assert sum(p.numel() for p in op.parameters()) == 2 * C * C + C


@pytest.mark.parametrize("name", list(PRIMITIVES))
def test_forward_same_equals_forward_on_identical_inputs(name, xy):
    x, _ = xy
    op = build_primitive(name, C, L)
    assert torch.allclose(op.forward_same(x), op(x, x), atol=1e-6)


def test_registering_a_primitive_is_one_entry(xy):
    @register
    class Product(Primitive):
        name = "TestProduct"

        def forward(self, x, y):
            return x * y

    try:
        x, y = xy
        assert torch.allclose(build_primitive("TestProduct", C, L)(x, y), x * y)
    finally:
        del PRIMITIVES["TestProduct"]
    with pytest.raises(KeyError, match="unknown primitive"):
        build_primitive("TestProduct", C, L)


@pytest.mark.parametrize("T", [2, 8, 16])
def test_reshape_input_maps_any_length_to_C_L(T):
    r = ReshapeInput(c_node=6, C=C, L=8, dropout=0.0, t_node=T)
    out = r(torch.randn(N, 6, T))
    assert out.shape == (N, C, 8)


def test_reshape_input_splits_level_and_signed_dynamics():
    torch.manual_seed(0)
    r = ReshapeInput(c_node=6, C=C, L=8, dropout=0.0, t_node=8).eval()
    x = torch.randn(N, 6, 8)
    out = r(x)
    level = torch.relu(r.bn(r.proj(x.mean(-1, keepdim=True))))
    dyn = r.bn_dyn(r.proj_dyn(x - x.mean(-1, keepdim=True)))
    assert torch.allclose(out, level + dyn, atol=1e-5)
    assert (out - level < 0).any()  # the dynamics keep their sign (no ReLU on them)
    # a sample's level does not leak into its dynamics: shifting it over time moves the level path only
    shifted = r(x + 5.0)
    assert torch.allclose(shifted - torch.relu(r.bn(r.proj((x + 5.0).mean(-1, keepdim=True)))), dyn, atol=1e-4)


def test_reshape_input_of_a_pooled_vector_is_the_papers_block():
    torch.manual_seed(0)
    r = ReshapeInput(c_node=6, C=C, L=8, dropout=0.0, t_node=1).eval()
    assert not hasattr(r, "proj_dyn")
    x = torch.randn(N, 6, 1)
    expected = torch.relu(r.bn(r.proj(x))).expand(-1, -1, 8)
    assert torch.allclose(r(x), expected)


def test_resize_length_pools_and_interpolates():
    x = torch.arange(8.0).view(1, 1, 8)
    assert torch.allclose(resize_length(x, 4), torch.tensor([[[0.5, 2.5, 4.5, 6.5]]]))
    assert resize_length(x, 8) is x
    up = resize_length(torch.tensor([[[0.0, 2.0]]]), 4)
    assert torch.allclose(up, torch.tensor([[[0.0, 0.5, 1.5, 2.0]]]))


def test_dropout_keeps_expectation_and_is_identity_in_eval():
    from fusion_search.blocks import Dropout

    torch.manual_seed(0)
    d = Dropout(0.2)
    x = torch.ones(200, 50, 10)
    y = d(x)
    assert set(torch.unique(y).tolist()) == {0.0, 1.25}
    assert abs(float((y == 0).float().mean()) - 0.2) < 0.01
    assert abs(float(y.mean()) - 1.0) < 0.02
    d.eval()
    assert d(x) is x


@pytest.mark.parametrize("step_inputs", ["sum", "pair"])
def test_the_hypernet_and_a_found_network_trace_to_one_graph(step_inputs):
    """No graph break in the forward (a missing-modality mask included): torch.compile fuses it
    whole, and CUDA graphs can capture it whole, on a GPU."""
    import torch._dynamo as dynamo

    from fusion_search.found_network import FoundNetwork
    from fusion_search.hypernet import Hypernet, HypernetSpec
    from _train_data import glu_genotype

    shapes = {"a_1": (6, 4), "b_1": (5, 1), "b_2": (7, 3)}
    spec = HypernetSpec(nodes=tuple(shapes), node_shapes=shapes, task="multiclass", num_classes=3, C=8, L=4,
                        step_inputs=step_inputs, learned_placeholders=True)
    feats = {n: torch.randn(4, *s) for n, s in shapes.items()}
    feats["missing:a"] = torch.tensor([True, False, False, True])
    traced = dynamo.explain(Hypernet(spec))(feats)
    assert (traced.graph_count, traced.graph_break_count) == (1, 0), [b.reason for b in traced.break_reasons]
    g = glu_genotype()
    net = FoundNetwork(g, {n: (6, 4) for n in g.nodes}, 0.2, True)
    traced = dynamo.explain(net)({n: torch.randn(4, 6, 4) for n in g.nodes})
    assert (traced.graph_count, traced.graph_break_count) == (1, 0), [b.reason for b in traced.break_reasons]
