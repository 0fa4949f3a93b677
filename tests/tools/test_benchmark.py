"""tools/analysis_tools/benchmark.py (projects/msvmamba_mm/speed.py) runs and reports
throughput, the scan's share and float32 against bf16 autocast (--compare-amp), and the
one timer of the benchmark tools (projects/msvmamba_mm/timing.py) alternates its methods.
About 15 s in all."""
import importlib.util
import os
import os.path as osp
import re

import pytest

from projects.msvmamba_mm import timing

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'analysis_tools', 'benchmark.py')


def load_tool():
    """The command line, to call its main() in-process (no second interpreter start-up)."""
    spec = importlib.util.spec_from_file_location('benchmark', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.parametrize('fused', ['1', '0'])
def test_benchmark_reports_throughput_and_scan_share(capsys, monkeypatch, fused):
    """With the fused CPU token mixer (eval default) its share is reported; without it
    (MSVMAMBA_FUSED_CPU=0) the scan's own share."""
    from msvmamba_ops import cpu_fused
    monkeypatch.setenv(cpu_fused.ENV_FUSED, fused)
    if fused == '1' and not cpu_fused.is_available():
        pytest.skip('the cpu extension (fused pass) is not built')
    tool = load_tool()
    assert tool.main(['--arch', 'nano', '--batch-size', '2', '--shape', '32', '32',
                      '--warmup', '1', '--iters', '2', '--compare-unfused',
                      '--compare-amp']) == 0
    out = capsys.readouterr().out
    # float32 against bf16 autocast (under which the fused ops stay on where they may)
    amp = re.search(r'^bf16 vs fp32: ([\d.]+)x \(([\d.]+) vs ([\d.]+) img/s\), logits rel err '
                    r'([\d.e+-]+), top-5 overlap (\d+)%$', out, re.M)
    assert amp and float(amp.group(1)) > 0 and 0 < float(amp.group(4)) < 0.1, out
    assert re.search(r'[\d.]+ img/s \(median', out), out
    assert re.search(r'page faults per forward: \d+', out), out
    assert re.search(r'matmul at \d+ GFLOP/s before and \d+ after', out), out
    ratio = re.search(r'fused vs unfused ops, alternating in this process: ([\d.]+)x', out)
    assert ratio and float(ratio.group(1)) > 0, out
    assert os.environ.get(cpu_fused.ENV_FUSED) == fused  # restored
    share = float(re.search(r'selective_scan share of forward time .*: ([\d.]+)%', out).group(1))
    fused_share = re.search(r'fused token-mixer op .* share of forward time: ([\d.]+)%', out)
    if fused == '1':
        assert share == 0 and 0 < float(fused_share.group(1)) < 100, out
    else:
        assert fused_share is None and 0 < share < 100, out
    # the timer wrappers are removed again
    from projects.msvmamba import msvmamba
    assert not isinstance(msvmamba.selective_scan, timing.CallTimer)
    assert not isinstance(cpu_fused.ms2d_branch, timing.CallTimer)


def test_benchmark_takes_a_config(capsys):
    tool = load_tool()
    config = osp.join(REPO, 'configs', 'mask_rcnn_msvmamba_n_1x.py')
    assert tool.main([config, '--cfg-options', 'model.backbone.init_cfg=None',
                      '--batch-size', '1', '--shape', '64', '64',
                      '--warmup', '1', '--iters', '2']) == 0
    out = capsys.readouterr().out
    assert 'mask_rcnn_msvmamba_n_1x.py, batch 1' in out, out
    assert re.search(r'[\d.]+ img/s \(median', out), out
    assert float(re.search(r'peak memory: (\d+) MiB', out).group(1)) > 0


def test_benchmark_times_training_steps(capsys):
    tool = load_tool()
    assert tool.main(['--arch', 'nano', '--batch-size', '2', '--shape', '32', '32',
                      '--warmup', '0', '--iters', '1', '--train']) == 0
    out = capsys.readouterr().out
    assert ', training, threads' in out and re.search(r'[\d.]+ img/s \(median', out), out


def test_timer_alternates_the_methods():
    """One call of each method per round, in order; warm-up rounds are not recorded."""
    calls = []
    times = timing.time_alternating({'a': lambda: calls.append('a'),
                                     'b': lambda: calls.append('b')}, iters=3, warmup=1)
    assert calls == ['a', 'b'] * 4
    assert [len(t) for t in times.values()] == [3, 3]
    assert all(s >= 0 for t in times.values() for s in t)
