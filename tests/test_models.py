"""HBFPNet as a timm model: the conformance checks of timm's tests/test_models.py, the paper's
architecture numbers, ablation configurations and input errors."""
import tomllib
from pathlib import Path

import pytest
import timm
import torch

import hbfp_timm
from hbfp_timm import HBFPNet
from hbfp_timm.models import BOT_ARGS
from hbfp_timm.models.registry import BUNDLED_WEIGHTS

VARIANTS = ['hbfp_resnet50', 'hbfp_resnet101', 'hbfp_resnet18', 'hbfp_convnext_tiny',
            'hbfp_efficientnet_b0', 'hbfp_mobilenetv2_100']


def test_import_registers_every_variant_with_timm():
    registered = timm.list_models('hbfp_*')
    assert sorted(registered) == sorted(VARIANTS)


@pytest.mark.parametrize('name', VARIANTS)
def test_model_forward(name):
    """timm test_model_forward: default cfg input, eval mode, batch 1, no NaNs."""
    model = timm.create_model(name, pretrained=False).eval()
    inputs = torch.randn(1, *model.pretrained_cfg['input_size'])
    with torch.no_grad():
        outputs = model(inputs)
    assert outputs.shape == (1, model.num_features)
    assert not torch.isnan(outputs).any()


@pytest.mark.parametrize('name', VARIANTS)
def test_model_backward(name):
    """timm test_model_backward: every parameter receives a gradient, logits have num_classes."""
    model = timm.create_model(name, pretrained=False, num_classes=42).train()
    outputs = model(torch.randn(2, 3, 128, 128))
    outputs.mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f'No gradient for {param_name}'
    assert outputs.shape == (2, 42)
    assert not torch.isnan(outputs).any()


@pytest.mark.parametrize('name', VARIANTS)
def test_model_default_cfgs(name):
    """timm test_model_default_cfgs: unpooled forward_features at pool_size, pooled/unpooled heads,
    classifier and first_conv naming real parameters."""
    model = timm.create_model(name, pretrained=False).eval()
    cfg = model.pretrained_cfg
    state_dict = model.state_dict()
    x = torch.randn(1, *cfg['input_size'])
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (1, model.num_features, *cfg['pool_size'])
        assert model.forward_head(features, pre_logits=True).shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(0, '')
        assert model(x).shape == (1, model.num_features, *cfg['pool_size'])
    # The paper's 384x128, except where the default tag is shipped weights trained at another size.
    trained_at = {tag.split('.')[0]: timm.models.get_pretrained_cfg(tag).input_size for tag in BUNDLED_WEIGHTS}
    assert cfg['num_classes'] == 0 and cfg['input_size'] == trained_at.get(name, (3, 384, 128))
    assert cfg['classifier'] + '.weight' in timm.create_model(name, num_classes=3).state_dict()
    assert cfg['first_conv'] + '.weight' in state_dict


def test_resnet50_matches_the_paper_budget():
    """docs/design.md, "Architecture": 24x8 maps of 1024/1024/2048 channels, 4096-d descriptor, about 68M parameters."""
    model = timm.create_model('hbfp_resnet50').eval()
    x = torch.randn(1, 3, 384, 128)
    with torch.no_grad():
        levels = model.forward_levels(x)
    assert [tuple(level.shape[1:]) for level in levels] == [(1024, 24, 8), (1024, 24, 8), (2048, 24, 8)]
    assert model.num_features == 4096
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    bfp = count(model.bfp_low_mid) + count(model.bfp_mid_high)
    refeed = count(model.refeed_block3) + count(model.refeed_block4)
    assert 23.0e6 < count(model.backbone) < 24.0e6
    assert 23.0e6 < bfp < 24.2e6
    assert 20.0e6 < refeed < 21.0e6
    assert 67e6 < count(model) < 69e6
    # res_conv4_1 cut: the stem ends in layer3[0]; layer4 keeps stride 1 without dilation.
    assert model.cuts.stem[-1] == 'layer3.0' and model.cuts.block4 == ('layer4',)
    assert model.backbone.layer4[0].conv2.stride == (1, 1) and model.backbone.layer4[0].conv2.dilation == (1, 1)


def test_bot_args_build_bots_resnet50():
    """BoT (Luo et al. 2019): ResNet-50 with last stride 1, average pooling, BatchNorm neck; nothing of HBFP."""
    bot = timm.create_model('hbfp_resnet50', **BOT_ARGS).eval()
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(bot) == count(timm.create_model('resnet50', num_classes=0)) + count(bot.neck)
    assert not [name for name, _ in bot.named_modules() if 'bfp' in name or 'refeed' in name]
    with torch.no_grad():
        assert bot(torch.randn(1, 3, 64, 32)).shape == (1, 2048)
        assert bot.forward_levels(torch.randn(1, 3, 64, 32))[-1].shape[-2:] == (4, 2)  # stride 16: last stride 1


def test_refeed_blocks_are_copies_initialised_from_the_backbone():
    model = HBFPNet(backbone='resnet18', correlation_dim=8, perception_dim=16)
    first_pass = model.backbone.layer4.state_dict()
    copy = model.refeed_block4[0].state_dict()
    assert first_pass.keys() == copy.keys()
    assert all(torch.equal(first_pass[k], copy[k]) for k in first_pass)
    assert model.refeed_block4[0][0].conv1.weight.data_ptr() != model.backbone.layer4[0].conv1.weight.data_ptr()


def test_forward_branches_agrees_with_forward():
    """The descriptor is the concatenated neck features; the logits are the sum of branch logits."""
    model = HBFPNet(backbone='resnet18', num_classes=5, correlation_dim=8, perception_dim=16).eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        branches = model.forward_branches(x)
        logits = model(x)
        descriptor = model.forward_head(model.forward_features(x), pre_logits=True)
    assert [f.shape[1] for f in branches.neck] == [256, 256, 512]
    torch.testing.assert_close(torch.cat(branches.neck, dim=1), descriptor)
    torch.testing.assert_close(sum(branches.logits), logits)
    model.reset_classifier(0)
    assert model.forward_branches(x).logits is None


def test_initial_augmented_maps_equal_the_backbone_maps():
    """residual=True with zero-initialised last BN: A_L = X, A_M = Y, A_H = Z + block4'(block3'(X) + Y)."""
    model = HBFPNet(backbone='resnet18', correlation_dim=8, perception_dim=16).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        low_aug, mid_aug, high_aug = model.forward_levels(x)
        low = model.backbone.layer3[0](model.backbone.layer2(model.backbone.layer1(model.backbone.maxpool(
            model.backbone.act1(model.backbone.bn1(model.backbone.conv1(x)))))))
        mid = model.backbone.layer3[1](low)
        high = model.backbone.layer4(mid)
        refed = model.refeed_block4(model.refeed_block3(low) + mid)
    torch.testing.assert_close(low_aug, low)
    torch.testing.assert_close(mid_aug, mid)
    torch.testing.assert_close(high_aug, refed + high)


@pytest.mark.parametrize('kwargs, channels', [
    (dict(branches=('high',), bfp_pairs=(), hierarchical=False, global_pool='avg'), [512]),  # Baseline
    (dict(branches=('mid', 'high'), bfp_pairs=(), hierarchical=False), [256, 512]),  # Middle+High(Res)
    (dict(bfp_pairs=('mid_high',), hierarchical=False), [256, 256, 512]),  # Low+BFP(Middle&High)
    (dict(hierarchical=True, share_blocks=True), [256, 256, 512]),
    (dict(residual=False, gep_learnable=True, descriptor='pooled'), [256, 256, 512]),
])
def test_ablation_configurations_train(kwargs, channels):
    model = HBFPNet(backbone='resnet18', num_classes=4, correlation_dim=8, perception_dim=16, **kwargs).train()
    outputs = model.forward_branches(torch.randn(2, 3, 64, 32))
    assert [f.shape[1] for f in outputs.pooled] == channels
    sum(logit.sum() for logit in outputs.logits).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'parameters without gradient: {missing}'
    if not kwargs.get('hierarchical', True):
        assert model.refeed_block3 is None and model.refeed_block4 is None
    if kwargs.get('share_blocks'):  # the re-feed runs the backbone's own block3/block4, no copies
        assert model.refeed_block3[0] is model.backbone.layer3[1] and model.refeed_block4[0] is model.backbone.layer4
        assert not any(name.startswith('refeed_') for name in model.state_dict())


def test_train_mode_backward_reaches_every_parameter_on_a_non_resnet_backbone():
    model = timm.create_model('hbfp_mobilenetv2_100', num_classes=3).train()
    outputs = model.forward_branches(torch.randn(2, 3, 64, 32))
    (sum(f.sum() for f in outputs.pooled) + sum(logit.sum() for logit in outputs.logits)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_any_timm_backbone_through_hbfpnet():
    model = HBFPNet(backbone='regnety_008', correlation_dim=8, perception_dim=16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 32))
    assert out.shape == (1, 320 + 320 + 768)


@pytest.mark.parametrize('backbone', ['res2net50_14w_8s', 'resnetblur18'])
def test_resnet_downsamplers_other_than_convolutions_lose_the_last_stride(backbone):
    """Res2Net pools its first split with a padded 3x3 window and resnetblur downsamples with a blur pool: both
    become stride 1 with the convolutions, so the three maps of a 64x32 input are 4x2 (stride 16)."""
    model = HBFPNet(backbone=backbone, correlation_dim=8, perception_dim=16).eval()
    assert model.reduction == 16
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 64, 32), indices=3, intermediates_only=True)
    assert [tuple(m.shape[2:]) for m in maps] == [(4, 2)] * 3


def test_a_backbone_whose_last_stride_cannot_be_removed_is_one_line_saying_why(monkeypatch):
    # vgg11 refuses output_stride with an AssertionError that has no message.
    with pytest.raises(ValueError, match=r"^backbone: timm model 'vgg11' cannot be built with \{'output_stride': 16\} "
                                         r"\(AssertionError\); HBFP-Net removes the last stride .* output_stride=16"):
        HBFPNet(backbone='vgg11')
    # A downsampler the stride removal would not know: the probe forward fails, said as one backbone: line.
    from hbfp_timm.models import backbone as backbone_module

    def conv_only(model):
        model.layer4[0].conv1.stride = (1, 1)  # the shortcut keeps stride 2: the residual sum cannot be formed
    monkeypatch.setattr(backbone_module, '_remove_resnet_last_stride', conv_only)
    with pytest.raises(ValueError, match=r"^backbone: ResNet fails in 'layer4' on a 64x64 probe input once its last "
                                         r'stride is removed \(RuntimeError: '):
        HBFPNet(backbone='resnet18')


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="backbone: unknown timm model name 'resnet_does_not_exist'"):
        HBFPNet(backbone='resnet_does_not_exist')


def test_wrong_channel_count_is_a_clear_error():
    model = timm.create_model('hbfp_resnet18').eval()
    with pytest.raises(ValueError, match=r'x: expected a \(B, 3, H, W\) image batch, got shape \(1, 1, 64, 32\)'):
        model(torch.randn(1, 1, 64, 32))


def test_input_too_small_for_the_stage_cuts_is_a_clear_error():
    model = timm.create_model('hbfp_resnet18').eval()
    with pytest.raises(ValueError, match='too small for the backbone cuts.*at least 16x16'):
        model(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize('kwargs, arg', [
    (dict(branches=('low', 'top')), 'branches'),
    (dict(branches=()), 'branches'),
    (dict(bfp_pairs=('low_high',)), 'bfp_pairs'),
    (dict(global_pool='gem'), 'global_pool'),
    (dict(descriptor='logits'), 'descriptor'),
    (dict(correlation_dim=-5), 'correlation_dim'),
    (dict(perception_dim=0), 'perception_dim'),
    (dict(in_chans=0), 'in_chans'),
    (dict(num_classes=-1), 'num_classes'),
    (dict(drop_rate=1.0), 'drop_rate'),
    (dict(drop_path_rate=-0.1), 'drop_path_rate'),
    (dict(gep_lambdas='abc'), 'gep_lambdas'),
    (dict(gep_lambdas=(0.5, 2)), 'gep_lambdas'),
    (dict(gep_lambdas=()), 'gep_lambdas'),
    (dict(gep_combine='median'), 'gep_combine'),
])
def test_bad_configuration_names_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=f'^{arg}:'):
        HBFPNet(**dict(dict(backbone='resnet18', correlation_dim=8, perception_dim=16), **kwargs))


def test_bad_size_through_timm_create_model_names_the_argument():
    """What `--model-arg correlation_dim=-5` reaches: timm.create_model's keyword arguments."""
    with pytest.raises(ValueError, match=r'^correlation_dim: expected a positive integer, got -5$'):
        timm.create_model('hbfp_resnet18', correlation_dim=-5)


@pytest.mark.parametrize('make_input, message', [
    (lambda: torch.zeros(2, 3, 64, 32, dtype=torch.uint8),
     r'^x: expected a floating-point image batch .* got dtype torch.uint8'),
    (lambda: torch.zeros(2, 3, 64, 32, dtype=torch.float64),
     r'^x: expected dtype torch.float32 \(the model\'s parameters\), got torch.float64'),
    (lambda: torch.zeros(0, 3, 64, 32), r'^x: empty batch \(0, 3, 64, 32\); expected at least one image'),
    (lambda: [[0.0]], r'^x: expected an image batch tensor \(B, 3, H, W\), got list'),
])
def test_bad_input_batch_names_x_and_what_was_expected(make_input, message):
    model = HBFPNet(backbone='resnet18', correlation_dim=8, perception_dim=16).eval()
    with pytest.raises(ValueError, match=message):
        model(make_input())


def test_input_dtype_follows_the_model_and_autocast():
    model = HBFPNet(backbone='resnet18', correlation_dim=8, perception_dim=16).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert model(x.half()).shape == (2, model.num_features)  # autocast casts half inputs...
        with pytest.raises(ValueError, match=r'^x: expected dtype torch.float32'):
            model(x.double())  # ... but never float64
    with torch.no_grad():
        assert model.double()(x.double()).dtype == torch.float64


def test_single_image_training_batch_is_a_clear_error():
    model = HBFPNet(backbone='resnet18', correlation_dim=8, perception_dim=16).train()
    with pytest.raises(ValueError, match=r'^x: a training batch needs at least 2 images .* got 1; use model.eval\(\)'):
        model(torch.randn(1, 3, 64, 32))


def test_single_image_training_batch_gives_the_maps_which_need_no_neck():
    """forward_features and forward_intermediates stop before the BatchNorm neck: one image is a batch for them
    (the backbone's and BFP's BatchNorm2d normalise over its positions), as for timm's own CNNs."""
    model = HBFPNet(backbone='resnet18', correlation_dim=8, perception_dim=16).train()
    x = torch.randn(1, 3, 64, 32)
    features = model.forward_features(x)
    final, maps = model.forward_intermediates(x)
    assert features.shape == (1, model.num_features, 4, 2)
    torch.testing.assert_close(final, features, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(maps[-3:], dim=1), features, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r'^x: a training batch needs at least 2 images'):
        model.forward_branches(x)


def test_pretrained_backbone_loads_a_local_weights_file(tmp_path):
    """pretrained_backbone through timm's own loader, with a local file standing in for the Hub."""
    from safetensors.torch import save_file
    source = timm.create_model('resnet18')
    weights = tmp_path / 'resnet18.safetensors'
    save_file(source.state_dict(), str(weights))
    model = timm.create_model('hbfp_resnet18', backbone_weights=str(weights))
    assert torch.equal(model.backbone.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert torch.equal(model.refeed_block4[0][0].conv1.weight, source.layer4[0].conv1.weight)


@pytest.mark.parametrize('name', ['resnet18', 'mobilenetv2_100'])
def test_headless_backbone_weights_load_and_the_unused_head_is_ignored(tmp_path, name):
    """A feature-extractor checkpoint saved without its classifier (num_classes=0) fits: HBFP drops the head."""
    from safetensors.torch import save_file
    source = timm.create_model(name, num_classes=0)
    weights = tmp_path / 'headless.safetensors'
    save_file(source.state_dict(), str(weights))
    model = hbfp_timm.HBFPNet(name, correlation_dim=8, perception_dim=16, backbone_weights=str(weights))
    for key, value in model.backbone.state_dict().items():
        if key in source.state_dict():
            assert torch.equal(value, source.state_dict()[key]), key
    first_block4 = model._cuts.block4[0]
    torch.testing.assert_close(model.refeed_block4[0].state_dict(), source.get_submodule(first_block4).state_dict())


def test_backbone_weights_problems_name_the_file(tmp_path):
    from safetensors.torch import save_file
    missing = tmp_path / 'missing.safetensors'
    with pytest.raises(FileNotFoundError, match=f'^backbone_weights: file {missing} does not exist'):
        hbfp_timm.HBFPNet('resnet18', correlation_dim=8, perception_dim=16, backbone_weights=str(missing))
    garbage = tmp_path / 'garbage.safetensors'
    garbage.write_bytes(b'not a weights file')
    with pytest.raises(ValueError, match=f'^backbone_weights: cannot read {garbage}'):
        hbfp_timm.HBFPNet('resnet18', correlation_dim=8, perception_dim=16, backbone_weights=str(garbage))
    state = timm.create_model('resnet18').state_dict()
    del state['layer3.0.conv1.weight']
    partial = tmp_path / 'partial.safetensors'
    save_file(state, str(partial))
    with pytest.raises(ValueError, match=r'does not fit backbone ResNet \(missing: layer3.0.conv1.weight\)'):
        hbfp_timm.HBFPNet('resnet18', correlation_dim=8, perception_dim=16, backbone_weights=str(partial))


def test_the_version_is_the_one_the_package_is_built_with():
    project = tomllib.loads((Path(__file__).parents[1] / 'pyproject.toml').read_text(encoding='utf-8'))['project']
    assert hbfp_timm.__version__ == project['version']
