#!/usr/bin/env python
"""Inference speed of an exported MSVMamba classifier in ONNX Runtime (and OpenVINO, when
installed) against the PyTorch CPU paths, measured in one run.

    python tools/analysis_tools/benchmark_onnx.py [--arch tiny] [--batch-sizes 8 1] \\
        [--shape 224 224] [--threads 2] [--iters 10] [--onnx FILE] [--compare FILE ...] \\
        [--profile]

The model is the ``--arch`` ImageNet classifier (backbone, average pooling, linear head;
random weights: speed does not depend on them), exported with dynamic N, H, W by the
export code of ``tools/deployment/pytorch2onnx.py`` (or read from ``--onnx``). Methods,
all float32 on ``--threads`` CPU threads:

* ``pytorch fused``: eager PyTorch with the fused CPU ops (``msvmamba_ops.cpu_fused``);
* ``pytorch unfused``: eager PyTorch, plain modules (``MSVMAMBA_FUSED_CPU=0``);
* ``onnxruntime``: the ONNX file on ONNX Runtime's CPU execution provider;
* ``openvino``: the same file on OpenVINO's CPU plugin (only if ``openvino`` imports);
* ``onnxruntime (NAME)``: each ``--compare`` file (e.g. an export by an earlier version of
  the code) on ONNX Runtime, for a before / after in one run.

The methods run in turn, one forward each per round, so that all see the same machine
load; the medians and their ratios are printed, after each method's relative error
against the fused PyTorch path. ``--profile`` adds ONNX Runtime's
per-operator profile (share of the run time by ONNX op type, and by module and op) at the
first batch size.
"""
import argparse
import collections
import json
import os
import os.path as osp
import re
import statistics
import sys
import tempfile
import time

import torch

# this checkout's code first; get_flops beside this file; deployment in tools/
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from benchmark import fused_ops, gc_paused  # noqa: E402
from get_flops import ArchClassifier  # noqa: E402

from deployment.pytorch2onnx import export, ort_session  # noqa: E402
from projects.msvmamba.msvmamba import MSVMamba  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='tiny', choices=sorted(MSVMamba.arch_zoo))
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[8, 1])
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--iters', type=int, default=10, help='timed rounds per batch size')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--onnx', help='use this exported file (default: export to a '
                        'temporary one)')
    parser.add_argument('--compare', nargs='+', default=[], metavar='FILE',
                        help='more exported files to time on ONNX Runtime in the same run')
    parser.add_argument('--profile', action='store_true',
                        help="print ONNX Runtime's time share per op type")
    return parser.parse_args(argv)


def export_classifier(model, path: str, shape) -> None:
    """The classifier as pytorch2onnx.py exports models (dynamic N, H, W)."""
    export(model, 'plain', path, torch.randn(1, 3, *shape), dynamic=True, opset=18,
           metadata={})


def openvino_runner(path: str, threads: int):
    """A callable running the file on OpenVINO's CPU plugin, or None if not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    compiled = core.compile_model(path, 'CPU', {'INFERENCE_NUM_THREADS': threads,
                                                'INFERENCE_PRECISION_HINT': 'f32'})
    return lambda x: compiled(x)[0]


def ort_runner(path: str, threads: int):
    """A callable running the file on ONNX Runtime's CPU execution provider."""
    session = ort_session(path, threads)
    return lambda x: session.run(None, {'input': x.numpy()})[0]


def profile_ort(path: str, threads: int, x) -> None:
    """ONNX Runtime's own profile over a few runs: time share per op type, and per module
    and op (node names with the block indices and the exporter's counters left out)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = osp.join(tempfile.mkdtemp(), 'ort')
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    for _ in range(3):
        session.run(None, {'input': x})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    by_type, by_node = collections.Counter(), collections.Counter()
    for e in events:
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time'):
            by_type[e['args'].get('op_name', '?')] += e['dur']
            node = re.sub(r'_\d+$', '', e['name'][:-len('_kernel_time')])
            by_node[re.sub(r'layers\.\d+/blocks\.\d+', 'layers.*/blocks.*', node)] += e['dur']
    total = sum(by_type.values())
    for title, counts in (('op type', by_type), ('module and op', by_node)):
        print(f'onnxruntime profile (batch {x.shape[0]}, share of kernel time by {title}):')
        for name, dur in counts.most_common(12):
            print(f'  {dur / total * 100:5.1f}%  {name}')


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ArchClassifier(args.arch).eval()
    path = args.onnx
    if path is None:
        path = osp.join(tempfile.mkdtemp(), f'msvmamba_{args.arch}.onnx')
        start = time.time()
        export_classifier(model, path, args.shape)
        print(f'exported {args.arch} classifier to {path} in {time.time() - start:.0f} s')
    vino = openvino_runner(path, args.threads)

    def pytorch(fused: bool):
        def run(x):
            with fused_ops(fused), torch.inference_mode():
                return model(x)
        return run

    methods = {'pytorch fused': pytorch(True), 'pytorch unfused': pytorch(False),
               'onnxruntime': ort_runner(path, args.threads)}
    if vino is not None:
        methods['openvino'] = lambda x: vino(x.numpy())
    for other in args.compare:
        methods[f'onnxruntime ({osp.basename(other)})'] = ort_runner(other, args.threads)
    print(f'{args.arch} classifier, {tuple(args.shape)}, float32, {args.threads} threads '
          f'(torch and onnxruntime), torch {torch.__version__}, onnxruntime '
          f'{__import__("onnxruntime").__version__}'
          + ('' if vino is None else f', openvino {__import__("openvino").__version__}')
          + f'; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}')
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, *args.shape)
        want = methods['pytorch fused'](x).double()
        print(f'batch {batch} parity, max |diff| / max |pytorch fused|: ' + ', '.join(
            f'{name} {(torch.as_tensor(fn(x)).double() - want).abs().max() / want.abs().max():.1e}'
            for name, fn in methods.items() if name != 'pytorch fused'))
        times = {name: [] for name in methods}
        with gc_paused():
            for i in range(args.warmup + args.iters):
                for name, fn in methods.items():
                    start = time.perf_counter()
                    fn(x)
                    if i >= args.warmup:
                        times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f'batch {batch}: ' + ', '.join(
            f'{name} {batch / t:.2f} img/s ({t * 1000:.0f} ms)' for name, t in med.items()))
        for name in methods:
            if name.startswith('pytorch'):
                continue
            print(f'  {name}: {med["pytorch fused"] / med[name]:.2f}x pytorch fused '
                  f'(goal >= 0.7x), {med["pytorch unfused"] / med[name]:.2f}x pytorch '
                  'unfused (goal >= 1x)')
        if args.profile and batch == args.batch_sizes[0]:
            profile_ort(path, args.threads, x.numpy())
    print(f'load average at the end: {os.getloadavg()[0]:.1f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
