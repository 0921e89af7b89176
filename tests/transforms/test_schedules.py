"""jaxlm.transforms.schedules against the papers' formulas."""

from __future__ import annotations

import math

import pytest

from jaxlm import transforms as T


def test_slanted_triangular_matches_ulmfit_formula():
    peak, total, cut_frac, ratio = 0.01, 1000, 0.1, 32.0
    sched = T.slanted_triangular(peak, total, cut_frac, ratio)
    cut = math.floor(total * cut_frac)

    def formula(t):
        p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
        return peak * (1 + max(p, 0.0) * (ratio - 1)) / ratio

    for t in [0, 1, 50, 99, 100, 101, 550, 999, 1000, 1200]:
        assert float(sched(t)) == pytest.approx(formula(t), rel=1e-5), t
    assert float(sched(cut)) == pytest.approx(peak)
    assert float(sched(0)) == pytest.approx(peak / ratio)


def test_warmup_cosine_matches_formula():
    sched = T.warmup_cosine(2.0, 10, 110, end_value=0.2)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(1.0)
    for t in [10, 35, 60, 85, 110]:
        want = 0.2 + (2.0 - 0.2) * (1 + math.cos(math.pi * (t - 10) / 100)) / 2
        assert float(sched(t)) == pytest.approx(want, rel=1e-5), t


def test_sgdr_restarts_with_growing_periods():
    sched = T.sgdr(1.0, 10, 70, period_mult=2.0, end_value=0.1, peak_decay=0.5)
    starts, lengths, peaks = [0, 10, 30], [10, 20, 40], [1.0, 0.5, 0.25]
    for s, n, pk in zip(starts, lengths, peaks, strict=True):
        for frac in [0.0, 0.25, 0.5, 0.9]:
            t = s + int(frac * n)
            want = 0.1 + (pk - 0.1) * (1 + math.cos(math.pi * (t - s) / n)) / 2
            assert float(sched(t)) == pytest.approx(want, rel=1e-5), t
    assert float(sched(9)) < 0.2 and float(sched(10)) == pytest.approx(0.5)


def test_step_decay_per_epoch_is_zarembas_rule():
    sched = T.step_decay_per_epoch(1.0, steps_per_epoch=10, decay_after_epochs=4, factor=0.5)
    for epoch in range(9):
        want = 0.5 ** max(
            epoch + 1 - 4, 0
        )  # Zaremba's ptb_word_lm: lr_decay ** max(i+1-max_epoch, 0)
        assert float(sched(epoch * 10)) == pytest.approx(want)
        assert float(sched(epoch * 10 + 9)) == pytest.approx(want)
