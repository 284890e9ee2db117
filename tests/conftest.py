from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4),
                               torch.nn.BatchNorm1d(4))


@pytest.fixture
def state(small_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in small_model.state_dict().items() if v.is_floating_point()}
