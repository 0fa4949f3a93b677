"""ONNX export (tools/deployment/pytorch2onnx.py over projects/msvmamba_mm/deploy.py) and
ONNX Runtime parity on the CPU:
Nano and v3-Tiny classification, Nano UperNet segmentation, Nano Mask R-CNN backbone + FPN.

Each model is exported once with dynamic N, H, W (a module-scoped fixture, through the
tool's command line: random weights saved as a checkpoint, onnx.checker, the tool's own
parity check) and then run by ONNX Runtime at 224 x 224, at an odd size and at a second
batch size, against ``model(x, mode='tensor')`` in PyTorch (the fused CPU path where it
is built): max |diff| / max |PyTorch| <= 1e-4. The export traces a small image: the
graph does not depend on it (the scan's level count is fixed under export), so the
larger sizes test that the file really is dynamic. Segmentation also runs
``tools/infer.py --backend onnxruntime`` against its PyTorch path."""
import importlib.util
import os.path as osp
import re

import pytest
import torch

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

from projects.msvmamba_mm import deploy  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))



def load_tool(relpath: str):
    """A tool of tools/ as a module, to call its main() in-process."""
    spec = importlib.util.spec_from_file_location(osp.basename(relpath)[:-3],
                                                  osp.join(REPO, 'tools', relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytorch2onnx = load_tool('deployment/pytorch2onnx.py')

MODELS = {
    'nano_cls': 'configs/msvmamba_n_in1k.py',
    'v3_tiny_cls': 'configs/msvmambav3_t_in1k.py',
    'nano_seg': 'configs/upernet_msvmamba_n_160k_ade20k.py',
    'nano_det': 'configs/mask_rcnn_msvmamba_n_1x.py',  # backbone + FPN (extract_feat)
}
EXPORT_SHAPE = ['--shape', '64', '64']  # traced at 1 x 64 x 64; the files take any N, H, W
# the tool's own parity check builds an ONNX Runtime session (26 s of v3-Tiny's 87 s
# export); the tests below check more, so only one model also runs the tool's check
TOOL_CHECKED = {'nano_cls'}
# exported with --quantize int8 too (the tool's int8 step and its int8 vs float32 check)
INT8_MODEL = 'nano_cls'
# int8 vs float32 logits, max |diff| / max |float32| (measured: see docs/deployment.md, int8)
INT8_BOUND = 5e-2
# (batch, H, W)
INPUTS = [(1, 224, 224), (1, 97, 131), (3, 64, 96)]


def _checkpoint(config: str, folder) -> str:
    """Random weights of the config's model, saved as an mmengine-style checkpoint."""
    torch.manual_seed(0)
    model, _, _ = deploy.load_model(osp.join(REPO, config), None)
    path = str(folder / 'random.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
    """``get(name)``: (PyTorch model with the checkpoint's weights, task, ONNX Runtime
    session, ONNX file, checkpoint) of ``MODELS[name]``, exported on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            config = osp.join(REPO, MODELS[name])
            folder = tmp_path_factory.mktemp(name)
            ckpt = _checkpoint(MODELS[name], folder)
            out = str(folder / 'model.onnx')
            check = [] if name in TOOL_CHECKED else ['--no-check']
            if name == INT8_MODEL:
                check += ['--quantize', 'int8']
            assert pytorch2onnx.main([config, ckpt, '--out', out, '--dynamic']
                                     + EXPORT_SHAPE + check) == 0
            model, _, task = deploy.load_model(config, ckpt)
            cache[name] = model, task, deploy.ort_session(out), out, ckpt
        return cache[name]
    return get


@pytest.fixture(scope='module', params=sorted(MODELS))
def exported(request, exports):
    return exports(request.param)


@pytest.mark.parametrize('shape', INPUTS, ids=lambda s: 'x'.join(map(str, s)))
def test_onnxruntime_matches_pytorch(exported, shape):
    model, task, session, _, _ = exported
    x = torch.randn(shape[0], 3, *shape[1:], generator=torch.Generator().manual_seed(1))
    errors = deploy.relative_errors(model, task, session, x)
    assert errors and max(errors.values()) <= 1e-4, errors


def test_file_holds_standard_ops_and_metadata(exported):
    import onnx
    model, task, _, path, _ = exported
    proto = onnx.load(path)
    domains = {node.domain for node in proto.graph.node}
    assert domains <= {'', 'ai.onnx'}, domains  # no custom-op library
    assert max(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')) >= 17
    meta = deploy.read_metadata(path)
    assert meta['task'] == task and meta['input_name'] == proto.graph.input[0].name
    pre = meta['preprocess']
    assert pre['rgb'] is True and len(pre['mean']) == len(pre['std']) == 3
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3])), dims


def test_sliced_adaptive_pool_equals_adaptive_pool():
    """The export form of adaptive average pooling, on odd and uneven sizes."""
    x = torch.randn(2, 3, 31, 23, generator=torch.Generator().manual_seed(2))
    for size in (1, 2, 3, 6, (5, 2)):
        for h, w in ((31, 23), (7, 9), (6, 6), (4, 13)):
            part = x[..., :h, :w]
            want = torch.nn.AdaptiveAvgPool2d(size)(part)
            got = deploy.SlicedAdaptiveAvgPool2d(size)(part)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=0, atol=5e-7)


def test_exportable_pooling_swaps_and_restores():
    pools = [torch.nn.AdaptiveAvgPool2d(s) for s in (1, 3, (None, 2))]
    model = torch.nn.Sequential(*pools)
    with deploy.exportable_pooling(model):
        kinds = [type(m).__name__ for m in model]
    assert kinds == ['SlicedAdaptiveAvgPool2d', 'SlicedAdaptiveAvgPool2d',
                     'AdaptiveAvgPool2d'], kinds  # None (keep the size) stays as it is
    assert list(model) == pools


def test_infer_onnxruntime_segmentation_matches_pytorch(exports, tmp_path):
    """tools/infer.py: same label maps (and a drawn overlay) from the ONNX file as from
    the checkpoint, on an odd-sized image (the inferencer resizes it as the config's
    test pipeline does)."""
    import mmcv
    import numpy as np
    infer = load_tool('infer.py')
    _, _, _, onnx_file, ckpt = exports('nano_seg')
    image = str(tmp_path / 'image.png')
    rng = np.random.default_rng(0)
    mmcv.imwrite(rng.integers(0, 256, (45, 67, 3), dtype=np.uint8), image)
    config = osp.join(REPO, MODELS['nano_seg'])
    labels, overlays = {}, {}
    for backend, weights in (('pytorch', ckpt), ('onnxruntime', onnx_file)):
        out = tmp_path / backend
        assert infer.main([config, weights, image, '--out-dir', str(out), '--backend',
                           backend, '--device', 'cpu']) == 0
        labels[backend] = mmcv.imread(str(out / 'pred' / '00000000_pred.png'), flag='unchanged')
        overlays[backend] = mmcv.imread(str(out / 'vis' / 'image.png'))
    a, b = labels['pytorch'], labels['onnxruntime']
    assert a.shape == b.shape == (45, 67), a.shape
    assert len(np.unique(a)) > 1  # a real label map, not a constant
    # logits agree to ~1e-6 relative; only a near-tie between two classes may flip
    assert (a != b).mean() <= 1e-3, (a != b).mean()
    assert overlays['pytorch'].shape == overlays['onnxruntime'].shape == (45, 67, 3)
    assert (overlays['pytorch'] != overlays['onnxruntime']).any(-1).mean() <= 1e-3
    assert (overlays['pytorch'] != mmcv.imread(image)).any()  # labels were drawn


def test_clear_errors(tmp_path, capsys):
    cfg = tmp_path / 'other_scope.py'
    cfg.write_text("default_scope = 'mmocr'\nmodel = dict(type='X')\n")
    ckpt = tmp_path / 'x.pth'
    torch.save({'state_dict': {'backbone.nothing': torch.zeros(1)}}, str(ckpt))
    official = tmp_path / 'official.pth'  # the layout of the released ImageNet files
    torch.save({'model': {'patch_embed.0.weight': torch.zeros(1)}}, str(official))
    nano = osp.join(REPO, MODELS['nano_cls'])
    out = str(tmp_path / 'x.onnx')
    cases = [
        ([str(cfg), str(ckpt)], "unknown default_scope 'mmocr'"),
        ([nano, str(tmp_path / 'missing.pth')], 'checkpoint not found'),
        ([nano, str(ckpt)], 'does not match'),
        ([nano, str(ckpt), '--opset', '13'], 'opset 17 or newer'),
        ([osp.join(REPO, MODELS['nano_seg']), str(official)],
         'is an official ImageNet file (backbone and classifier only); exporting a '
         'segmentation model needs'),
    ]
    for argv, message in cases:
        assert pytorch2onnx.main(argv + ['--out', out]) == 2
        assert message in capsys.readouterr().err
    benchmark_onnx = load_tool('analysis_tools/benchmark_onnx.py')
    assert benchmark_onnx.main(['--onnx', out, '--int8']) == 2  # no file was written
    assert f'{out}: no such ONNX file' in capsys.readouterr().err


def test_benchmark_onnx_times_pytorch_and_onnxruntime(capsys):
    """benchmark_onnx.py's own path, small: it exports Nano to a temporary file and times
    both PyTorch paths and ONNX Runtime, alternating, with their parity (~15 s)."""
    benchmark_onnx = load_tool('analysis_tools/benchmark_onnx.py')
    assert benchmark_onnx.main(['--arch', 'nano', '--batch-sizes', '1', '--shape', '64', '64',
                                '--threads', '1', '--iters', '2', '--warmup', '1']) == 0
    out = capsys.readouterr().out
    assert 'exported nano classifier to ' in out
    parity = re.search(r'batch 1 parity, .*: pytorch unfused ([0-9.e+-]+), onnxruntime '
                       r'([0-9.e+-]+)', out)
    assert parity and max(map(float, parity.groups())) < 1e-4, out
    assert re.search(r'onnxruntime: [0-9.]+x pytorch fused', out), out


# ------------------------------------------------------------------ --quantize int8

@pytest.fixture(scope='module')
def int8_export(exports):
    """(float32 session, int8 session, float32 file, int8 file) of ``INT8_MODEL``; the
    int8 file is loaded by a plain ``InferenceSession`` (no options, no custom-op
    library)."""
    import onnxruntime as ort
    _, _, session, path, _ = exports(INT8_MODEL)
    int8 = deploy.int8_path(path)
    return session, ort.InferenceSession(int8, providers=['CPUExecutionProvider']), path, int8


def _constant_weight_matmuls(proto) -> int:
    """MatMul nodes of a float graph whose second input is a stored weight."""
    weights = {t.name for t in proto.graph.initializer}
    weights |= {o for n in proto.graph.node if n.op_type == 'Constant' for o in n.output}
    return sum(n.op_type == 'MatMul' and n.input[1] in weights for n in proto.graph.node)


def test_int8_file_holds_standard_ops_and_metadata(int8_export):
    import hashlib
    import onnx
    _, _, path, int8 = int8_export
    assert int8 == path[:-len('.onnx')] + '.int8.onnx'
    proto, float_proto = onnx.load(int8), onnx.load(path)
    assert {n.domain for n in proto.graph.node} <= {'', 'ai.onnx'}
    ops = deploy.standard_op_types(int8)
    # every linear layer's weight is int8 now: no float MatMul on a stored weight is left
    # (more than the float file stores: the ConvFFN's weights are folded first), and none
    # at all: the scan's x / dt projections are exported token-major, on the stored
    # weights (before: a batched product on the expanded weight, left in float)
    assert ops['MatMulInteger'] >= _constant_weight_matmuls(float_proto) > 10, ops
    assert _constant_weight_matmuls(proto) == 0 and 'MatMul' not in ops, ops
    assert 0 < ops['DynamicQuantizeLinear'] <= ops['MatMulInteger'], ops
    assert osp.getsize(int8) < 0.5 * osp.getsize(path)
    meta, float_meta = deploy.read_metadata(int8), deploy.read_metadata(path)
    assert meta['precision'] == 'int8 dynamic' and 'precision' not in float_meta
    assert meta['quantization']['op_types'] == ['MatMul']
    with open(path, 'rb') as f:
        assert meta['float_model'] == dict(file=osp.basename(path),
                                           sha256=hashlib.sha256(f.read()).hexdigest())
    for key in ('task', 'input_name', 'preprocess', 'config', 'dynamic'):
        assert meta[key] == float_meta[key], key


def test_int8_outputs_close_to_float32(int8_export):
    """Random weights and input: closeness only (accuracy needs a trained model:
    docs/deployment.md, int8)."""
    session, int8_session, _, _ = int8_export
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3)).numpy()
    want, got = (torch.from_numpy(s.run(None, {'input': x})[0]).double()
                 for s in (session, int8_session))
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert 1e-4 < err <= INT8_BOUND, err  # really quantized, and close


def test_bad_quantize_value(tmp_path, capsys):
    nano = osp.join(REPO, MODELS['nano_cls'])
    out = str(tmp_path / 'x.onnx')
    with pytest.raises(SystemExit) as exc:
        pytorch2onnx.main([nano, 'x.pth', '--out', out, '--quantize', 'int4'])
    assert exc.value.code == 2
    assert "argument --quantize: invalid choice: 'int4' (choose from 'int8')" in \
        capsys.readouterr().err
    # the package function, called directly, says so before any work
    with pytest.raises(deploy.UserError, match='--quantize fp8: not a supported precision; '
                       'choose from int8'):
        deploy.export_config(nano, None, out, quantize='fp8')
