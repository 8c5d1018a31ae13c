import math

import numpy as np
import pytest
import torch

from engines.cflow import CflowDecoders, FeatureShape, FoldedDecoders
from engines.flow import ConditionalFlow, FlowConfig
from engines.positional import positional_encoding_2d

torch.manual_seed(0)


def _randomised_flow(channels: int, config: FlowConfig) -> ConditionalFlow:
    """A flow away from its identity initialisation, so the tests exercise real couplings."""
    flow = ConditionalFlow(channels, config).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
        flow.set_input_statistics(torch.randn(channels, dtype=torch.float64), torch.rand(channels, dtype=torch.float64) + 0.5)
    return flow


def test_flow_inverts():
    config = FlowConfig(coupling_blocks=4, condition_channels=8)
    flow = _randomised_flow(10, config)
    x = torch.randn(32, 10, dtype=torch.float64)
    condition = torch.randn(32, 8, dtype=torch.float64)
    terms = flow.cond_terms(condition)
    z, _ = flow(x, terms)
    assert not torch.allclose(z, x)
    assert torch.allclose(flow.inverse(z, terms), x, atol=1e-10)


def test_log_det_matches_autograd_jacobian():
    config = FlowConfig(coupling_blocks=3, condition_channels=4)
    flow = _randomised_flow(5, config)
    condition = torch.randn(1, 4, dtype=torch.float64)
    terms = flow.cond_terms(condition)
    for _ in range(3):
        x = torch.randn(1, 5, dtype=torch.float64)
        _, log_det = flow(x, terms)
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v, terms)[0], x).reshape(5, 5)
        expected = torch.linalg.slogdet(jacobian).logabsdet
        assert log_det.item() == pytest.approx(expected.item(), abs=1e-9)


def test_identity_initialisation_is_standard_normal():
    flow = ConditionalFlow(12, FlowConfig(coupling_blocks=8, condition_channels=8))
    x = torch.randn(100, 12)
    terms = flow.cond_terms(torch.randn(100, 8))
    per_dim = flow.log_likelihood_per_dim(x, terms)
    expected = (-0.5 * x.pow(2).sum(-1) - 6 * math.log(2 * math.pi)) / 12
    assert torch.allclose(per_dim, expected, atol=1e-5)


def test_folded_positional_bias_equals_conditioned_flow():
    shapes = [FeatureShape(8, 4, 4), FeatureShape(12, 2, 2)]
    decoders = CflowDecoders(shapes, FlowConfig(coupling_blocks=2, condition_channels=8))
    with torch.no_grad():
        for flow in decoders.flows:
            for block in flow.blocks:
                block.out.weight.normal_(0, 0.2)
    features = [torch.randn(3, s.channels, s.height, s.width) for s in shapes]
    with torch.no_grad():
        direct = decoders.log_likelihood_maps(features)
        folded = FoldedDecoders(decoders)(*features)
    for a, b in zip(direct, folded):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5)


def test_positional_encoding_distinguishes_positions():
    encoding = positional_encoding_2d(16, 5, 7)
    assert encoding.shape == (35, 16)
    assert np.abs(encoding).max() <= 1.0
    # Every position gets its own code.
    assert len({tuple(np.round(row, 6)) for row in encoding}) == 35
    # First column pair is sin/cos of the column index at frequency 1.
    assert encoding[3, 0] == pytest.approx(np.sin(3.0), abs=1e-6)
    assert encoding[7, 8] == pytest.approx(np.sin(1.0), abs=1e-6)  # row 1, column 0
    with pytest.raises(ValueError):
        positional_encoding_2d(6, 2, 2)
