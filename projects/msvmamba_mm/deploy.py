"""ONNX export of a config's model (standard ops only) and its ONNX Runtime check.

What is exported, by the config's ``default_scope`` (:data:`TASKS`):

* classification (mmpretrain): ``model(x, mode='tensor')``, the logits (N, classes);
* segmentation (mmseg): ``model(x, mode='tensor')``, the decode head's logits
  (N, classes, H/4, W/4) (resize and argmax stay with the caller);
* detection (mmdet): ``model.extract_feat(x)``, backbone + neck features (one output
  per FPN level). Box/mask heads, RoI ops and NMS are not exported: they stay in PyTorch.

The input ``input`` is a float32 (N, 3, H, W) image batch already normalised as the
config's ``data_preprocessor`` does (channel order, mean, std; detection: padded to a
multiple of ``pad_size_divisor``); the ONNX metadata records all of it (read it back
with :func:`read_metadata`). The selective scan is exported as the chunked plain-op scan
(``msvmamba_ops/chunked_scan.py``) and adaptive average pooling (UperNet's pyramid
pooling) as slices and means (:class:`SlicedAdaptiveAvgPool2d`): no custom-op library is
needed.

``export_config(..., quantize='int8')`` also writes the file's int8 version
(:func:`quantize_int8`: onnxruntime.quantization's dynamic quantization of the MatMul
weights; standard ONNX ops, see docs/deployment.md, int8).

Public API: :func:`export_config` (what ``tools/deployment/pytorch2onnx.py`` runs),
:func:`load_model`, :func:`export`, :func:`read_metadata`, :func:`normalise`,
:func:`ort_session`, :func:`quantize_int8`, :func:`int8_path`, :func:`standard_op_types`,
:func:`relative_errors`, :func:`onnx_network` (``tools/infer.py --backend onnxruntime``),
:func:`ort_runner`, :func:`openvino_runner`, :func:`ort_profile` (``benchmark_onnx.py``),
:class:`ExportWrapper`, :class:`SlicedAdaptiveAvgPool2d`, :func:`exportable_pooling`.
"""
import contextlib
import json
import os
import os.path as osp
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from msvmamba_ops.testing import rel_error

from .errors import UserError
from .tooling import build_scoped_model, load_scoped_config

INPUT_NAME = 'input'
DEFAULT_OPSET = 18
MIN_OPSET = 17
# what is exported per scope: task name and the call that produces the outputs
TASKS = {'mmpretrain': 'classification', 'mmseg': 'segmentation', 'mmdet': 'detection'}


class ExportWrapper(nn.Module):
    """``model(x, mode='tensor')`` (classification, segmentation),
    ``model.extract_feat(x)`` (detection) or ``model(x)`` (task 'plain': a plain torch
    module, e.g. the benchmark's classifier) as a one-input module."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task
        # the exporter restores the wrapper's mode (and so its children's) afterwards
        self.train(model.training)

    def forward(self, x: torch.Tensor):
        if self.task == 'detection':
            return tuple(self.model.extract_feat(x))
        if self.task == 'plain':
            return self.model(x)
        return self.model(x, mode='tensor')


class SlicedAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` written with slices and means, for export.

    The exporter's adaptive pooling needs the input size as a constant, but the
    exported backbone computes its feature-map sizes at run time. Cell ``i`` of ``o``
    along a side of length ``n`` averages rows ``floor(i*n/o)`` to ``ceil((i+1)*n/o)``
    (exclusive), PyTorch's own windows; ``o`` is fixed, so the loops unroll, and the
    tracer records ``n`` (``x.shape``) and the bounds as graph arithmetic. Rows first,
    then columns: every window is a rectangle, so the mean of the row means is the
    window mean (float32 rounding aside, ~1e-7).
    """

    def __init__(self, output_size):
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else output_size
        if len(size) != 2 or not all(isinstance(o, int) and o > 0 for o in size):
            raise ValueError(f'output_size {output_size!r}: need positive ints (None, '
                             '"keep the input size", is not supported)')
        self.output_size = tuple(size)

    @staticmethod
    def _pool(x: torch.Tensor, dim: int, cells: int) -> torch.Tensor:
        if cells == 1:
            return x.mean(dim, keepdim=True)
        n = x.shape[dim]
        lead = (slice(None), ) * (x.dim() + dim)  # dim is negative
        return torch.cat([x[lead + (slice(i * n // cells, ((i + 1) * n + cells - 1) // cells), )]
                          .mean(dim, keepdim=True) for i in range(cells)], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(self._pool(x, -2, self.output_size[0]), -1, self.output_size[1])

    def extra_repr(self) -> str:
        return f'output_size={self.output_size}'


@contextlib.contextmanager
def exportable_pooling(model: nn.Module):
    """Within the block, every ``nn.AdaptiveAvgPool2d`` of ``model`` (fixed output size)
    is a :class:`SlicedAdaptiveAvgPool2d`; the originals come back afterwards."""
    swapped = []
    for parent in model.modules():
        for name, child in parent.named_children():
            size = getattr(child, 'output_size', None)
            sizes = (size, size) if isinstance(size, int) else tuple(size or (None, ))
            if isinstance(child, nn.AdaptiveAvgPool2d) and None not in sizes:
                swapped.append((parent, name, child))
    try:
        for parent, name, child in swapped:
            setattr(parent, name, SlicedAdaptiveAvgPool2d(child.output_size))
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def load_model(config: str, checkpoint: Optional[str],
               cfg_options: Optional[dict] = None) -> Tuple[nn.Module, object, str]:
    """``(model in eval mode, cfg, task)``: the config's model built in its scope's
    registry, with the checkpoint's weights (strict: every weight must fit). Without a
    checkpoint the model keeps its initialisation (tests)."""
    cfg, scope = load_scoped_config(config, cfg_options)
    if scope.name not in TASKS:
        raise UserError(f"default_scope '{scope.name}' of {config} cannot be exported; "
                        f'export supports: {", ".join(sorted(TASKS))}')
    model = build_scoped_model(cfg, scope)
    if checkpoint is not None:
        load_weights(model, checkpoint, TASKS[scope.name])
    return model.eval(), cfg, TASKS[scope.name]


def load_weights(model: nn.Module, path: str, task: str) -> None:
    """Weights-only load; a checkpoint that does not fit the model is a one-line error.
    An official classification file (``{'model': ...}``, the released ImageNet weights) is
    converted to mmpretrain's names on the fly, as msvmamba2mmpretrain.py would."""
    from projects.msvmamba.checkpoint import (CheckpointError, convert_to_mmpretrain,
                                              extract_state_dict, is_official_checkpoint,
                                              load_checkpoint_file, load_state_dict)
    if not ('://' in path or osp.isfile(path)):
        raise UserError(f'checkpoint not found: {path}')
    try:
        ckpt = load_checkpoint_file(path)
        state_dict, _ = extract_state_dict(ckpt, source=path)
        if is_official_checkpoint(ckpt):
            if task != 'classification':
                raise UserError(
                    f'checkpoint {path} is an official ImageNet file (backbone and '
                    f'classifier only); exporting a {task} model needs a checkpoint of the '
                    'whole trained model (tools/train.py writes one)')
            state_dict = convert_to_mmpretrain(state_dict)
        load_state_dict(model, state_dict, source=path, strict=True)
    except (CheckpointError, KeyError, TypeError, ValueError) as err:
        raise UserError(f'checkpoint {path} does not match the config\'s model: '
                        f'{err}') from err


def preprocessing(cfg) -> Dict:
    """The normalisation the exported graph expects of its input (from the config's
    ``data_preprocessor``): channel order, mean, std and the size divisor (detection)."""
    pre = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    rgb = bool(pre.get('to_rgb', pre.get('bgr_to_rgb', False)))
    mean, std = pre.get('mean'), pre.get('std')
    return dict(channel_order='rgb' if rgb else 'as loaded (bgr for OpenCV / mmcv images)',
                rgb=rgb, mean=None if mean is None else [float(m) for m in mean],
                std=None if std is None else [float(s) for s in std],
                size_divisor=int(pre.get('pad_size_divisor', 1) or 1))


def check_shape(model: nn.Module, task: str, shape: Sequence[int], divisor: int) -> None:
    """A clear error for an input size the model cannot take."""
    h, w = shape
    backbone = getattr(model, 'backbone', None)
    smallest = getattr(backbone, 'min_input_size', 1)
    if min(h, w) < max(smallest, 1):
        raise UserError(f'--shape {h} {w} is smaller than the backbone takes '
                        f'({smallest} x {smallest})')
    if task == 'detection' and (h % divisor or w % divisor):
        raise UserError(f'--shape {h} {w}: detection inputs are padded to multiples of '
                        f'{divisor} (data_preprocessor.pad_size_divisor); use e.g. '
                        f'--shape {-(-h // divisor) * divisor} {-(-w // divisor) * divisor}')


def output_names(model: nn.Module, task: str, example: torch.Tensor) -> List[str]:
    if task in ('classification', 'plain'):
        return ['logits']
    if task == 'segmentation':
        return ['seg_logits']
    with torch.no_grad():
        count = len(ExportWrapper(model, task)(example))
    return [f'feat{i}' for i in range(count)]


def export(model: nn.Module, task: str, out: str, example: torch.Tensor, dynamic: bool,
           opset: int, metadata: Dict[str, str]) -> List[str]:
    """Write the ONNX file; returns the output names."""
    import onnx
    names = output_names(model, task, example)
    axes = {INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'}} if dynamic else None
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    # TorchScript-based exporter: it records the size arithmetic of the trace as graph ops,
    # so the file takes any N, H, W. (The torch.export-based one reasons symbolically
    # about every size expression of the chunked scan's levels and took over 10 minutes
    # for Nano here.) The backbone leaves its fused CPU ops out while exporting.
    with torch.no_grad(), warnings.catch_warnings(), exportable_pooling(model):
        warnings.simplefilter('ignore')  # tracer and deprecation warnings
        torch.onnx.export(ExportWrapper(model, task), (example, ), out, dynamo=False,
                          opset_version=opset, input_names=[INPUT_NAME],
                          output_names=names, dynamic_axes=axes)
    _write_metadata(onnx.load(out), metadata, out)
    return names


def _write_metadata(proto, metadata: Dict[str, str], out: str) -> None:
    """Save ``proto`` to ``out`` with exactly ``metadata`` as its metadata, then run
    ``onnx.checker`` on the file."""
    import onnx
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, out)
    onnx.checker.check_model(out, full_check=True)


def read_metadata(path: str) -> Dict:
    """The metadata this tool writes (``task``, ``input_name``, ``preprocess``, ...; an
    int8 file also ``precision``, ``quantization`` and ``float_model``)."""
    import onnx
    proto = onnx.load(path, load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    for key in ('preprocess', 'quantization', 'float_model'):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


def normalise(path: str, meta: Dict, size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The image file ``path`` as a (1, 3, H, W) float32 input, prepared from an exported
    file's metadata (:func:`read_metadata`) alone: read with mmcv (BGR), resized to
    ``size`` (H, W) if given, channel order, mean and std as the metadata says."""
    import mmcv
    image = mmcv.imread(str(path))
    if size is not None:
        image = mmcv.imresize(image, tuple(size)[::-1])
    pre = meta['preprocess']
    if pre['rgb']:
        image = image[..., ::-1]
    x = torch.from_numpy(image.copy()).float()
    x = (x - torch.tensor(pre['mean'])) / torch.tensor(pre['std'])
    return x.permute(2, 0, 1).unsqueeze(0).contiguous()


def ort_session(path: str, threads: Optional[int] = None, spinning: Optional[bool] = None,
                profile_prefix: Optional[str] = None):
    """An ONNX Runtime CPU session of ``path``: ``threads`` intra-op threads (default: its
    own choice); ``spinning`` False stops its idle workers from spin-waiting for the next
    run (``session.intra_op.allow_spinning``; default: ONNX Runtime's, on);
    ``profile_prefix`` turns its profiler on."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if spinning is not None:
        options.add_session_config_entry('session.intra_op.allow_spinning',
                                         '1' if spinning else '0')
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def ort_runner(path: str, threads: Optional[int] = None,
               spinning: Optional[bool] = None) -> Callable:
    """``run(x)``: the file's first output for the torch tensor ``x``, in ONNX Runtime
    (:func:`ort_session`)."""
    session = ort_session(path, threads, spinning)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def openvino_runner(path: str, threads: int) -> Optional[Callable]:
    """``run(x)`` on OpenVINO's CPU plugin (float32), or None if openvino is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    compiled = ov.Core().compile_model(path, 'CPU', {'INFERENCE_NUM_THREADS': threads,
                                                     'INFERENCE_PRECISION_HINT': 'f32'})
    return lambda x: compiled(x.numpy())[0]


def ort_profile(path: str, threads: int, x: torch.Tensor, runs: int = 3,
                top: int = 12) -> List[str]:
    """ONNX Runtime's own profile over ``runs`` runs on ``x``: lines of the share of kernel
    time by op type, and by module and op (node names with the block indices and the
    exporter's counters left out)."""
    import collections
    import re
    import tempfile
    session = ort_session(path, threads, profile_prefix=osp.join(tempfile.mkdtemp(), 'ort'))
    for _ in range(runs):
        session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    by_type, by_node = collections.Counter(), collections.Counter()
    for e in events:
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time'):
            by_type[e['args'].get('op_name', '?')] += e['dur']
            node = re.sub(r'_\d+$', '', e['name'][:-len('_kernel_time')])
            by_node[re.sub(r'layers\.\d+/blocks\.\d+', 'layers.*/blocks.*', node)] += e['dur']
    total = sum(by_type.values())
    lines = []
    for title, counts in (('op type', by_type), ('module and op', by_node)):
        lines.append(f'onnxruntime profile (batch {x.shape[0]}, share of kernel time by {title}):')
        lines += [f'  {dur / total * 100:5.1f}%  {name}' for name, dur in counts.most_common(top)]
    return lines


# --quantize: the one precision offered, and what it does by default (docs/deployment.md,
# int8: the choices were measured there)
QUANTIZATIONS = ('int8', )
INT8_OP_TYPES = ('MatMul', )
INT8_PER_CHANNEL = False
STANDARD_DOMAINS = ('', 'ai.onnx')


def int8_path(path: str) -> str:
    """Where ``--quantize int8`` writes the int8 version of the float file ``path``."""
    stem = path[:-len('.onnx')] if path.endswith('.onnx') else path
    return stem + '.int8.onnx'


def standard_op_types(path: str) -> Dict[str, int]:
    """``{op type: count}`` of the file's graph; a :class:`UserError` if any node is
    outside the standard ONNX domain (a runtime would need a custom-op library)."""
    import onnx
    return _op_counts(onnx.load(path, load_external_data=False), path)


def _op_counts(proto, path: str) -> Dict[str, int]:
    import collections
    custom = sorted({f'{n.domain}::{n.op_type}' for n in proto.graph.node
                     if n.domain not in STANDARD_DOMAINS})
    if custom:
        raise UserError(f'{path} holds non-standard ops ({", ".join(custom)}); the '
                        'exported files must run on any ONNX runtime')
    return dict(collections.Counter(n.op_type for n in proto.graph.node))


def quantize_int8(float_path: str, out: str, op_types: Sequence[str] = INT8_OP_TYPES,
                  per_channel: bool = INT8_PER_CHANNEL, reduce_range: bool = False) -> Dict:
    """Write ``out``, the dynamically quantized version of the float32 ONNX file
    ``float_path`` (``onnxruntime.quantization.quantize_dynamic``): the weights of the
    ``op_types`` nodes (MatMul: every linear layer but the 2-D head, which the exporter
    writes as Gemm and dynamic quantization leaves in float) become int8 constants
    (``per_channel``: one scale per output column), and at run time each activation
    entering them is quantized to uint8 with its own range (DynamicQuantizeLinear ->
    MatMulInteger -> scale). ``reduce_range`` (7-bit weights) is for CPUs without VNNI,
    whose u8 x s8 instruction can saturate. The file keeps the float file's metadata plus
    ``precision``, ``quantization`` (the settings) and ``float_model`` (its name and
    sha256). Returns ``{op type: count}`` of the written graph (standard ONNX ops only,
    :func:`standard_op_types`)."""
    import hashlib
    import tempfile
    import onnx
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # ONNX Runtime's basic graph optimisation (constant folding; standard ops) first:
        # the float file computes the ConvFFN's weights at run time (Flatten and
        # Transpose of the 1 x 1 conv kernels), and the quantizer only takes MatMuls
        # whose weight is stored
        folded = osp.join(tmp, 'folded.onnx')
        quant_pre_process(float_path, folded, skip_symbolic_shape=True)
        quantize_dynamic(folded, out, op_types_to_quantize=list(op_types),
                         per_channel=per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QInt8)
    with open(float_path, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    settings = dict(method='onnxruntime.quantization.quantize_dynamic',
                    op_types=list(op_types), weights='int8 (symmetric), '
                    + ('per output channel' if per_channel else 'per tensor'),
                    activations='uint8, range of each input at run time',
                    reduce_range=bool(reduce_range))
    proto = onnx.load(out)
    meta = {p.key: p.value for p in onnx.load(float_path, load_external_data=False)
            .metadata_props}
    meta.update(precision='int8 dynamic', quantization=json.dumps(settings),
                float_model=json.dumps(dict(file=osp.basename(float_path), sha256=digest)))
    _write_metadata(proto, meta, out)
    return _op_counts(proto, out)


def relative_errors(model: nn.Module, task: str, session,
                    x: torch.Tensor) -> Dict[str, float]:
    """max |onnxruntime - PyTorch| / max |PyTorch| per output on input ``x``."""
    with torch.no_grad():
        ref = ExportWrapper(model, task)(x)
    refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    errors = {} if len(outs) == len(refs) else {'number of outputs': float('inf')}
    for meta, got, want in zip(session.get_outputs(), outs, refs):
        errors[meta.name] = rel_error(torch.from_numpy(got), want)
    return errors


def export_config(config: str, checkpoint: Optional[str], out: str,
                  shape: Sequence[int] = (224, 224), batch_size: int = 1,
                  dynamic: bool = False, opset: int = DEFAULT_OPSET, check: bool = True,
                  cfg_options: Optional[dict] = None, quantize: Optional[str] = None) -> Dict:
    """Export ``config``'s model with ``checkpoint``'s weights to ``out``, run
    ``onnx.checker`` and (``check``) compare ONNX Runtime with PyTorch on a random input
    of the export shape; prints what was written. ``quantize='int8'`` also writes
    :func:`int8_path` (``out``) with :func:`quantize_int8` and (``check``) prints its
    relative error against the float32 file in ONNX Runtime. Returns ``dict(task, outputs,
    errors, model)`` (``errors``: :func:`relative_errors`, empty without ``check``;
    ``model``: the PyTorch model it exported, in eval mode; with int8 also
    ``int8_path``, ``int8_ops`` and ``int8_error``). A bad request (opset, scope,
    checkpoint, shape, quantization) or a parity error over 1e-4 is a :class:`UserError`."""
    if opset < MIN_OPSET:
        raise UserError(f'--opset {opset}: opset {MIN_OPSET} or newer is needed')
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UserError(f'--quantize {quantize}: not a supported precision; choose from '
                        f'{", ".join(QUANTIZATIONS)} (dynamic int8 quantization)')
    model, cfg, task = load_model(config, checkpoint, cfg_options)
    pre = preprocessing(cfg)
    check_shape(model, task, shape, pre['size_divisor'])
    example = torch.randn(batch_size, 3, *shape, generator=torch.Generator().manual_seed(0))
    metadata = dict(task=task, input_name=INPUT_NAME, input_layout='NCHW float32',
                    preprocess=json.dumps(pre), config=osp.basename(config),
                    dynamic=str(bool(dynamic)), export_shape=json.dumps([batch_size, 3, *shape]),
                    scan='msvmamba_ops chunked scan (standard ONNX ops)')
    start = time.time()
    names = export(model, task, out, example, dynamic, opset, metadata)
    size = osp.getsize(out) / 2**20
    print(f'{task}: exported {config} to {out} ({size:.1f} MiB, opset {opset}, '
          f'{"dynamic N, H, W" if dynamic else "static shape"}, '
          f'{time.time() - start:.0f} s); onnx.checker passed')
    print(f'input {INPUT_NAME!r}: (N, 3, H, W) float32, normalised: {pre["channel_order"]}, '
          f'mean {pre["mean"]}, std {pre["std"]}'
          + (f', padded to multiples of {pre["size_divisor"]}' if task == 'detection' else ''))
    print(f'outputs: {", ".join(names)}')
    errors, session = {}, None
    if check:
        session = ort_session(out)
        errors = relative_errors(model, task, session, example)
        worst = max(errors.values())
        print('parity (onnxruntime vs PyTorch, max |diff| / max |PyTorch|, input '
              f'{tuple(example.shape)}): ' + ', '.join(f'{k} {v:.2e}' for k, v in errors.items()))
        if not worst <= 1e-4:
            raise UserError(f'onnxruntime differs from PyTorch by {worst:.2e} (> 1e-4) '
                            f'relative; the export of {config} is not faithful')
    result = dict(task=task, outputs=names, errors=errors, model=model)
    if quantize is not None:
        result.update(_write_int8(out, session, example))
    return result


def _write_int8(out: str, session, example: torch.Tensor) -> Dict:
    """``export_config``'s int8 step: quantize ``out``, say what was written and, given
    the float32 file's ``session``, compare the two files on ``example``."""
    path, start = int8_path(out), time.time()
    ops = quantize_int8(out, path)
    print(f'int8: wrote {path} ({osp.getsize(path) / 2**20:.1f} MiB, dynamic quantization '
          f'of {ops.get("MatMulInteger", 0)} MatMul weights, {time.time() - start:.0f} s); '
          'standard ONNX ops only (' + ', '.join(f'{op} {n}' for op, n in sorted(ops.items())
                                                  if 'Integer' in op or 'Quantize' in op) + ')')
    result = dict(int8_path=path, int8_ops=ops)
    if session is not None:
        feed = {INPUT_NAME: example.numpy()}
        want, got = (torch.from_numpy(runner.run(None, feed)[0])
                     for runner in (session, ort_session(path)))
        result['int8_error'] = error = rel_error(got, want)
        print(f'int8 vs float32 (onnxruntime, max |diff| / max |float32|, input '
              f'{tuple(example.shape)}): {error:.2e}; random input: accuracy is measured '
              'on a trained model (docs/deployment.md, int8)')
        if not error < 1:
            raise UserError(f'the int8 file differs from the float32 one by {error:.2e} '
                            f'relative (not < 1): {path} is not usable')
    return result


def onnx_network(path: str, task: str, threads: Optional[int] = None) -> Callable:
    """``patch(model)`` for an mmpretrain / mmseg model: afterwards the model computes its
    network (``extract_feat`` + head forward, i.e. the logits) with the ONNX file ``path``
    in ONNX Runtime, and its head's ``predict`` (softmax / top-k; resize, argmax) runs on
    those logits as usual. The file must have been exported for ``task``."""
    if task == 'detection':
        raise UserError('--backend onnxruntime: detection files hold only backbone + neck '
                        '(extract_feat); boxes, masks and NMS need the PyTorch path '
                        '(--backend pytorch)')
    meta = read_metadata(path)
    if meta.get('task') != task:
        raise UserError(f'{path} was exported for {meta.get("task", "an unknown task")} '
                        f'but the config is a {task} config; export it from this config '
                        'with tools/deployment/pytorch2onnx.py')
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name

    def network(inputs):
        logits = session.run(None, {name: inputs.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(logits).to(inputs.device)

    def patch(model):
        # extract_feat -> the file's logits; the head's forward passes them through
        model.extract_feat = network
        head = model.head if task == 'classification' else model.decode_head
        head.forward = lambda feats: feats
    return patch
