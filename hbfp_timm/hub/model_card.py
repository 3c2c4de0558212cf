"""Model cards of exported runs: the trainer's results checked, the card's YAML metadata (``model-index``) and text.

:func:`render_model_card` writes the README.md that :func:`hbfp_timm.hub.save_pretrained` puts next to the
weights: measured numbers beside the paper's (labelled as the paper's), whether the data were synthetic, the
loading snippet with ``import hbfp_timm``, and the paper's citation.
"""
from typing import Any, Dict, List, Mapping, Optional, Tuple

import timm
import torch.nn as nn
import yaml

from .paper import DATASET_TITLES, PAPER_TABLE1

__all__ = ['REQUIRED_METRICS', 'OPTIONAL_METRICS', 'architecture', 'check_results', 'render_model_card']

REQUIRED_METRICS = ('rank1', 'mAP')
OPTIONAL_METRICS = ('rank5', 'rank10')
PAPER_BIBTEX = """@inproceedings{liu2020hbfp,
  title     = {Hierarchical Bi-Directional Feature Perception Network for Person Re-Identification},
  author    = {Liu, Zhipu and Zhang, Lei and Yang, Yang},
  booktitle = {Proceedings of the 28th ACM International Conference on Multimedia},
  year      = {2020},
  doi       = {10.1145/3394171.3413689}
}"""


def architecture(model: nn.Module) -> str:
    """The registered ``hbfp_*`` name of a model built by timm (a ValueError for anything else)."""
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    if not arch or not timm.is_model(arch) or not arch.startswith('hbfp_'):
        raise ValueError(
            f'model: expected an HBFP model built with timm.create_model("hbfp_...") (config.json needs its '
            f'registered architecture and constructor arguments), got {type(model).__name__} '
            f'with architecture {arch!r}')
    return arch


def check_results(results: Optional[Mapping[str, Any]], arch: str, source: str = 'results') -> Optional[Dict]:
    """Validate the trainer's results dict (metrics as fractions in [0, 1]); None stays None."""
    if results is None:
        return None
    if not isinstance(results, Mapping):
        raise ValueError(f'{source}: expected a dict like the trainer\'s results.json, got {type(results).__name__}')
    if results.get('model', arch) != arch:
        raise ValueError(f"{source}: 'model' is {results['model']!r} but the model being saved is {arch!r}")
    if not isinstance(results.get('dataset'), str) or not results['dataset']:
        raise ValueError(f"{source}: expected a 'dataset' name such as 'market1501', got {results.get('dataset')!r}")
    metrics = results.get('metrics')
    if metrics is not None and not isinstance(metrics, Mapping):
        raise ValueError(f"{source}: expected 'metrics' to be a dict with {', '.join(REQUIRED_METRICS)} (or null for "
                         f'a run never evaluated), got {metrics!r}')
    for key in (REQUIRED_METRICS + OPTIONAL_METRICS) if metrics is not None else ():
        if key not in metrics and key in OPTIONAL_METRICS:
            continue
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{source}: metrics['{key}'] must be a fraction in [0, 1], got {value!r}")
    img_size = results.get('img_size')
    if img_size is not None and (not isinstance(img_size, (list, tuple)) or len(img_size) != 2
                                 or not all(isinstance(v, int) and v > 0 for v in img_size)):
        raise ValueError(f'{source}: img_size must be [H, W] in pixels, got {img_size!r}')
    model_args = results.get('model_args', {})
    if not isinstance(model_args, Mapping):
        raise ValueError(f'{source}: model_args must be a dict of HBFPNet constructor arguments, got {model_args!r}')
    synthetic = results.get('synthetic_data')
    if synthetic is not None and not isinstance(synthetic, Mapping):
        raise ValueError(f"{source}: synthetic_data must be the generator's settings (a dict) or null, "
                         f'got {synthetic!r}')
    return dict(results)


def _dataset_title(results: Mapping[str, Any]) -> str:
    """The training data of a run as a reader should see it; synthetic data says so."""
    synthetic = results.get('synthetic_data')
    if synthetic:
        return (f"synthetic pedestrians (python -m hbfp_timm.data.synthetic, seed {synthetic.get('seed', '?')}, "
                f"{synthetic.get('num_ids', '?')} identities)")
    return DATASET_TITLES.get(results['dataset'], results['dataset'])


def _percent(fraction: float) -> float:
    return round(100.0 * fraction, 2)


def _card_metadata(arch: str, results: Optional[Dict], name: str, license: str = 'apache-2.0') -> Dict[str, Any]:
    meta: Dict[str, Any] = {
        'library_name': 'timm',
        'license': license,
        'pipeline_tag': 'image-feature-extraction',
        'tags': ['person-reid', 're-identification', 'hbfp', 'timm', 'image-feature-extraction'],
    }
    if results is None:
        return meta
    if results.get('synthetic_data'):
        meta['tags'].append('synthetic-data')
    dataset, metrics = results['dataset'], results['metrics']
    meta['datasets'] = [dataset]
    if metrics is None:
        return meta
    meta['model-index'] = [{
        'name': name,
        'results': [{
            'task': {'type': 'person-re-identification', 'name': 'Person Re-Identification'},
            'dataset': {'type': dataset, 'name': _dataset_title(results), 'split': 'query/gallery'},
            'metrics': [
                {'type': key.lower(), 'name': label, 'value': _percent(metrics[key])}
                for key, label in (('rank1', 'Rank-1'), ('rank5', 'Rank-5'), ('rank10', 'Rank-10'), ('mAP', 'mAP'))
                if key in metrics
            ],
        }],
    }]
    return meta


# The trainer's recipe settings shown on a card, in this order.
RECIPE_KEYS = ('epochs', 'lr', 'lr_constant_epochs', 'lr_final_factor', 'weight_decay', 'batch_size', 'num_instances',
               'margin', 'label_smoothing', 'flip_prob', 'random_erasing_prob', 'cutout_prob', 'seed')


def _training_lines(results: Optional[Mapping[str, Any]]) -> list:
    """The run's command, recipe and training identities, as the trainer recorded them."""
    if not results or not results.get('config'):
        return []
    config = results['config']
    recipe = ', '.join(f'{key} {config[key]}' for key in RECIPE_KEYS if key in config)
    lines = ['## Training', '', f"- Recipe (the trainer's settings): {recipe}."]
    if results.get('num_train_pids'):
        lines.append(f"- Training identities: {results['num_train_pids']}.")
    if results.get('command'):
        command = ' '.join(str(part) for part in results['command'])
        lines += ['- Command:', '', '```bash', command, '```']
    return lines + ['']


def render_model_card(model: nn.Module, results: Optional[Mapping[str, Any]] = None,
                      repo_id: Optional[str] = None, notes: Optional[str] = None,
                      license: str = 'apache-2.0') -> str:
    """The ``README.md`` of a Hub repository: YAML metadata (model-index from ``results``), results, usage.

    Args:
        model: The HBFP model being saved (built by ``timm.create_model``).
        results: The trainer's results (``dataset``, ``metrics`` as fractions or None, ``img_size``,
            ``model_args``, and when recorded ``config``, ``command``, ``num_train_pids``), or None for weights
            without a recorded run.
        repo_id: The Hub repository the card is for; the usage snippet loads from it (a local folder otherwise).
        notes: Markdown added to the card under "About these weights" (comparisons, seeds, data licence).
        license: The card's licence identifier (``other`` for weights bound by a data set's terms).

    Returns:
        The model card text, front matter first.
    """
    arch = architecture(model)
    results = check_results(results, arch)
    name = repo_id.split('/')[-1] if repo_id else (f"{arch}.{results['dataset']}" if results else arch)
    meta = yaml.safe_dump(_card_metadata(arch, results, name, license), sort_keys=False)
    source = f'hf-hub:{repo_id}' if repo_id else 'local-dir:PATH/TO/THIS/FOLDER'
    height, width = _input_size(model, results)
    lines = [
        '---', meta.rstrip(), '---', f'# {name}', '',
        f'**Needs the hbfp-timm package: `import hbfp_timm` before `timm.create_model` (see Usage).** timm has no '
        f'plugin entry points, so without the import `timm.create_model("{source}")` stops with '
        f'`RuntimeError: Unknown model ({arch})`.', '',
        f'HBFP-Net (Hierarchical Bi-directional Feature Perception Network, Liu, Zhang and Yang, ACM MM 2020) for '
        f'person re-identification, as the timm model `{arch}` of the hbfp-timm package. `model(images)` returns a '
        f'{model.num_features}-d descriptor per image; people are matched by the distance between descriptors.',
        '', '## Results', '',
    ]
    if results is not None and results.get('synthetic_data'):
        lines += ['**Trained on synthetic data.** These weights learnt from generated pictures of pedestrians '
                  '(`python -m hbfp_timm.data.synthetic`), not from photographs of people: they exercise the pipeline, '
                  'and their scores say nothing about re-identifying real people.', '']
    if results is None or results['metrics'] is None:
        lines.append('These weights come with no evaluation: no metrics were given when they were saved.')
    else:
        dataset, metrics = results['dataset'], results['metrics']
        title = _dataset_title(results)
        cells = lambda m: ' | '.join(  # noqa: E731
            f'{v:g}' if v is not None else 'n/a' for v in (m.get(k) for k in ('rank1', 'rank5', 'rank10', 'mAP')))
        ours = {k: _percent(v) for k, v in metrics.items() if k in REQUIRED_METRICS + OPTIONAL_METRICS}
        lines += [
            f'{title} test set, single query, no re-ranking, Market-1501 protocol (same-identity same-camera gallery '
            f'images removed), input {height}x{width}, percent:', '',
            '| | Rank-1 | Rank-5 | Rank-10 | mAP |', '|---|---|---|---|---|',
            f'| these weights | {cells(ours)} |',
        ]
        if dataset in PAPER_TABLE1:
            lines.append(f'| the paper\'s Table 1 (ResNet-50, 384x128; not these weights) '
                         f'| {cells(PAPER_TABLE1[dataset])} |')
    lines += ['']
    lines += _cross_domain_lines(results)
    lines += _threshold_lines(results)
    if notes:
        lines += ['## About these weights', '', notes.strip(), '']
    lines += _training_lines(results)
    lines += [
        '## Usage', '',
        'timm has no plugin entry points: `import hbfp_timm` must come before `timm.create_model`, also for '
        '`hf-hub:` names.', '',
        '```python', 'import timm', 'import torch', 'from PIL import Image', '',
        'import hbfp_timm  # registers the hbfp_* architectures with timm; must come first',
        'from hbfp_timm.data import build_test_transform', '',
        f'model = timm.create_model("{source}", pretrained=True).eval()',
        'transform = build_test_transform(model.pretrained_cfg["input_size"][1:])  # resize to (H, W), normalise',
        'with torch.no_grad():',
        '    descriptor = model(transform(Image.open("person.jpg").convert("RGB")).unsqueeze(0))  # (1, D)',
        '```', '',
        '## Model details', '',
        f'- Architecture: `{arch}`, constructor arguments in `config.json` (`model_args`); '
        f'{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters.',
        f'- Input: RGB {height}x{width}, ImageNet mean/std normalisation.',
        f'- Training data: {_dataset_title(results) if results else "not recorded"}.',
        '- Paper: https://doi.org/10.1145/3394171.3413689. Design choices and the training recipe: MODEL_CARD.md of '
        'hbfp-timm.', '',
        '## Intended use and limits', '',
        'For research on person re-identification benchmarks. Re-identification tracks people across cameras: '
        'deploying it on real people is surveillance, with legal (e.g. GDPR) and ethical obligations, and is not an '
        'intended use. The benchmark data sets were collected without individual consent and carry research-only '
        'terms; accuracy drops on cameras, clothing and populations unlike the training set.', '',
        '## Citation', '', '```bibtex', PAPER_BIBTEX, '```', '',
    ]
    return '\n'.join(lines)


def _cross_domain_lines(results: Optional[Mapping[str, Any]]) -> List[str]:
    """The card's cross-domain table: the trainer's ``--eval-data-root`` scores at the last evaluation."""
    rows = (results or {}).get('cross_domain') or []
    if not rows:
        return []
    lines = ['### Cross-domain evaluation', '',
             f'Trained on {_dataset_title(results)}, tested on other data sets without further training (same '
             'protocol and input size; percent):', '',
             '| tested on | reader | queries | gallery | Rank-1 | Rank-5 | Rank-10 | mAP |',
             '|---|---|---:|---:|---:|---:|---:|---:|']
    lines += [f"| {row['data_root']} | {row['dataset']} | {row['num_query']} | {row['num_gallery']} | "
              + ' | '.join(f'{_percent(row[k]):g}' for k in ('rank1', 'rank5', 'rank10', 'mAP')) + ' |' for row in rows]
    return lines + ['']


def _threshold_lines(results: Optional[Mapping[str, Any]]) -> List[str]:
    """The card's "same person" thresholds (``results['thresholds']``, a record of hbfp_timm.metrics.verification)."""
    record = (results or {}).get('thresholds')
    if not record:
        return []
    where = (record.get('calibrated_on') or {}).get('data_root', 'labelled validation data')
    lines = ['### "Same person" distance thresholds', '',
             f"Calibrated on {where} ({record.get('metric')} distance, flip {record.get('flip')}): a pair of images "
             'is the same person when its distance is below the threshold. They are in `config.json` '
             '(`reid_thresholds`); `python -m hbfp_timm.search --same-person FMR` uses them. **A threshold holds for '
             'the cameras it was calibrated on**: re-check it on yours with `python -m hbfp_timm.evaluate`.', '',
             '| false-match rate target | threshold | false-match rate | true-match rate |', '|---:|---:|---:|---:|']
    rate = lambda value, digits: 'n/a' if value is None else f'{100 * value:.{digits}f}%'  # noqa: E731
    lines += [f"| {entry['fmr_target']:g} | {entry['threshold']:.4f} | {rate(entry.get('fmr'), 3)} | "
              f"{rate(entry.get('tmr'), 1)} |" for entry in record['thresholds']]
    if record.get('warning'):  # evaluate --calibrate on too few pairs (hbfp_timm.metrics.verification)
        lines += ['', f"**Warning**: {record['warning']}."]
    return lines + ['']


def _input_size(model: nn.Module, results: Optional[Mapping[str, Any]]) -> Tuple[int, int]:
    if results and results.get('img_size'):
        return tuple(results['img_size'])
    return tuple(model.pretrained_cfg['input_size'][1:])
