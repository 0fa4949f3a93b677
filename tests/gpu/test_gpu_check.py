"""tools/analysis_tools/gpu_check.py, the one-call GPU proof, as glue: its ``--dry-run``
runs the same steps on the CPU at toy sizes (``pytest -m gpu`` on tests/gpu, where every
test skips; benchmark_scan.py; benchmark.py inference and training) and writes the report.
About 20 s on 2 shared cores (four short subprocesses)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def test_gpu_tests_are_collected_by_the_marker():
    """``pytest -m gpu --collect-only`` lists the GPU tests (the marker is registered)."""
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-m', 'gpu', '--collect-only', '-q',
                           '-p', 'no:cacheprovider', 'tests/gpu'], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = [ln for ln in proc.stdout.splitlines() if '::' in ln]
    assert any('test_backend_matches_float64_oracle[' in ln and 'cuda' in ln for ln in listed)
    assert any('test_backbone_on_gpu_matches_cpu[triton]' in ln for ln in listed)
    assert not any('test_gpu_check' in ln for ln in listed)  # this file runs on the CPU
    assert 'PytestUnknownMarkWarning' not in proc.stdout + proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU dry run (a GPU runs the real one)')
def test_dry_run_writes_the_report(tool_runner, tmp_path):
    out = tmp_path / 'gpu_check.md'
    run = tool_runner(tmp_path)('analysis_tools/gpu_check.py', '--dry-run', '--out', out,
                                timeout=600).check()
    text = out.read_text()
    for heading in ('# GPU check', '## GPU tests (`pytest -m gpu`)', '## Scan kernels',
                    '## Backbone speed', '## Steps'):
        assert heading in text, text
    tests = [ln for ln in text.splitlines() if ln.startswith('| test_scan_gpu::')]
    assert tests and all('**skipped**' in ln for ln in tests), text  # no GPU here
    assert '(a) forward: reference / cpu' in text, text
    speed = [ln.split(' | ') for ln in text.splitlines() if ln.startswith('| cpu | ')]
    assert [r[1] for r in speed] == ['inference', 'training'], text
    assert all(float(r[3]) > 0 and int(r[5]) > 0 for r in speed), text
    assert '4/4 steps ok' in run.out, run.out
