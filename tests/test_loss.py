"""The Lavender objective and its schedules (pure functions)."""

from __future__ import annotations

import math

import pytest
import torch

from lavender_ray.config import ConfigError, LossConfig, load_config
from lavender_ray.loss import METRIC_KEYS, alpha_at, attention_loss, lambda_at, lavender_loss


def test_lambda_zero_gives_exactly_the_lm_loss_even_with_a_nan_alignment_term():
    lm = torch.tensor(2.3456789, requires_grad=True)
    out = lavender_loss(lm, torch.tensor(float("nan")), num_matched=3, alpha=1.0, lambda_=0.0)
    assert torch.equal(out.total, lm)
    out.total.backward()
    assert lm.grad == 1.0


def test_total_is_alpha_lm_plus_lambda_att_with_metrics():
    lm, att = torch.tensor(2.0), torch.tensor(0.25)
    out = lavender_loss(lm, att, num_matched=4, alpha=0.5, lambda_=10.0)
    assert out.total.item() == pytest.approx(0.5 * 2.0 + 10.0 * 0.25)
    assert set(METRIC_KEYS) <= set(out.metrics)
    assert out.metrics["loss/lm"] == 2.0 and out.metrics["loss/att"] == 0.25
    assert out.metrics["loss/total"] == pytest.approx(3.5)
    assert out.metrics["align/matched_words"] == 4.0
    assert all(isinstance(v, float) for v in out.metrics.values())


def test_no_matched_word_gives_att_exactly_zero_and_a_finite_backward():
    predicted = torch.zeros(0, 32, 32, requires_grad=True)
    att = attention_loss(predicted, torch.zeros(0, 32, 32))
    assert att.item() == 0.0 and not torch.isnan(att)
    lm = torch.tensor(1.5, requires_grad=True)
    out = lavender_loss(lm, att, num_matched=0, alpha=1.0, lambda_=10.0)
    assert out.total.item() == 1.5
    out.total.backward()
    assert lm.grad == 1.0


def test_attention_loss_is_the_mean_of_per_word_mse():
    predicted = torch.zeros(2, 2, 2)
    target = torch.stack([torch.ones(2, 2), torch.tensor([[1.0, 0.0], [0.0, 0.0]])])
    assert attention_loss(predicted, target).item() == pytest.approx((1.0 + 0.25) / 2)
    with pytest.raises(ValueError, match=r"aligner output \(2, 2, 2\) and SD target \(1, 2, 2\)"):
        attention_loss(predicted, target[:1])


def test_alpha_schedule_pretrain_then_step_or_linear_ramp():
    step_cfg = LossConfig(aligner_pretrain_steps=3, pretrain_alpha=0.0)
    assert [alpha_at(t, step_cfg) for t in range(5)] == [0.0, 0.0, 0.0, 1.0, 1.0]
    ramp = LossConfig(
        aligner_pretrain_steps=2, pretrain_alpha=0.2, alpha_schedule="linear", alpha_ramp_steps=4
    )
    values = [alpha_at(t, ramp) for t in range(8)]
    assert values == pytest.approx([0.2, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])
    assert [alpha_at(t, LossConfig()) for t in range(3)] == [1.0, 1.0, 1.0]


def test_lambda_decay():
    cfg = LossConfig(**{"lambda": 10.0, "lambda_decay": 2.0})
    assert lambda_at(0, 100, cfg) == 10.0
    assert lambda_at(50, 100, cfg) == pytest.approx(10.0 * math.exp(-1.0))
    assert lambda_at(100, 100, cfg) == pytest.approx(10.0 * math.exp(-2.0))
    assert lambda_at(70, 100, LossConfig()) == 10.0
    with pytest.raises(ValueError, match="total_steps must be > 0"):
        lambda_at(0, 0, cfg)


def test_linear_ramp_without_steps_and_alpha_above_one_are_config_errors():
    with pytest.raises(ConfigError, match="alpha_ramp_steps"):
        load_config(None, ["loss.alpha_schedule=linear"])
    with pytest.raises(ConfigError, match="loss.pretrain_alpha=1.5"):
        load_config(None, ["loss.pretrain_alpha=1.5"])
