"""Regression detection: planted slowdowns are found, noise alone is not, with numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from perflogs_parsers.regressions import exit_code, find_regressions
from perflogs_parsers.rules import Settings, direction_of, reference_bounds

START = pd.Timestamp('2025-01-01T00:00:00Z')


def history(values, *, variable: str = 'throughput', unit: str = 'samples/s',
            display_name: str = 'bench %num_nodes=1', reference=(0.0, math.nan, math.nan),
            system: str = 'sys') -> pd.DataFrame:
    """A tidy frame with one run per value, a day apart, oldest first."""
    count = len(values)
    return pd.DataFrame({
        'timestamp': [START + pd.Timedelta(days=day) for day in range(count)],
        'system': system, 'partition': 'part', 'environ': 'env', 'test': 'bench',
        'display_name': display_name, 'variable': variable,
        'value': np.asarray(values, dtype=float), 'unit': unit,
        'reference': reference[0], 'lower_thres': reference[1], 'upper_thres': reference[2],
        'result': ['pass' if not math.isnan(v) else 'fail' for v in np.asarray(values, float)],
    })


def noisy(rng: np.random.Generator, runs: int, noise: float, level: float = 1000.0):
    return level * (1 + noise * rng.standard_normal(runs))


def only(result: pd.DataFrame) -> dict:
    assert len(result) == 1
    return result.iloc[0].to_dict()


def test_planted_regression_is_found():
    rng = np.random.default_rng(7)
    values = np.append(noisy(rng, 20, 0.02), 800.0)      # 20 % slower at the end
    verdict = only(find_regressions(history(values)))
    assert verdict['status'] == 'regression'
    assert verdict['runs'] == 20
    assert verdict['baseline'] == pytest.approx(np.median(values[:-1]))
    assert verdict['change'] == pytest.approx(800 / verdict['baseline'] - 1)
    assert -0.22 < verdict['change'] < -0.18
    # 4 robust sigmas of 2 % noise: a band of about 8 %.
    assert 0.04 < verdict['band'] / verdict['baseline'] < 0.12
    assert verdict['why'].startswith(f'{verdict["change"] * 100:+.1f}% vs median of 20 runs')
    assert exit_code(find_regressions(history(values))) == 1


def test_noisy_but_unchanged_series_is_not_flagged():
    rng = np.random.default_rng(11)
    values = noisy(rng, 21, 0.03)
    verdict = only(find_regressions(history(values)))
    assert verdict['status'] == 'ok', verdict['why']
    assert abs(verdict['change']) < verdict['band'] / verdict['baseline']
    assert exit_code(find_regressions(history(values))) == 0


def test_false_alarm_and_detection_rates_over_many_series():
    rng = np.random.default_rng(2025)
    series = 400
    unchanged = noisy(rng, (series, 21), 0.03)
    slowed = noisy(rng, (series, 21), 0.03)
    slowed[:, -1] *= 0.8                                  # the latest run 20 % slower
    values = np.concatenate([unchanged, slowed])
    names = [f'flat {i}' for i in range(series)] + [f'slowed {i}' for i in range(series)]
    frame = history(values.ravel())
    frame['display_name'] = np.repeat(names, 21)
    frame['timestamp'] = np.tile(frame['timestamp'].to_numpy()[:21], 2 * series)

    result = find_regressions(frame)
    flat = result[result['display_name'].str.startswith('flat')]
    slow = result[result['display_name'].str.startswith('slowed')]
    assert len(flat) == len(slow) == series
    false_alarms = (flat['status'] == 'regression').mean()
    detected = (slow['status'] == 'regression').mean()
    # Expected about 0.25 % and 98 % (Gaussian noise, 20 earlier runs, default settings).
    assert false_alarms <= 0.02, false_alarms
    assert detected >= 0.95, detected


def test_lower_is_better_for_times():
    rng = np.random.default_rng(3)
    slower = np.append(noisy(rng, 12, 0.01, 50.0), 60.0)
    faster = np.append(noisy(rng, 12, 0.01, 50.0), 40.0)
    for values, status in ((slower, 'regression'), (faster, 'improvement')):
        verdict = only(find_regressions(history(values, variable='epoch_time', unit='s')))
        assert verdict['better'] == 'lower' and verdict['status'] == status


def test_reference_bounds_judge_the_latest_run_without_history():
    below = only(find_regressions(history([95.0, 96.0, 85.0], reference=(100.0, -0.1, 0.1))))
    assert below['status'] == 'regression'
    assert (below['lower_bound'], below['upper_bound']) == (90.0, 110.0)
    assert 'below the reference bound 90' in below['why']
    within = only(find_regressions(history([95.0, 96.0, 95.5], reference=(100.0, -0.1, 0.1))))
    assert within['status'] == 'new' and within['why'] == 'only 2 earlier runs with a value'
    unknown = only(find_regressions(history([1.0, 1.0, 2.0], variable='ratio', unit='',
                                            reference=(1.0, -0.2, 0.2))))
    assert unknown['better'] is None and unknown['status'] == 'out of bounds'
    assert exit_code(find_regressions(history([1.0, 1.0, 2.0], variable='ratio', unit='',
                                              reference=(1.0, -0.2, 0.2)))) == 1


def test_failed_latest_run_is_reported_and_fails_the_check():
    result = find_regressions(history([100.0] * 10 + [math.nan]))
    verdict = only(result)
    assert verdict['status'] == 'failed' and verdict['runs'] == 10
    assert verdict['why'] == 'no value logged (test result: fail)'
    assert exit_code(result) == 1


def test_failed_runs_do_not_count_as_history():
    values = [100.0, math.nan] * 6 + [100.5]
    verdict = only(find_regressions(history(values)))
    assert verdict['runs'] == 6 and verdict['status'] == 'new'
    verdict = only(find_regressions(history(values), Settings(min_samples=6)))
    assert verdict['status'] == 'ok'


def test_window_limits_the_baseline_to_recent_runs():
    values = [500.0] * 30 + [1000.0] * 10 + [990.0]
    assert only(find_regressions(history(values), Settings(window=10)))['baseline'] == 1000.0
    assert only(find_regressions(history(values), Settings(window=40)))['baseline'] == 500.0


def test_variants_are_judged_separately_and_worst_comes_first():
    rng = np.random.default_rng(5)
    frame = pd.concat([
        history(noisy(rng, 21, 0.01), display_name='bench %num_nodes=1'),
        history(np.append(noisy(rng, 20, 0.01), 700.0), display_name='bench %num_nodes=2'),
        history(np.append(noisy(rng, 20, 0.01), math.nan), display_name='bench %num_nodes=4'),
        history(noisy(rng, 21, 0.01), display_name='bench %num_nodes=1', system='other'),
    ], ignore_index=True)
    result = find_regressions(frame)
    assert result[['system', 'display_name', 'status']].values.tolist() == [
        ['sys', 'bench %num_nodes=4', 'failed'],
        ['sys', 'bench %num_nodes=2', 'regression'],
        ['other', 'bench %num_nodes=1', 'ok'],
        ['sys', 'bench %num_nodes=1', 'ok'],
    ]


def test_empty_frame_gives_an_empty_table():
    result = find_regressions(history([]).iloc[0:0])
    assert result.empty and exit_code(result) == 0


@pytest.mark.parametrize(('variable', 'unit', 'better'), [
    ('throughput', 'anything', 'higher'), ('time_to_target', 's', 'lower'),
    ('images', 'img/s', 'higher'), ('bw', 'GB/s', 'higher'), ('perf', 'TFLOPS', 'higher'),
    ('latency', 'us', 'lower'), ('step', 'ms', 'lower'), ('memory', 'GB', None),
    ('x', None, None)])
def test_direction_from_name_or_unit(variable, unit, better):
    assert direction_of(variable, unit) == better


def test_direction_overrides_win():
    assert direction_of('memory', 'GB', {'memory': 'lower'}) == 'lower'
    verdict = only(find_regressions(history([10.0] * 10 + [20.0], variable='memory', unit='GB'),
                                    Settings(directions={'memory': 'lower'})))
    assert verdict['status'] == 'regression'


def test_reference_bounds_follow_reframe():
    assert reference_bounds(100.0, -0.1, 0.2) == (90.0, 120.0)
    assert reference_bounds(-100.0, -0.1, 0.2) == (-110.0, -80.0)
    low, high = reference_bounds(100.0, -0.1, math.nan)
    assert low == 90.0 and math.isnan(high)
    assert reference_bounds(0.0, 5.0, 10.0) == (5.0, 10.0)       # absolute when ref is 0
    assert all(math.isnan(b) for b in reference_bounds(math.nan, -0.1, 0.1))


def with_columns(frame: pd.DataFrame, start_day: int = 0, **columns) -> pd.DataFrame:
    """``frame`` moved ``start_day`` days later, with extra (settings, environment) columns."""
    frame = frame.assign(**columns)
    frame['timestamp'] = frame['timestamp'] + pd.Timedelta(days=start_day)
    return frame


def test_two_batch_sizes_of_one_variant_are_two_histories():
    rng = np.random.default_rng(11)
    small = with_columns(history(noisy(rng, 15, 0.02, 1000.0)), batch_size='256')
    # The larger batch is slower here, and its runs came later: one history would call its
    # latest run a regression of the small batch's numbers.
    large = with_columns(history(noisy(rng, 3, 0.02, 700.0)), start_day=20, batch_size='512')
    result = find_regressions(pd.concat([small, large], ignore_index=True))

    assert sorted(result['batch_size']) == ['256', '512']
    by_batch = result.set_index('batch_size')
    assert set(by_batch['status']) == {'ok', 'new'} and exit_code(result) == 0
    assert by_batch.loc['256', 'baseline'] == pytest.approx(1000, rel=0.05)
    assert by_batch.loc['512', 'baseline'] == pytest.approx(700, rel=0.05)
    # The same runs without the settings column are one history and a false regression.
    merged = find_regressions(pd.concat([small, large], ignore_index=True).drop(
        columns='batch_size'))
    assert only(merged)['status'] == 'regression'


def test_a_regression_that_comes_with_a_driver_change_says_so():
    rng = np.random.default_rng(12)
    before = with_columns(history(noisy(rng, 20, 0.02)), gpu_driver='580.65.06',
                          torch_version='2.14.1')
    after = with_columns(history([750.0]), start_day=20, gpu_driver='590.10.01',
                         torch_version='2.14.1')
    verdict = only(find_regressions(pd.concat([before, after], ignore_index=True)))
    assert verdict['status'] == 'regression'
    assert verdict['why'].endswith(
        'environment changed: gpu_driver 580.65.06 -> 590.10.01 (vs 20 of 20 earlier runs)')

    same = with_columns(history([750.0]), start_day=20, gpu_driver='580.65.06',
                        torch_version='2.14.1')
    verdict = only(find_regressions(pd.concat([before, same], ignore_index=True)))
    assert verdict['status'] == 'regression' and 'environment' not in verdict['why']


def test_an_unknown_environment_is_no_change():
    # Perflogs written before the environment columns existed read as unknown (NaN).
    rng = np.random.default_rng(13)
    old = with_columns(history(noisy(rng, 20, 0.02)), gpu_driver=None)
    new = with_columns(history([1000.0]), start_day=20, gpu_driver='580.65.06')
    verdict = only(find_regressions(pd.concat([old, new], ignore_index=True)))
    assert verdict['status'] == 'ok' and 'environment' not in verdict['why']
