"""model-index.yml / configs/metafile.yml list exactly the experiment configs."""
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / 'configs'
EXCLUDED = ('_base_', 'examples', 'quick_start')  # fragments, how-to examples, demo


def metafile_models():
    index = yaml.safe_load((REPO / 'model-index.yml').read_text())
    models = []
    for rel in index['Import']:
        meta = yaml.safe_load((REPO / rel).read_text())
        collections = {c['Name'] for c in meta.get('Collections', [])}
        for model in meta['Models']:
            assert model['In Collection'] in collections, model['Name']
            models.append(model)
    return models


MODELS = metafile_models()


def experiment_configs():
    return sorted(p.relative_to(REPO).as_posix() for p in CONFIG_DIR.rglob('*.py')
                  if not set(p.relative_to(CONFIG_DIR).parts) & set(EXCLUDED))


def test_index_imports_the_configs_metafile():
    index = yaml.safe_load((REPO / 'model-index.yml').read_text())
    assert index['Import'] == ['configs/metafile.yml']


@pytest.mark.parametrize('model', MODELS, ids=[m['Name'] for m in MODELS])
def test_listed_config_exists(model):
    config = model['Config']
    assert (REPO / config).is_file(), config
    assert Path(config).stem == model['Name']  # name = config file name
    assert not set(Path(config).parts) & set(EXCLUDED)


def test_every_config_is_listed_once():
    listed = [m['Config'] for m in MODELS]
    assert len(listed) == len(set(listed)), 'a config is listed twice'
    assert sorted(listed) == experiment_configs()


@pytest.mark.parametrize('model', MODELS, ids=[m['Name'] for m in MODELS])
def test_results_and_weights_fields(model):
    meta = model['Metadata']
    assert meta['Parameters'] > 0 and meta['FLOPs'] > 0
    assert meta['Training Data'] in ('ImageNet-1k', 'COCO', 'ADE20K')
    results = model.get('Results')
    if results is None:  # no published result (the Nano det/seg configs)
        assert 'Converted From' not in model
        return
    for r in results:
        assert r['Metrics'] and all(0 < v < 100 for v in r['Metrics'].values())
    weights = model['Converted From']['Weights']
    assert weights.startswith(('https://drive.google.com/drive/folders/',
                               'https://huggingface.co/YuhengSSS/MSVMamba/'))
