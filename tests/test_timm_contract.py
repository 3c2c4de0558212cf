"""The timm conventions of the HBFP models beyond the basic contract, checked the way timm's own
tests/test_models.py and train.py use them: features_only with each feature class, forward_intermediates and
prune_intermediate_layers, TorchScript and torch.fx, gradient checkpointing, layer-wise lr decay and weight
decay through timm.optim, drop rates, and timm's preprocessing pipeline."""
import math
import zlib

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from timm.layers import DropPath
from timm.models import get_notrace_functions, get_notrace_modules
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import hbfp_timm  # noqa: F401  (registers the hbfp_* models with timm)
from hbfp_timm.data.transforms import build_test_transform
from hbfp_timm.models.backbone import run_modules
from hbfp_timm.models.segments import FeatureTap
from hbfp_timm.utils.memory import saved_activation_bytes

SMALL = dict(correlation_dim=8, perception_dim=16)
IMG_SIZE = (64, 32)
# hbfp_resnet18: act1, layer1, layer2, layer3, layer4 (stride 1), then the learned maps low, mid, high.
CHANNELS = [64, 64, 128, 256, 512, 256, 256, 512]
REDUCTIONS = [2, 4, 8, 16, 16, 16, 16, 16]


def _model(seed: int = 0, **kwargs) -> nn.Module:
    """hbfp_resnet18 with random BatchNorm affine parameters and statistics, so that the BFP modules (an
    identity at initialisation: their last BN weight is zero) change the maps. Each BatchNorm's values follow
    from its path in the model, so a features_only wrapper (which nests the model under 'model.', 'body.' or
    'graph_module.') gets the same ones."""
    torch.manual_seed(seed)
    model = timm.create_model('hbfp_resnet18', **dict(SMALL, **kwargs))
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                path = name.split('.', 1)[1] if name.split('.')[0] in ('model', 'body', 'graph_module') else name
                generator = torch.Generator().manual_seed(seed + zlib.crc32(path.encode()))
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model


def _images(batch_size: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, 3, *IMG_SIZE, generator=torch.Generator().manual_seed(seed))


def _tracer_kwargs() -> dict:
    """What timm's tests/test_models.py gives torchvision's FX tracer."""
    return dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                param_shapes_constant=True)


# --- feature_info, forward_intermediates, features_only -------------------------------------------

def test_feature_info_lists_the_backbone_stages_then_the_three_learned_maps():
    model = _model()
    assert [f['num_chs'] for f in model.feature_info] == CHANNELS
    assert [f['reduction'] for f in model.feature_info] == REDUCTIONS
    assert [f['module'] for f in model.feature_info][-3:] == ['low_map', 'mid_map', 'high_map']
    assert all(isinstance(model.get_submodule(f['module']), FeatureTap) for f in model.feature_info)


def test_forward_intermediates_returns_the_maps_feature_info_names():
    """timm's test_model_forward_intermediates, and each map against a direct computation."""
    model = _model().eval()
    x = _images()
    with torch.no_grad():
        features, maps = model.forward_intermediates(x)
        backbone = model.backbone
        layer1 = run_modules(backbone, ('conv1', 'bn1', 'act1', 'maxpool', 'layer1'), x)
        layer4 = run_modules(backbone, ('layer2', 'layer3', 'layer4'), layer1)
        expected_learned = model._learned_maps(*_backbone_levels(model, x))
        assert torch.equal(features, model.forward_features(x))
    assert len(maps) == len(model.feature_info)
    for info, feature_map in zip(model.feature_info, maps):
        assert feature_map.shape[1] == info['num_chs']
        for size, map_size in zip(IMG_SIZE, feature_map.shape[2:]):
            assert map_size <= math.ceil(size / info['reduction']) + 1
    torch.testing.assert_close(maps[1], layer1)
    torch.testing.assert_close(maps[4], layer4)
    for got, expected in zip(maps[5:], expected_learned):
        torch.testing.assert_close(got, expected)


def _backbone_levels(model, x):
    cuts = model._cuts
    low = run_modules(model.backbone, cuts.stem, x)
    mid = run_modules(model.backbone, cuts.block3, low)
    return low, mid, run_modules(model.backbone, cuts.block4, mid)


def test_forward_intermediates_indices_stop_early_and_intermediates_only():
    model = _model().eval()
    x = _images()
    with torch.no_grad():
        _, every = model.forward_intermediates(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[1, -3], intermediates_only=True)
        final, early = model.forward_intermediates(x, indices=[2], stop_early=True)
    assert [t.shape for t in last_two] == [t.shape for t in every[-2:]]
    assert torch.equal(picked[0], every[1]) and torch.equal(picked[1], every[5])
    assert len(early) == 1 and torch.equal(early[0], every[2]) and torch.equal(final, every[2])
    with pytest.raises(ValueError, match="output_fmt: HBFP-Net feature maps are 'NCHW'"):
        model.forward_intermediates(x, output_fmt='NHWC')


@pytest.mark.parametrize('feature_cls', [None, 'getter', 'hook', 'fx'])
def test_features_only_through_each_timm_feature_class(feature_cls):
    """timm's test_model_forward_features: the wrapped model returns the maps forward_intermediates names,
    by default the three learned maps, any feature_info entries with out_indices."""
    x = _images(1)
    reference = _model().eval()
    with torch.no_grad():
        _, maps = reference.forward_intermediates(x)
    kwargs = {} if feature_cls is None else dict(feature_cls=feature_cls)
    for out_indices, expected in ((None, [5, 6, 7]), ((1, 4, 6), [1, 4, 6])):
        model = _model(features_only=True, **kwargs, **({} if out_indices is None else dict(out_indices=out_indices)))
        with torch.no_grad():
            outputs = model.eval()(x)
        outputs = list(outputs.values()) if isinstance(outputs, dict) else outputs
        assert model.feature_info.channels() == [CHANNELS[i] for i in expected]
        assert model.feature_info.reduction() == [REDUCTIONS[i] for i in expected]
        assert len(outputs) == len(expected)
        for output, index in zip(outputs, expected):
            torch.testing.assert_close(output, maps[index])


def test_features_only_takes_timms_feature_cfg_keys_over_the_defaults():
    """timm's feature_cfg may name the feature class and the maps itself; it wins over the model's defaults."""
    x = _images(1)
    with torch.no_grad():
        _, maps = _model().eval().forward_intermediates(x)
        model = _model(features_only=True, feature_cfg=dict(feature_cls='hook', out_indices=(1, 4))).eval()
        outputs = model(x)
    outputs = list(outputs.values()) if isinstance(outputs, dict) else outputs
    assert model.feature_info.channels() == [CHANNELS[1], CHANNELS[4]] and len(outputs) == 2
    torch.testing.assert_close(outputs[0], maps[1])
    torch.testing.assert_close(outputs[1], maps[4])


def test_prune_intermediate_layers_keeps_only_what_the_requested_stages_need():
    model = _model().eval()
    x = _images()
    with torch.no_grad():
        _, maps = model.forward_intermediates(x)
    stem_and_layer1 = sum(p.numel() for name in ('conv1', 'bn1', 'layer1')
                          for p in model.backbone.get_submodule(name).parameters())
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert sum(p.numel() for p in model.parameters()) == stem_and_layer1
    assert model.num_features == 64 and model.bfp_low_mid is None and model.refeed_block3 is None
    with torch.no_grad():
        pruned_maps = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        torch.testing.assert_close(model.forward_features(x), maps[1])
        torch.testing.assert_close(model(x), maps[1])  # head pruned: the map passes through
    torch.testing.assert_close(pruned_maps, maps[:2])


# --- TorchScript and torch.fx ----------------------------------------------------------------------

def test_torchscript_and_fx_models_match_eager():
    """timm's test_model_forward_torchscript, test_model_forward_fx and test_model_forward_fx_torchscript."""
    model = _model().eval()
    x = _images(1)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), expected)
        _, eval_nodes = get_graph_node_names(model, tracer_kwargs=_tracer_kwargs())
        fx_model = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=_tracer_kwargs())
        assert torch.equal(list(fx_model(x).values())[0], expected)
        torch.testing.assert_close(list(torch.jit.script(fx_model)(x).values())[0], expected)
        # Plain torch.fx, which knows nothing of timm's leaf modules, traces the whole model too.
        assert torch.equal(torch.fx.symbolic_trace(model)(x), expected)


def test_fx_traced_training_model_backpropagates_to_every_parameter():
    """timm's test_model_backward_fx."""
    model = _model(num_classes=7).train()
    train_nodes, _ = get_graph_node_names(model, tracer_kwargs=_tracer_kwargs())
    fx_model = create_feature_extractor(model, return_nodes=[train_nodes[-1]], tracer_kwargs=_tracer_kwargs())
    outputs = list(fx_model(_images()).values())[0]
    outputs.mean().backward()
    assert outputs.shape == (2, 7)
    assert all(p.grad is not None for p in fx_model.parameters())
    assert sum(p.numel() for p in fx_model.parameters()) == sum(p.numel() for p in model.parameters())


# --- gradient checkpointing ----------------------------------------------------------------------

def _training_step(model: nn.Module, x: torch.Tensor) -> dict:
    torch.manual_seed(3)  # the same dropout and drop-path masks in both runs
    outputs = model.forward_branches(x)
    (sum(logit.sum() for logit in outputs.logits) + sum(p.square().sum() for p in outputs.pooled)).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_grad_checkpointing_gives_the_same_gradients_and_state():
    kwargs = dict(num_classes=5, drop_rate=0.2, drop_path_rate=0.1)
    plain, checkpointed = _model(**kwargs).train(), _model(**kwargs).train()
    checkpointed.set_grad_checkpointing()
    x = _images(4)
    plain_grads, checkpointed_grads = _training_step(plain, x), _training_step(checkpointed, x)
    for name, grad in plain_grads.items():
        assert torch.equal(grad, checkpointed_grads[name]), name
    # Recomputation does not update BatchNorm running statistics a second time.
    for (name, value), other in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.equal(value, other), name
    with torch.no_grad():  # timm's test_model_forward_intermediates with checkpointing enabled
        plain.eval(), checkpointed.eval()
        for a, b in zip(plain.forward_intermediates(x)[1], checkpointed.forward_intermediates(x)[1]):
            assert torch.equal(a, b)


def test_grad_checkpointing_keeps_less_than_half_the_activations():
    model = _model(num_classes=5).train()
    x = _images(2)
    def step():
        outputs = model.forward_branches(x)
        return sum(logits.sum() for logits in outputs.logits) + sum(f.square().sum() for f in outputs.pooled)

    plain, _ = saved_activation_bytes(model, step)
    model.set_grad_checkpointing()
    checkpointed, _ = saved_activation_bytes(model, step)
    assert checkpointed < 0.5 * plain


# --- optimizer groups and drop rates -----------------------------------------------------------------

def test_layer_decay_groups_follow_the_depth_of_each_parameter():
    """create_optimizer_v2(layer_decay=...) groups through group_matcher: the stem, each backbone block (a
    re-fed copy with the block it copies), then the new layers (BFP, pooling, neck, classifier) with the head."""
    model = _model(num_classes=5, gep_learnable=True)
    optimizer = create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=1e-4, layer_decay=0.5)
    scale = {id(p): group['lr_scale'] for group in optimizer.param_groups for p in group['params']}
    params = dict(model.named_parameters())
    order = ['backbone.conv1.weight', 'backbone.layer1.0.conv1.weight', 'backbone.layer1.1.conv1.weight',
             'backbone.layer2.0.conv1.weight', 'backbone.layer2.1.conv1.weight', 'backbone.layer3.0.conv1.weight',
             'backbone.layer3.1.conv1.weight', 'backbone.layer4.0.conv1.weight', 'backbone.layer4.1.conv1.weight',
             'classifier.weight']
    assert [scale[id(params[name])] for name in order] == [0.5 ** k for k in range(9, -1, -1)]
    assert scale[id(params['backbone.bn1.weight'])] == scale[id(params['backbone.conv1.weight'])]
    assert scale[id(params['refeed_block3.0.conv1.weight'])] == scale[id(params['backbone.layer3.1.conv1.weight'])]
    assert scale[id(params['refeed_block4.0.1.bn2.bias'])] == scale[id(params['backbone.layer4.1.bn2.bias'])]
    for name in ('bfp_low_mid.p_perception.conv.weight', 'bfp_mid_high.bilinear_weight', 'global_pool.weight',
                 'neck.weight'):
        assert scale[id(params[name])] == 1.0
    coarse = model.group_matcher(coarse=True)
    assert coarse('backbone.layer4.0.conv1.weight') == coarse('refeed_block4.0.1.conv2.weight')
    assert coarse('backbone.layer3.0.conv1.weight') == coarse('refeed_block3.0.conv2.weight')


def test_no_weight_decay_excludes_the_scale_parameters():
    model = _model(gep_learnable=True)
    assert model.no_weight_decay() == {'bfp_low_mid.bilinear_weight', 'bfp_mid_high.bilinear_weight',
                                       'global_pool.weight'}
    groups = param_groups_weight_decay(model, 1e-4, weight_decay_exclude_1d=False,
                                       no_weight_decay_list=model.no_weight_decay())
    decay = {id(p): group['weight_decay'] for group in groups for p in group['params']}
    params = dict(model.named_parameters())
    assert all(decay[id(params[name])] == 0.0 for name in model.no_weight_decay())
    assert decay[id(params['bfp_low_mid.q_projection.bn.weight'])] == 1e-4  # only the named ones are excluded


def test_drop_rate_drops_the_neck_features_before_the_classifier_in_training_only():
    model = _model(num_classes=5, drop_rate=0.5).train()
    x = _images(4)
    with torch.no_grad():
        neck = model.neck(model.global_pool(model.forward_features(x)))
        torch.manual_seed(7)
        expected = model.classifier(F.dropout(neck, p=0.5, training=True))
        torch.manual_seed(7)
        logits = model(x)
        torch.manual_seed(7)
        branch_logits = sum(model.forward_branches(x).logits)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(branch_logits, expected)
    assert not torch.allclose(logits, model.classifier(neck))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.classifier(model.forward_head(model.forward_features(x), True)))


def test_drop_path_rate_reaches_the_backbone_blocks_and_their_refed_copies():
    model = _model(drop_path_rate=0.2)
    rates = {name: m.drop_prob for name, m in model.named_modules() if isinstance(m, DropPath)}
    assert rates and max(rates.values()) == pytest.approx(0.2)
    assert rates['refeed_block4.0.1.drop_path'] == rates['backbone.layer4.1.drop_path'] > 0
    assert not any(isinstance(m, DropPath) for m in _model().modules())


def test_timm_train_script_arguments_build_and_train_the_model():
    """The calls timm's train.py makes: create_model with its standard arguments (None ones dropped by timm),
    set_grad_checkpointing, create_optimizer_v2 with layer decay, one step."""
    model = timm.create_model(
        'hbfp_resnet18', pretrained=False, in_chans=3, num_classes=4, drop_rate=0.0, drop_path_rate=0.1,
        drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False,
        checkpoint_path='', **SMALL)
    model.set_grad_checkpointing(enable=True)
    optimizer = create_optimizer_v2(model, 'sgd', lr=0.01, weight_decay=2e-5, momentum=0.9, layer_decay=0.75)
    before = model.classifier.weight.clone()
    loss = F.cross_entropy(model.train()(_images(4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.classifier.weight)


# --- preprocessing --------------------------------------------------------------------------------

@pytest.mark.parametrize('width, height', [(200, 100), (90, 300)])
def test_timm_transform_from_the_model_config_equals_ours(width, height):
    """timm's standard inference pipeline (what validate.py and most downstream code use) gives the input the
    model was trained on: the whole crop stretched to 384x128, not an aspect-preserving centre crop."""
    model = timm.create_model('hbfp_resnet18', **SMALL)
    timm_transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    ours = build_test_transform(model.pretrained_cfg['input_size'][1:])
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    torch.testing.assert_close(timm_transform(image), ours(image), rtol=0, atol=1e-6)


# --- loading without the import ---------------------------------------------------------------------

def test_model_card_states_what_timm_says_without_the_import(tmp_path):
    """Nothing of hbfp_timm can run when timm reads a Hub or local repository without `import hbfp_timm`: timm
    looks up config.json's architecture and stops. The card's first lines say so, with timm's exact message."""
    import subprocess
    import sys

    from hbfp_timm.hub import save_pretrained
    save_pretrained(timm.create_model('hbfp_resnet18', **SMALL), tmp_path / 'repo')
    result = subprocess.run(
        [sys.executable, '-c', f"import timm; timm.create_model('local-dir:{tmp_path / 'repo'}', pretrained=True)"],
        capture_output=True, text=True)
    assert result.returncode != 0
    timm_message = result.stderr.strip().splitlines()[-1]
    assert timm_message == 'RuntimeError: Unknown model (hbfp_resnet18)'
    card = (tmp_path / 'repo' / 'README.md').read_text().split('---\n', 2)[2]
    notice = card.split('\n\n')[1]
    assert '`import hbfp_timm` before `timm.create_model`' in notice and f'`{timm_message}`' in notice
