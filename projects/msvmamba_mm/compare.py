"""MSVMamba beside the backbones users pick instead, measured in one process on the
user's machine: parameters, FLOPs, latency, peak memory and (``train``) a training step,
per model and input size, with the published accuracy of each config beside its cost and
the exponent k of latency / FLOPs / memory ∝ pixels^k. The implementation of
``tools/analysis_tools/compare_backbones.py``.

Fairness: every model runs in this process with the same input tensor, threads, dtype and
warm-up, and the timed forwards alternate model by model (the order rotating each round),
so a change of machine load reaches every model alike. FLOPs come from the counter of
``get_flops.py`` (whole model at batch 1, the selective scan included), latency from the
timer of ``benchmark.py``.

Peak memory: on CUDA the growth of torch's max allocated over the built model. On the CPU
one process's peak resident set only rises, so a large model would hide every smaller one
measured after it; each model's forward is therefore run once in a forked child (which
shares the built models with this process and whose page high-water mark is reset before
the forward, after the C allocator has returned its free pages), and its peak RSS growth
over what it inherited is the figure.
"""
import copy
import csv
import ctypes
import datetime
import json
import math
import os
import os.path as osp
import platform
import select
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from msvmamba_ops import ENV_BACKEND, cpu_fused

from . import analysis, speed, timing
from .errors import UserError

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TASKS = ('cls', 'det', 'seg')

def _ours(name: str, det_schedule: str = '3x') -> Dict[str, str]:
    return dict(cls=f'configs/{name}_in1k.py',
                det=f'configs/mask_rcnn_{name}_{det_schedule}.py',
                seg=f'configs/upernet_{name}_160k_ade20k.py')


# Short name -> config per task: ours under configs/, the peers' as shipped in the
# installed package (``package::path`` of its .mim/configs). Detection uses the 3x
# multi-scale schedule where every backbone has one (mmdet ships ConvNeXt-T only as 3x),
# so the published box/mask AP compare like with like; Nano has only a 1x config.
# None: the package ships no config of that model for the task.
MODEL_CONFIGS: Dict[str, Dict[str, Optional[str]]] = {
    'msvmamba_n': _ours('msvmamba_n', det_schedule='1x'),
    **{name: _ours(name) for name in ('msvmamba_m', 'msvmamba_t', 'msvmambav3_t',
                                      'msvmambav3_s', 'msvmambav3_b')},
    'resnet50': dict(cls='mmpretrain::resnet/resnet50_8xb32_in1k.py',
                     det='mmdet::mask_rcnn/mask-rcnn_r50_fpn_ms-poly-3x_coco.py',
                     seg='mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'),
    'convnext_t': dict(cls='mmpretrain::convnext/convnext-tiny_32xb128_in1k.py',
                       det='mmdet::convnext/'
                           'mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
                       seg='mmseg::convnext/'
                           'convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'),
    'swin_t': dict(cls='mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py',
                   det='mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py',
                   seg='mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_'
                       'ade20k-512x512.py'),
    'deit_s': dict(cls='mmpretrain::deit/deit-small_4xb256_in1k.py',
                   det=None,
                   seg='mmseg::vit/vit_deit-s16_upernet_8xb2-160k_ade20k-512x512.py'),
}
SHORT_NAMES = tuple(MODEL_CONFIGS)
# the metafile metrics shown as published accuracy, per task, and their short labels
METRICS = {
    'cls': (('Top 1 Accuracy', 'top-1'), ),
    'det': (('box AP', 'box AP'), ('mask AP', 'mask AP')),
    'seg': (('mIoU', 'mIoU'), ),
}
ROW_KEYS = ('model', 'task', 'shape', 'height', 'width', 'batch_size', 'params_m', 'flops_g',
            'latency_ms', 'latency_min_ms', 'img_per_s', 'peak_mem_mb', 'train_step_ms',
            'train_peak_mem_mb', 'train_note', 'mem_threads', 'published',
            'published_source', 'config', 'reason')
MEMORY_CHILD_TIMEOUT_S = 1800
# settings that change the timings, recorded with them
RECORDED_ENVIRONMENT = ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY', cpu_fused.ENV_FUSED, ENV_BACKEND)
CHILD_START_TIMEOUT_S = 30


# --------------------------------------------------------------------------------------
# what to compare
# --------------------------------------------------------------------------------------
def parse_shape(text: str) -> Tuple[int, int]:
    """``'224'`` -> (224, 224); ``'800x1333'`` -> (800, 1333) (H x W)."""
    parts = text.lower().split('x')
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise UserError(f'--shapes: {text!r} is not a size; give S (square) or HxW, '
                        'e.g. 224 or 800x1333')
    return (sizes[0], sizes[-1])


def shape_label(shape: Tuple[int, int]) -> str:
    return str(shape[0]) if shape[0] == shape[1] else f'{shape[0]}x{shape[1]}'


def package_config_path(spec: str) -> str:
    """The file of a ``package::path`` config (the package's ``.mim/configs``), or the
    path itself, relative to this checkout when it is not found from the working folder."""
    if '::' not in spec:
        if osp.isfile(spec) or osp.isabs(spec):
            return spec
        in_repo = osp.join(REPO, spec)
        return in_repo if osp.isfile(in_repo) else spec
    package, relative = spec.split('::', 1)
    from mmengine.utils import get_installed_path, is_installed
    if not is_installed(package):
        raise UserError(f'{spec}: the {package} package is not installed')
    return osp.join(get_installed_path(package), '.mim', 'configs', relative)


@dataclass
class Candidate:
    """One model to compare: ``name`` (short name or the config given), ``config`` (as
    written: ``configs/...`` or ``package::...``) and ``reason`` when it has none."""
    name: str
    config: Optional[str]
    reason: Optional[str] = None


def candidates(task: str, models: Sequence[str]) -> List[Candidate]:
    """The models named by short names or config paths, in the order given."""
    if task not in TASKS:
        raise UserError(f'--task {task!r}: choose one of {", ".join(TASKS)}')
    chosen = []
    for model in models:
        if model in MODEL_CONFIGS:
            config = MODEL_CONFIGS[model][task]
            reason = None if config else (f'no {task} config of {model} in the installed '
                                          'packages')
            chosen.append(Candidate(model, config, reason))
        elif model.endswith('.py') or '::' in model:
            path = package_config_path(model)
            if not osp.isfile(path):
                raise UserError(f'--models: config file not found: {model}')
            chosen.append(Candidate(model, model))
        else:
            raise UserError(f'--models: {model!r} is neither a short name '
                            f'({", ".join(SHORT_NAMES)}) nor a config file (.py)')
    if len({c.name for c in chosen}) != len(chosen):
        raise UserError('--models: a model is named twice')
    return chosen


# --------------------------------------------------------------------------------------
# published accuracy
# --------------------------------------------------------------------------------------
def _metafile_models(package: Optional[str]) -> List[Tuple[dict, str]]:
    """``(model entry, metafile path relative to its root)`` of every model in the
    model index of ``package`` (its ``.mim/model-index.yml``), or of this project's
    ``model-index.yml`` for None."""
    import yaml
    if package is None:
        root = REPO
    else:
        from mmengine.utils import get_installed_path
        root = osp.join(get_installed_path(package), '.mim')
    index = osp.join(root, 'model-index.yml')
    if not osp.isfile(index):
        return []
    with open(index) as f:
        imports = (yaml.safe_load(f) or {}).get('Import', [])
    entries = []
    for relative in imports:
        path = osp.join(root, relative)
        if osp.isfile(path):
            with open(path) as f:
                data = yaml.safe_load(f) or {}
            entries += [(m, relative) for m in data.get('Models') or []]
    return entries


def published_accuracy(config: str, task: str) -> Tuple[Optional[str], Optional[str]]:
    """``(text, source)`` of the result the metafile of the config's package (ours for
    ``configs/...``) gives for exactly that config, e.g. ``('top-1 81.18', 'mmpretrain
    1.2.0 configs/swin_transformer/metafile.yml')``; (None, None) without one."""
    if '::' in config:
        package, relative = config.split('::', 1)
        wanted = 'configs/' + relative
    else:
        package, wanted = None, osp.relpath(osp.abspath(package_config_path(config)), REPO)
    for model, metafile in _metafile_models(package):
        if osp.normpath(model.get('Config') or '') != osp.normpath(wanted):
            continue
        found = []
        results = model.get('Results') or []
        for result in [results] if isinstance(results, dict) else results:  # mmseg: one dict
            metrics = result.get('Metrics') or {}
            found += [f'{label} {metrics[key]}' for key, label in METRICS[task]
                      if key in metrics]
        if found:
            if package is None:
                source = f'{metafile}: the paper / upstream MSVMamba'
            else:
                source = f'{package} {_version(package)} {metafile}'
            return ', '.join(found), source
    return None, None


# --------------------------------------------------------------------------------------
# building and running a model
# --------------------------------------------------------------------------------------
def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f'{type(error).__name__}: {text[0] if text else ""}'.strip()


def build(candidate: Candidate, device: str) -> nn.Module:
    """The config's model with random weights (``init_weights`` is not called, so no
    pretrained file is read), SyncBN as BN, on ``device``, in eval mode."""
    from mmengine.model import revert_sync_batchnorm
    model = analysis.build_from_config(package_config_path(candidate.config))
    return revert_sync_batchnorm(model).to(device).eval()


def whole_model_forward(model: nn.Module, shape: Tuple[int, int],
                        batch_size: int) -> nn.Module:
    """The whole model's 'tensor' forward on a batch of ``shape`` images, as the FLOP
    counter traces it: detectors and segmentors get the images' data samples, so a
    two-stage detector's RoI heads run on the RPN's proposals (the benchmark tool's
    :func:`.analysis.tensor_forward` times backbone + neck for those)."""
    one = analysis.image_data_samples(model, shape)
    samples = None if one is None else [one[0].clone() for _ in range(batch_size)]
    return analysis.TensorForward(model, lambda m, x: m(x, samples, mode='tensor'))


# --------------------------------------------------------------------------------------
# peak memory
# --------------------------------------------------------------------------------------
def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_heap() -> None:
    """glibc's malloc_trim: free heap pages back to the system, so that memory an earlier
    forward freed is not reused unseen by the next one."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: clear_refs 5); False if unsupported."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def cpu_peak_growth_mb(run: Callable[[], None]) -> float:
    """Peak RSS growth (MiB) of ``run()`` in this process, from a reset high-water mark."""
    import resource
    _release_free_heap()
    if _reset_peak_rss() and _proc_status_kib('VmHWM') is not None:
        before = _proc_status_kib('VmRSS')
        run()
        return (_proc_status_kib('VmHWM') - before) / 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; a lower bound
    run()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


_STUCK = 'stuck'


def _fork_once(work: Callable[[], dict], threads: int, timeout_s: float) -> dict:
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        os.close(read_fd)
        with os.fdopen(write_fd, 'wb') as pipe:
            try:
                torch.set_num_threads(threads)
                torch.ones(1 << 22).add_(1)  # a multi-threaded op when threads > 1
                pipe.write(b'+')
                pipe.flush()
                payload = work()
            except BaseException as error:  # noqa: B902 (reported to the parent as a row reason)
                payload = dict(error=_one_line(error))
            pipe.write(json.dumps(payload).encode())
        os._exit(0)
    os.close(write_fd)
    data, started = b'', time.monotonic()
    with os.fdopen(read_fd, 'rb', buffering=0) as pipe:
        while True:
            limit = (CHILD_START_TIMEOUT_S if not data else timeout_s) + started
            left = limit - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return dict(error=_STUCK if not data else
                            f'the measurement ran past {timeout_s:.0f} s')
            chunk = pipe.read(1 << 16)
            if not chunk:
                break
            data += chunk
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return dict(error=f'the forward was killed by signal {sig}'
                    + (' (out of memory?)' if sig == signal.SIGKILL else ''))
    return json.loads(data[1:].decode() or '{"error": "the child sent no result"}')


def in_forked_child(work: Callable[[], dict], threads: int, timeout_s: float) -> dict:
    """``work()`` (a dict) in a forked child running torch on ``threads`` threads; it
    shares this process's built models copy-on-write. Returns its dict with ``threads``
    added, or ``{'error': ...}`` when it raised, was killed (e.g. by the kernel's
    out-of-memory killer) or ran past ``timeout_s``.

    GNU OpenMP does not survive fork: once this process has run a multi-threaded op, a
    child's first one waits forever. The child therefore runs a small multi-threaded op
    first and says so; one that does not within CHILD_START_TIMEOUT_S is killed and the
    work runs again in a child on one thread (as DataLoader workers run)."""
    for child_threads in ([threads, 1] if threads > 1 else [1]):
        result = _fork_once(work, child_threads, timeout_s)
        if result.get('error') != _STUCK:
            return dict(result, threads=child_threads)
    return dict(error='the forked child hung even on one thread')


def peak_memory_mb(make_step: Callable[[], Callable[[], object]], device: str,
                   threads: int) -> dict:
    """``{'peak_mem_mb': growth, 'threads': n}`` of one call of ``make_step()`` (a
    forward or a training step of :func:`.speed.forward_step`, made where it runs: a
    training step puts the model in train mode), or ``{'error': ...}`` if it fails."""
    if device == 'cuda':
        try:
            step = make_step()
            timing.synchronize(device)
            timing.reset_peak_memory(device)
            before = torch.cuda.memory_allocated() / 2**20
            step()
            timing.synchronize(device)
            return dict(peak_mem_mb=timing.peak_memory_mib(device) - before)
        except Exception as error:  # noqa: B902 (the model's failure becomes the row's reason)
            return dict(error=_one_line(error))
    return in_forked_child(lambda: dict(peak_mem_mb=cpu_peak_growth_mb(make_step())),
                           threads, MEMORY_CHILD_TIMEOUT_S)


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------
def fit_exponent(pixels: Sequence[float], values: Sequence[Optional[float]]) -> Optional[float]:
    """Least-squares slope k of log(value) against log(pixels): value ∝ pixels^k; None
    with fewer than two sizes that have a positive value."""
    points = [(math.log(p), math.log(v)) for p, v in zip(pixels, values) if v and v > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    sxx = sum((x - mean_x)**2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def _version(distribution: str) -> Optional[str]:
    from importlib import metadata
    names = {'mmseg': 'mmsegmentation'}
    try:
        return metadata.version(names.get(distribution, distribution))
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> Optional[str]:
    try:
        return subprocess.run(['git', '-C', REPO, 'rev-parse', '--short', 'HEAD'],
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: str, threads: int, amp: bool) -> dict:
    """Date, CPU, threads, dtype, load average, commit and package versions (the
    yardstick is added by the run, once the memory children are forked)."""
    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        host_cpu=_cpu_model(), cpu_count=os.cpu_count(), platform=platform.platform(),
        device=device, threads=threads, dtype='float32' + (' + autocast' if amp else ''),
        load_average_before=[round(x, 2) for x in os.getloadavg()], commit=_commit(),
        versions={name: _version(name) for name in (
            'torch', 'mmengine', 'mmcv', 'mmpretrain', 'mmdet', 'mmseg', 'msvmamba-mm')},
        yardstick_gflops=[],
        environment={name: os.environ[name] for name in RECORDED_ENVIRONMENT
                     if name in os.environ})
    if device == 'cuda':
        info['gpu'] = torch.cuda.get_device_name()
    return info


def run(task: str, models: Sequence[str], shapes: Sequence[str], out: str,
        batch_size: int = 1, iters: int = 10, warmup: int = 2, threads: Optional[int] = None,
        device: str = 'cpu', amp: bool = False, train: bool = False,
        mem_budget: Optional[float] = None) -> dict:
    """Measure every model at every size and write ``results.json`` / ``.csv`` / ``.md``
    and ``scaling.png`` into ``out``; returns the results. A run stopped part-way (an
    error, Ctrl-C) writes what it has measured, marked partial, and says where."""
    sizes = sorted({parse_shape(s) for s in shapes}, key=lambda s: s[0] * s[1])
    if batch_size < 1 or iters < 1 or warmup < 0:
        raise UserError('--batch-size and --iters must be at least 1, --warmup at least 0')
    if mem_budget is not None and mem_budget <= 0:
        raise UserError('--mem-budget must be a positive number of MB')
    if device == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda: no CUDA device is available; use --device cpu')
    chosen = candidates(task, models)
    os.makedirs(out, exist_ok=True)
    threads = threads or torch.get_num_threads()
    results = dict(rows=[], exponents={}, machine=machine_info(device, threads, amp),
                   settings=dict(task=task, shapes=[shape_label(s) for s in sizes],
                                 batch_size=batch_size, iters=iters, warmup=warmup, amp=amp,
                                 train=train, mem_budget_mb=mem_budget))
    finished = False
    try:
        _measure(results, chosen, sizes, threads, mem_budget)
        finished = True
    finally:
        results['machine']['load_average_after'] = [round(x, 2) for x in os.getloadavg()]
        results['partial'] = not finished
        results['exponents'] = exponents(results['rows'], mem_budget)
        written = write_outputs(results, out)
        if finished:
            print(f'\n{markdown_table(results["rows"], train)}\n\n'
                  f'{exponent_table(results["exponents"], mem_budget)}\n\nwrote '
                  + ', '.join(written))
        else:
            print(f'\nstopped part-way: the rows measured so far are in {out}', flush=True)
    return results


def _machine_line(machine: dict) -> str:
    versions = ', '.join(f'{k} {v}' for k, v in machine['versions'].items() if v)
    yardstick = ' and '.join(f'{g:.0f}' for g in machine['yardstick_gflops']) or '-'
    return (f'{machine["date"]}: {machine["host_cpu"]} ({machine["cpu_count"]} CPUs), '
            f'device {machine["device"]}, {machine["threads"]} threads, '
            f'{machine["dtype"]}, load average {machine["load_average_before"]}; '
            + ''.join(f'{k}={v}, ' for k, v in machine.get('environment', {}).items())
            + 
            f'machine yardstick: 1024x1024 float32 matmul at {yardstick} GFLOP/s; '
            f'{versions}')


def _new_row(candidate: Candidate, task: str, shape, batch_size: int) -> dict:
    row = dict.fromkeys(ROW_KEYS)
    row.update(model=candidate.name, task=task, shape=shape_label(shape), height=shape[0],
               width=shape[1], batch_size=batch_size, config=candidate.config,
               reason=candidate.reason)
    if candidate.config:
        row['published'], row['published_source'] = published_accuracy(candidate.config, task)
    return row


def _build_all(chosen: List[Candidate], device: str) -> Dict[str, nn.Module]:
    """The models that build (the others' candidates get the reason), built on one
    thread: no multi-threaded op may run in this process before the memory children are
    forked (see :func:`in_forked_child`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    built = {}
    try:
        for candidate in chosen:
            if candidate.reason is None:
                torch.manual_seed(analysis.SEED)
                try:
                    built[candidate.name] = build(candidate, device)
                except Exception as error:  # noqa: B902 (its rows say why)
                    candidate.reason = f'does not build: {_one_line(error)}'
    finally:
        torch.set_num_threads(threads)
    return built


def _inputs(shape, batch_size: int, device: str) -> torch.Tensor:
    """The input every model gets at ``shape``: the same seeded batch."""
    generator = torch.Generator().manual_seed(analysis.SEED)
    return torch.randn(batch_size, 3, *shape, generator=generator).to(device)


def _measure(results: dict, chosen: List[Candidate], sizes, threads: int,
             mem_budget: Optional[float]) -> None:
    """Fill ``results['rows']`` (one per model and size, in place, so that a stopped run
    keeps what it measured): first the peak memory of every model from its smallest size
    up (forked children before this process runs a multi-threaded op; a model over
    ``mem_budget`` is not run at larger sizes), then per size FLOPs and the alternating
    latency (and training steps)."""
    from mmengine.analysis import parameter_count
    from mmengine.utils import ProgressBar
    settings = results['settings']
    task, batch_size, amp, train = (settings[k] for k in ('task', 'batch_size', 'amp',
                                                          'train'))
    device = results['machine']['device']
    built = _build_all(chosen, device)
    rows = {}
    for shape in sizes:
        for candidate in chosen:
            rows[candidate.name, shape] = row = _new_row(candidate, task, shape, batch_size)
            if candidate.name in built:
                row['params_m'] = parameter_count(built[candidate.name])[''] / 1e6
            results['rows'].append(row)
    rounds = (settings['warmup'] + settings['iters']) * (2 if train else 1)
    progress = ProgressBar(len(rows) * (3 if train else 2) + len(sizes) * rounds)
    for candidate in chosen:
        over_budget = None
        for shape in sizes:
            row = rows[candidate.name, shape]
            if row['reason'] is None and over_budget:
                row['reason'] = over_budget
            if row['reason'] is None:
                _measure_memory(row, built[candidate.name], shape, device, amp, threads,
                                train, progress)
                if mem_budget and (row['peak_mem_mb'] or 0) > mem_budget:
                    # this size ran (in the child); the larger ones are not run
                    over_budget = (f'not run: peak memory {row["peak_mem_mb"]:.0f} MB at '
                                   f'{shape_label(shape)} is over --mem-budget '
                                   f'{mem_budget:.0f} MB')
            progress.update()
    torch.set_num_threads(threads)
    results['machine']['yardstick_gflops'].append(round(timing.matmul_gflops(device), 1))
    print('\n' + _machine_line(results['machine']), flush=True)
    for shape in sizes:
        names = [c.name for c in chosen if rows[c.name, shape]['reason'] is None]
        for name in names:  # per image: batch 1, the whole model, get_flops.py's counter
            try:
                rows[name, shape]['flops_g'] = analysis.count_flops(
                    built[name], shape)['flops'] / 1e9
            except Exception as error:  # noqa: B902 (the row says so; timing goes on)
                rows[name, shape]['reason'] = f'FLOPs not counted: {_one_line(error)}'
            progress.update()
        inputs = _inputs(shape, batch_size, device)
        forwards = {n: whole_model_forward(built[n], shape, batch_size) for n in names}
        steps = {n: speed.forward_step(f, inputs, device, amp) for n, f in forwards.items()}
        for name, seconds in _alternate(steps, device, settings, progress).items():
            median = statistics.median(seconds)
            rows[name, shape].update(latency_ms=median * 1000,
                                     latency_min_ms=min(seconds) * 1000,
                                     img_per_s=batch_size / median)
        if train:
            trainable = [n for n in names if rows[n, shape]['train_peak_mem_mb'] is not None]
            _time_training({n: forwards[n] for n in trainable},
                           {n: rows[n, shape] for n in trainable}, inputs, device, amp,
                           settings, progress)
    results['machine']['yardstick_gflops'].append(round(timing.matmul_gflops(device), 1))


def _measure_memory(row: dict, model: nn.Module, shape, device: str, amp: bool,
                    threads: int, train: bool, progress) -> None:
    """Peak memory growth of one forward (and with ``train`` one training step) of
    ``model`` at ``shape``; a model that cannot take the size gets the reason."""
    batch_size = row['batch_size']

    def make_step(train_step: bool):
        forward = whole_model_forward(model, shape, batch_size)
        return speed.forward_step(forward, _inputs(shape, batch_size, device), device, amp,
                                  train_step)

    memory = peak_memory_mb(lambda: make_step(False), device, threads)
    if 'error' in memory:
        row['reason'] = f'cannot take {shape_label(shape)}: {memory["error"]}'
        return
    row['peak_mem_mb'], row['mem_threads'] = memory['peak_mem_mb'], memory.get('threads')
    if train:
        memory = peak_memory_mb(lambda: make_step(True), device, threads)
        model.eval()  # (in a CUDA run the step was made in this process)
        if 'error' in memory:
            row['train_note'] = f'training step failed: {memory["error"]}'
        else:
            row['train_peak_mem_mb'] = memory['peak_mem_mb']
        progress.update()


def _alternate(steps: Dict[str, Callable[[], object]], device: str, settings: dict,
               progress) -> Dict[str, List[float]]:
    """Seconds per call of each step, the steps alternating call by call
    (:func:`.timing.time_alternating`), the order rotating from round to round so that no
    model always follows the same one; ``warmup`` rounds untimed, then ``iters``."""
    names = list(steps)
    seconds: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(settings['warmup'] + settings['iters']):
        if names:
            shift = round_index % len(names)
            order = {name: steps[name] for name in names[shift:] + names[:shift]}
            timed = timing.time_alternating(order, iters=1, warmup=0, device=device)
            if round_index >= settings['warmup']:
                for name in names:
                    seconds[name] += timed[name]
        progress.update()
    return seconds


def _time_training(forwards: Dict[str, nn.Module], rows: Dict[str, dict], inputs,
                   device: str, amp: bool, settings: dict, progress) -> None:
    """Training-step time (:func:`.speed.forward_step` with ``train``: forward, backward,
    AdamW step), alternating; the models' weights are restored after, so that every size's
    FLOPs and latency are those of the same (seeded) weights."""
    saved = {n: copy.deepcopy(f.model.state_dict()) for n, f in forwards.items()}
    try:
        steps = {n: speed.forward_step(f, inputs, device, amp, train=True)
                 for n, f in forwards.items()}
        for name, seconds in _alternate(steps, device, settings, progress).items():
            rows[name]['train_step_ms'] = statistics.median(seconds) * 1000
    finally:
        for name, forward in forwards.items():
            forward.model.load_state_dict(saved[name])
            forward.model.eval()


def exponents(rows: List[dict], mem_budget: Optional[float]) -> dict:
    """Per model: k of latency, FLOPs and peak memory ∝ pixels^k over its measured sizes,
    and the largest measured size within ``mem_budget`` (MB)."""
    by_model: Dict[str, List[dict]] = {}
    for row in rows:
        by_model.setdefault(row['model'], []).append(row)
    fitted = {}
    for model, model_rows in by_model.items():
        ok = [r for r in model_rows if r['latency_ms'] is not None]
        pixels = [r['height'] * r['width'] for r in ok]
        entry = dict(sizes=[r['shape'] for r in ok],
                     latency_k=fit_exponent(pixels, [r['latency_ms'] for r in ok]),
                     flops_k=fit_exponent(pixels, [r['flops_g'] for r in ok]),
                     peak_mem_k=fit_exponent(pixels, [r['peak_mem_mb'] for r in ok]))
        if mem_budget:
            within = [r for r in model_rows
                      if r['peak_mem_mb'] is not None and r['peak_mem_mb'] <= mem_budget]
            entry['largest_within_mem_budget'] = (
                max(within, key=lambda r: r['height'] * r['width'])['shape'] if within else None)
        fitted[model] = entry
    return fitted


# --------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------
def _cell(value, digits: int = 1) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def markdown_table(rows: List[dict], train: bool = False) -> str:
    head = ['model', 'size', 'batch', 'params (M)', 'GFLOPs/img', 'latency (ms)', 'img/s',
            'peak mem (MB)']
    if train:
        head += ['train step (ms)', 'train peak mem (MB)']
    head += ['published', 'note']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        cells = [r['model'], r['shape'], r['batch_size'], _cell(r['params_m'], 2),
                 _cell(r['flops_g'], 3), _cell(r['latency_ms']), _cell(r['img_per_s'], 2),
                 _cell(r['peak_mem_mb'], 0)]
        if train:
            cells += [_cell(r['train_step_ms']), _cell(r['train_peak_mem_mb'], 0)]
        published = (f'{r["published"]} ({r["published_source"]})' if r['published']
                     else '-')
        cells += [published, (r['reason'] or r.get('train_note') or '').replace('|', '/')]
        lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
    return '\n'.join(lines)


def exponent_table(fitted: dict, mem_budget: Optional[float]) -> str:
    head = ['model', 'sizes', 'k latency', 'k FLOPs', 'k peak mem']
    if mem_budget:
        head.append(f'largest size within {mem_budget:.0f} MB')
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for model, e in fitted.items():
        cells = [model, ' '.join(e['sizes']) or '-', _cell(e['latency_k'], 2),
                 _cell(e['flops_k'], 2), _cell(e['peak_mem_k'], 2)]
        if mem_budget:
            cells.append(_cell(e.get('largest_within_mem_budget')))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_outputs(results: dict, out: str) -> List[str]:
    """results.json, results.csv, results.md and scaling.png in ``out``; their paths."""
    paths = [osp.join(out, f'results.{ext}') for ext in ('json', 'csv', 'md')]
    with open(paths[0], 'w') as f:
        json.dump(results, f, indent=2)
    with open(paths[1], 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=ROW_KEYS)
        writer.writeheader()
        writer.writerows(results['rows'])
    settings, machine = results['settings'], results['machine']
    train = settings['train']
    with open(paths[2], 'w') as f:
        f.write(f'# compare_backbones: {settings["task"]}, batch {settings["batch_size"]}'
                + (' (partial: the run stopped)' if results.get('partial') else '')
                + f'\n\n{_machine_line(machine)}; load average after '
                f'{machine.get("load_average_after")}\n\n'
                f'{markdown_table(results["rows"], train)}\n\n'
                f'Exponents k of value ∝ pixels^k:\n\n'
                f'{exponent_table(results["exponents"], settings["mem_budget_mb"])}\n')
    paths.append(plot_scaling(results, osp.join(out, 'scaling.png')))
    return paths


def plot_scaling(results: dict, path: str) -> str:
    """Log-log latency and peak memory against pixels, one line per model."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    settings, machine = results['settings'], results['machine']
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], 'latency_ms', 'latency per batch (ms)'),
                           (axes[1], 'peak_mem_mb', 'peak memory growth (MB)')):
        for model in results['exponents']:
            points = sorted((r['height'] * r['width'], r[key]) for r in results['rows']
                            if r['model'] == model and r[key] and r['latency_ms'])
            if points:
                k = results['exponents'][model][
                    'latency_k' if key == 'latency_ms' else 'peak_mem_k']
                ax.plot(*zip(*points), marker='o',
                        label=model + (f' (k={k:.2f})' if k is not None else ''))
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('pixels per image')
        ax.set_ylabel(label)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f'{settings["task"]}, batch {settings["batch_size"]}, {machine["device"]} '
                 f'({machine["host_cpu"]}), {machine["threads"]} threads, {machine["date"]}',
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
