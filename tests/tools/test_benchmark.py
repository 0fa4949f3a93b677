"""tools/analysis_tools/benchmark.py runs and reports throughput and the scan's share."""
import importlib.util
import os.path as osp
import re

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'analysis_tools', 'benchmark.py')


def test_benchmark_reports_throughput_and_scan_share(capsys):
    spec = importlib.util.spec_from_file_location('benchmark', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(['--arch', 'nano', '--batch-size', '2', '--shape', '32', '32',
                      '--warmup', '1', '--iters', '2']) == 0
    out = capsys.readouterr().out
    assert re.search(r'[\d.]+ img/s \(median', out), out
    share = float(re.search(r'selective_scan share of forward time: ([\d.]+)%', out).group(1))
    assert 0 < share < 100
    # the timer wrapper is removed again
    from projects.msvmamba import msvmamba
    assert not isinstance(msvmamba.selective_scan, tool.ScanTimer)


def test_benchmark_takes_a_config(capsys):
    spec = importlib.util.spec_from_file_location('benchmark', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    config = osp.join(REPO, 'configs', 'mask_rcnn_msvmamba_n_1x.py')
    assert tool.main([config, '--cfg-options', 'model.backbone.init_cfg=None',
                      '--batch-size', '1', '--shape', '64', '64',
                      '--warmup', '1', '--iters', '2']) == 0
    out = capsys.readouterr().out
    assert 'mask_rcnn_msvmamba_n_1x.py, batch 1' in out, out
    assert re.search(r'[\d.]+ img/s \(median', out), out
    assert float(re.search(r'peak memory: (\d+) MiB', out).group(1)) > 0
