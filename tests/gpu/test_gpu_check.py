"""tools/analysis_tools/gpu_check.py, the one-call GPU proof, as glue: its ``--dry-run``
runs the same steps on the CPU at toy sizes (``pytest -m gpu`` on tests/gpu, where every
test skips; benchmark_scan.py; benchmark.py inference and training) and writes the report.
About 30 s on 2 shared cores (four short subprocesses)."""
import pytest
import torch


def test_gpu_marker_is_registered(pytestconfig):
    """``-m gpu`` selects by a declared marker (no PytestUnknownMarkWarning)."""
    assert any(line.startswith('gpu:') for line in pytestconfig.getini('markers'))


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU dry run (a GPU runs the real one)')
def test_dry_run_writes_the_report(tool_runner, tmp_path):
    out = tmp_path / 'gpu_check.md'
    run = tool_runner(tmp_path)('analysis_tools/gpu_check.py', '--dry-run', '--out', out,
                                timeout=600).check()
    text = out.read_text()
    for heading in ('# GPU check', '## GPU tests (`pytest -m gpu`)', '## Scan kernels',
                    '## Backbone speed', '## Steps'):
        assert heading in text, text
    # `pytest -m gpu` collected the GPU tests (and only those) and skipped them: no GPU here
    tests = [ln for ln in text.splitlines() if ln.startswith('| test_')]
    assert tests and all(ln.startswith('| test_scan_gpu::') for ln in tests), text
    assert all('**skipped**' in ln for ln in tests), text
    for name in ('test_backend_matches_float64_oracle[', 'test_backbone_on_gpu_matches_cpu[cuda]',
                 'test_backbone_bf16_autocast_on_gpu[triton]'):
        assert any(name in ln for ln in tests), name
    assert '(a) forward: reference / cpu' in text, text
    speed = [ln.split(' | ') for ln in text.splitlines() if ln.startswith('| cpu | ')]
    assert [r[1] for r in speed] == ['inference', 'training'], text
    assert all(float(r[3]) > 0 and int(r[5]) > 0 for r in speed), text
    assert '4/4 steps ok' in run.out, run.out
