"""tools/analysis_tools/compare_backbones.py: one tiny run of the tool (MSVMamba-Nano
beside mmpretrain's Swin-T, classification, two small sizes, one timed round)
checked for the schema of its four outputs, FLOPs equal to get_flops.py's, a peer's
parameters equal to its package's count, and a row that says why a model cannot take a
size. The run takes about 25-40 s on the busy 2-core CI machine; the other tests here are
in-process and take well under a second each, except the get_flops comparison (about 5 s).
"""
import csv
import importlib.util
import json
import os.path as osp

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(REPO, 'tools', 'analysis_tools')
ROW_KEYS = ('model', 'task', 'shape', 'batch_size', 'params_m', 'flops_g', 'latency_ms',
            'img_per_s', 'peak_mem_mb')
# mmpretrain's Swin-T cannot take sizes below 224 (its last stage, at 1/32, would be
# smaller than the 7 x 7 window): its rows say so, the run goes on
SIZES = ('32', '64')


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def tiny_run(tool_runner, tmp_path_factory):
    """(out folder, results.json, ToolRun) of one run of the tool (no dataset needed)."""
    pytest.importorskip('mmpretrain')
    out = tmp_path_factory.mktemp('compare_backbones')
    run = tool_runner(out)('analysis_tools/compare_backbones.py', '--task', 'cls', '--models',
                   'msvmamba_n', 'swin_t', '--shapes', *SIZES, '--iters', '1',
                   '--warmup', '0', '--threads', '1', '--mem-budget', '100000', '--out',
                   out).check()
    with open(out / 'results.json') as f:
        return out, json.load(f), run


def rows_of(results, model):
    return {r['shape']: r for r in results['rows'] if r['model'] == model}


def test_four_outputs_and_their_schema(tiny_run):
    out, results, run = tiny_run
    assert set(results) >= {'rows', 'exponents', 'machine'}
    assert len(results['rows']) == 2 * len(SIZES) and not results['partial']
    for row in results['rows']:
        assert set(ROW_KEYS) <= set(row), row
        assert row['task'] == 'cls' and row['batch_size'] == 1
    for row in rows_of(results, 'msvmamba_n').values():
        assert row['reason'] is None, row
        assert row['params_m'] > 0 and row['flops_g'] > 0 and row['peak_mem_mb'] >= 0
        assert row['latency_ms'] > 0
        assert row['img_per_s'] == pytest.approx(1000 / row['latency_ms'])
    fitted = results['exponents']['msvmamba_n']
    assert fitted['sizes'] == list(SIZES)
    assert 0.9 < fitted['flops_k'] < 1.1, fitted  # linear in the pixels
    assert isinstance(fitted['latency_k'], float) and isinstance(fitted['peak_mem_k'], float)
    assert fitted['largest_within_mem_budget'] == SIZES[-1]
    machine = results['machine']
    assert machine['versions']['torch'] and machine['versions']['mmpretrain']
    assert machine['yardstick_gflops'][0] > 0 and machine['threads'] == 1
    with open(out / 'results.csv') as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(results['rows']) and set(ROW_KEYS) <= set(table[0])
    markdown = (out / 'results.md').read_text()
    assert '| msvmamba_n | 64 |' in markdown and 'k latency' in markdown
    assert (out / 'scaling.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'machine yardstick' in run.out


def test_flops_equal_get_flops(tiny_run, capsys):
    """The FLOPs and parameters of our config are what get_flops.py prints for it."""
    _, results, _ = tiny_run
    row = rows_of(results, 'msvmamba_n')['64']
    assert load_tool('get_flops').main([osp.join(REPO, 'configs', 'msvmamba_n_in1k.py'),
                                        '--shape', '64']) == 0
    printed = dict(line.split(': ', 1) for line in capsys.readouterr().out.splitlines()
                   if ': ' in line)
    assert printed['Flops'] == f'{row["flops_g"]:.3f} G'
    assert printed['Params'] == f'{row["params_m"]:.3f} M'


def test_peer_parameters_and_published_accuracy_from_the_metafiles(tiny_run):
    """Swin-T's parameters (its rows are built, only the sizes are refused) equal the
    count of the model mmpretrain's own API builds (and the 28.29 M of its metafile), and
    the published top-1 (theirs and ours) is shown with its source."""
    import mmpretrain
    from projects.msvmamba_mm import compare
    _, results, _ = tiny_run
    row = rows_of(results, 'swin_t')['64']
    theirs = mmpretrain.get_model('swin-tiny_16xb64_in1k')
    assert round(row['params_m'] * 1e6) == sum(p.numel() for p in theirs.parameters())
    index = {m['Name']: m for m, _ in compare._metafile_models('mmpretrain')}
    swin = index['swin-tiny_16xb64_in1k']
    assert row['params_m'] * 1e6 == pytest.approx(swin['Metadata']['Parameters'], rel=1e-3)
    top1 = swin['Results'][0]['Metrics']['Top 1 Accuracy']
    assert row['published'] == f'top-1 {top1}'
    assert row['published_source'] == 'mmpretrain 1.2.0 configs/swin_transformer/metafile.yml'
    ours = rows_of(results, 'msvmamba_n')['64']
    assert ours['published'] == 'top-1 77.3'
    assert ours['published_source'].startswith('configs/metafile.yml')


def test_a_size_the_model_cannot_take_gives_a_row_with_a_reason(tiny_run):
    _, results, _ = tiny_run
    for size, row in rows_of(results, 'swin_t').items():
        assert row['reason'].startswith(f'cannot take {size}: AssertionError: '), row
        assert 'window size' in row['reason'], row
        assert row['latency_ms'] is None and row['flops_g'] is None
    assert results['exponents']['swin_t']['latency_k'] is None


def test_bad_input_is_one_line(tmp_path, capsys):
    tool = load_tool('compare_backbones')
    base = ['--task', 'cls', '--out', str(tmp_path)]
    assert tool.main(base + ['--models', 'no_such_model', '--shapes', '224']) == 2
    assert "error: --models: 'no_such_model' is neither a short name" in capsys.readouterr().err
    assert tool.main(base + ['--models', 'resnet50', '--shapes', '224y']) == 2
    assert "error: --shapes: '224y' is not a size" in capsys.readouterr().err


def test_fitted_exponent_of_a_power_law():
    from projects.msvmamba_mm.compare import fit_exponent
    pixels = [224**2, 448**2, 896**2]
    assert fit_exponent(pixels, [3 * p**1.5 for p in pixels]) == pytest.approx(1.5)
    assert fit_exponent(pixels[:1], [1.0]) is None


def test_fused_attention_is_counted():
    """The shared counter counts aten::scaled_dot_product_attention (DeiT's attention in
    mmpretrain), q·kᵀ and the weighted sum of v, as the explicit matmuls of windowed
    attention are counted: without it a global-attention model would look linear."""
    import torch
    import torch.nn.functional as F
    from mmengine.analysis import FlopAnalyzer
    from msvmamba_ops.flops import MSVMAMBA_FLOP_HANDLES

    class Attention(torch.nn.Module):
        def forward(self, q):
            return F.scaled_dot_product_attention(q, q[:, :, :5], q[:, :, :5, :3])

    analyzer = FlopAnalyzer(Attention(), (torch.randn(2, 4, 7, 8), ))
    analyzer.set_op_handle(**MSVMAMBA_FLOP_HANDLES).unsupported_ops_warnings(False)
    assert analyzer.total() == 2 * 4 * 7 * 5 * (8 + 3)
