"""The HTML dashboard: self-contained, escaped, and rendered by headless Chromium without errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from perflogs_parsers.dashboard import render_dashboard, write_dashboard
from perflogs_parsers.formats import PERFORMANCE_VARIABLES, perflog_header
from perflogs_parsers.reader import read_perflogs
from perflogs_parsers.synthetic import perflog_lines, write_perflog

# Perflog text that runs code if it reaches the page unescaped.
SCRIPT_SYSTEM = "<script>console.error('xss-system')</script>"
BREAKOUT_ENVIRON = "</script><script>console.error('xss-environ')</script>"
IMAGE_PARAMETER = "<img/src=x/onerror=console.error('xss-image')>"
CHROMIUM = next((shutil.which(name) for name in ('chromium', 'chromium-browser',
                                                 'google-chrome') if shutil.which(name)), None)


@pytest.fixture(scope='module')
def perflogs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('perflogs')
    # 25 runs of 16 variants; the last run is 25 % slower.
    write_perflog(folder / 'cluster' / 'gpu' / 'resnet50_train.log', 16 * 25, seed=4,
                  slowdown_after=24, slowdown=1.25)
    lines = list(perflog_lines(3, test='evil_bench'))
    hostile = []
    for text in lines[1:]:
        fields = text.split('|')
        fields[1], fields[3] = SCRIPT_SYSTEM, BREAKOUT_ENVIRON
        fields[4] = f'evil_bench %num_nodes={fields[7]} %tag={IMAGE_PARAMETER}'
        hostile.append('|'.join(fields))
    path = folder / 'odd' / 'p' / 'evil_bench.log'
    path.parent.mkdir(parents=True)
    path.write_text('\n'.join([lines[0], *hostile]) + '\n')
    assert lines[0] == perflog_header(list(PERFORMANCE_VARIABLES))
    return folder


@pytest.fixture(scope='module')
def dashboard(perflogs, tmp_path_factory) -> Path:
    frame, report = read_perflogs(perflogs)
    assert report.malformed == []
    return write_dashboard(frame, tmp_path_factory.mktemp('html') / 'report.html',
                           sources=report.files)


def test_dashboard_is_one_offline_file(dashboard):
    text = dashboard.read_text()
    assert not re.search(r'<(script|link|img|iframe)[^>]*\s(src|href)\s*=', text, re.I)
    assert text.count('<script>') - text.count('<script>console') >= 1
    # plotly.js is embedded once; each figure only calls it.
    assert text.count('Plotly.newPlot') == int(re.search(r'data-figures="(\d+)"', text)[1])
    assert len(re.findall(r'\*\s*plotly\.js v\d', text)) == 1
    assert int(re.search(r'data-figures="(\d+)"', text)[1]) == 4


def test_text_from_perflogs_is_escaped(dashboard):
    text = dashboard.read_text()
    # Plotly's JSON writes < > / & as \\uXXXX; undo that to see the strings Plotly receives.
    plotly_strings = re.sub(r'\\u([0-9a-fA-F]{4})', lambda m: chr(int(m[1], 16)), text)
    for hostile in (SCRIPT_SYSTEM, BREAKOUT_ENVIRON, IMAGE_PARAMETER):
        assert hostile not in text and hostile not in plotly_strings
    assert '&lt;script&gt;console.error(&#x27;xss-system&#x27;)' in plotly_strings
    assert '&lt;/script&gt;&lt;script&gt;' in plotly_strings
    assert 'tag=&lt;img/src=x/onerror=console.error(&#x27;xss-image&#x27;)&gt;' in plotly_strings


def test_regressions_are_listed_and_highlighted(dashboard):
    text = dashboard.read_text()
    assert 'regression</td>' in text
    assert 'rgba(0,0,0,0)' in text and '#d62728' in text
    assert 'parallel efficiency' in text


def test_dashboard_of_an_empty_selection(perflogs):
    frame, _ = read_perflogs(perflogs)
    html = render_dashboard(frame.iloc[0:0])
    assert 'data-figures="0"' in html and 'Nothing needs attention' in html


def chromium(page: Path, scratch: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a local page: no network, no sandbox, a fresh profile."""
    profile = scratch / f'profile-{len(list(scratch.iterdir()))}'
    return subprocess.run(
        [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--no-first-run', '--no-default-browser-check', f'--user-data-dir={profile}',
         '--enable-logging=stderr', '--v=0', '--virtual-time-budget=15000', *extra,
         page.as_uri()],
        capture_output=True, text=True, timeout=180)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ':CONSOLE' in line]


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason='Chromium is not installed (Debian package: chromium)')


@needs_chromium
def test_console_check_sees_errors(tmp_path):
    page = tmp_path / 'broken.html'
    page.write_text('<html><body><script>console.error("planted");'
                    'undefined_function();</script></body></html>')
    done = chromium(page, tmp_path, '--dump-dom')
    messages = console_messages(done.stderr)
    assert any('"planted"' in m for m in messages), done.stderr[-2000:]
    assert any('undefined_function is not defined' in m for m in messages)


@needs_chromium
def test_dashboard_renders_in_headless_chromium(dashboard, tmp_path):
    done = chromium(dashboard, tmp_path, '--dump-dom')
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_messages(done.stderr) == []
    dom = done.stdout
    figures = int(re.search(r'data-figures="(\d+)"', dom)[1])
    assert figures == 4
    for number in range(1, figures + 1):
        # Plotly replaced each placeholder div with its SVG plot.
        div = re.search(rf'<div id="figure-{number}"[^>]*class="([^"]*)"', dom)
        assert div and 'js-plotly-plot' in div[1], number
    assert dom.count('class="main-svg"') >= 2 * figures
    assert len(re.findall(r'class="scatterlayer', dom)) >= figures
    # The hostile text is drawn as text (in the legend), never turned into elements.
    elements = re.sub(r'<script\b[^>]*>.*?</script>', '', dom, flags=re.S)
    assert not re.search(r'<img|<script|\sonerror=', elements)
    assert "tag=&lt;img/src=x/onerror=console.error('xss-image')&gt;" in elements


def test_energy_panels_and_the_environment_of_each_point(tmp_path):
    # Ten runs per variant, then two after a driver upgrade: hovering shows both drivers.
    before = list(perflog_lines(16 * 10, seed=6))
    later = datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(days=3)
    after = list(perflog_lines(16 * 2, seed=7, start=later,
                               environment={'gpu_driver': '590.10.01'}))
    path = tmp_path / 'cluster' / 'gpu' / 'resnet50_train.log'
    path.parent.mkdir(parents=True)
    path.write_text('\n'.join(before + after[1:]) + '\n')
    frame, _ = read_perflogs(path)
    # Plotly's JSON writes < > / & as \uXXXX.
    page = re.sub(r'\\u([0-9a-fA-F]{4})', lambda m: chr(int(m[1], 16)), render_dashboard(frame))

    for title in ('energy_to_target (J)', 'energy_per_sample (J/sample)', 'average_power (W)'):
        assert title in page
    assert 'No values logged for slurm_energy.' in page
    assert 'gpu_driver=580.65.06' in page and 'gpu_driver=590.10.01' in page
    assert 'batch_size=256' in page and 'torch_version=2.14.1' in page
