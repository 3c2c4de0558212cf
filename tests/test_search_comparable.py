"""Which descriptors python -m hbfp_timm.search compares: query and gallery files made by different models,
weights (files, --untrained, their digest), --model-arg values, input sizes or flip settings are refused in one
line naming both files; and --same-person takes the threshold of the model that made them, only for its own
weights."""
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import save_file

from hbfp_timm.embed import main as embed_main
from hbfp_timm.search import main

from tiny_models import (  # noqa: F401  (single_thread is a fixture)
    SHIPPED_HOW, TINY_ARGS, single_thread, tiny_model, trained_like, write_embeddings, write_images, write_run,
)

pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.mark.parametrize('gallery_how, says', [
    ({**SHIPPED_HOW, 'model': 'runs/other'},
     'by runs/other at 128x64 without --flip, --query: .* by hbfp_mobilenetv2_100.cuhk03 at 128x64 without --flip; '
     '.* the same --model$'),
    ({**SHIPPED_HOW, 'img_size': '256x128'}, 'at 256x128 .* at 128x64 .* the same --img-size$'),
    ({**SHIPPED_HOW, 'flip': 'True'}, 'with --flip, --query: .* without --flip; .* the same --flip$'),
])
def test_descriptors_made_differently_are_refused_in_one_line_naming_both_files(tmp_path, capsys, gallery_how,
                                                                                says):
    query, gallery = write_embeddings(tmp_path, SHIPPED_HOW, gallery_how)
    assert main(['--query', query, '--gallery', gallery, '--output', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / 'o').exists()
    assert err.startswith(f'python -m hbfp_timm.search: error: --gallery: {gallery} was embedded ')
    assert f'--query: {query} ' in err and re.search(says, err.strip())


def test_the_same_model_named_two_ways_is_the_same_model(tmp_path, monkeypatch):
    (tmp_path / 'runs' / 'mine').mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    query, gallery = write_embeddings(tmp_path, {**SHIPPED_HOW, 'model': 'runs/mine'},
                                      {**SHIPPED_HOW, 'model': str(tmp_path / 'runs' / 'mine')})
    assert main(['--query', query, '--gallery', gallery, '--output', str(tmp_path / 'o'), '--num-pictures', '0']) == 0


def test_same_person_takes_the_threshold_of_the_model_that_made_the_descriptors(tmp_path, capsys):
    from hbfp_timm.metrics.verification import THRESHOLDS_NAME, save_thresholds
    run = tmp_path / 'mine'
    run.mkdir()
    save_thresholds(run / THRESHOLDS_NAME, {'metric': 'euclidean', 'img_size': [64, 32], 'flip': False,
                                            'thresholds': [{'fmr_target': 1e-3, 'threshold': 2.5}]})
    mine = {'model': str(run), 'img_size': '64x32', 'flip': 'False'}
    query, gallery = write_embeddings(tmp_path, mine, mine)
    out = tmp_path / 'o'
    assert main(['--query', query, '--gallery', gallery, '--output', str(out), '--same-person',
                 '--num-pictures', '0']) == 0
    assert json.loads((out / 'ranking.json').read_text())['threshold'] == 2.5
    assert 'threshold 2.5000' in capsys.readouterr().out
    # Not the shipped model's threshold when the files do not say which model made them: refused.
    query, gallery = write_embeddings(tmp_path, {}, {})
    assert main(['--query', query, '--gallery', gallery, '--output', str(out), '--same-person']) == 2
    assert capsys.readouterr().err.strip() == (
        f'python -m hbfp_timm.search: error: --same-person: --query {query} and --gallery {gallery} do not say which '
        'model made them; pass --model naming it, or --threshold')
    assert main(['--query', query, '--gallery', gallery, '--output', str(out), '--same-person', '--model', str(run),
                 '--num-pictures', '0']) == 0  # --model names it
    # --model naming another model than the files do, and descriptors of another input size than calibrated.
    query, gallery = write_embeddings(tmp_path, mine, mine)
    assert main(['--query', query, '--gallery', gallery, '--output', str(out), '--same-person',
                 '--model', 'hbfp_mobilenetv2_100.cuhk03']) == 2
    assert f'the descriptors were made by {run}, not --model hbfp_mobilenetv2_100.cuhk03' in capsys.readouterr().err
    small = {**SHIPPED_HOW, 'img_size': '64x32'}
    query, gallery = write_embeddings(tmp_path, small, small)
    assert main(['--query', query, '--gallery', gallery, '--output', str(out), '--same-person']) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert ('the thresholds of hbfp_mobilenetv2_100.cuhk03 were calibrated on descriptors made by '
            'hbfp_mobilenetv2_100.cuhk03 at 128x64 without --flip, these were made by hbfp_mobilenetv2_100.cuhk03 '
            'at 64x32 without --flip') in err


TINY = ['--model', 'hbfp_resnet18', *[f'--model-arg={key}={value}' for key, value in TINY_ARGS.items()],
        '--img-size', '64', '32', '--device', 'cpu', '--workers', '0']


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """Weights files of hbfp_resnet18: a, a copy of a elsewhere, and b (other weights); images to describe; and
    embeddings files of the images written by embed with a, with b, and without a weights file (untrained)."""
    folder = tmp_path_factory.mktemp('checkpoints')
    (folder / 'elsewhere').mkdir()
    save_file(trained_like(tiny_model(), seed=1).state_dict(), str(folder / 'a.safetensors'))
    shutil.copy(folder / 'a.safetensors', folder / 'elsewhere' / 'copy.safetensors')
    save_file(trained_like(tiny_model(), seed=2).state_dict(), str(folder / 'b.safetensors'))
    write_images(folder / 'photos', ['x.png', 'y.png'])
    for name, flags in (('a', ['--checkpoint', str(folder / 'a.safetensors')]),
                        ('b', ['--checkpoint', str(folder / 'b.safetensors')]), ('none', ['--untrained'])):
        assert embed_main([str(folder / 'photos'), '--output', str(folder / f'{name}.emb.safetensors'), *TINY,
                           *flags]) == 0
    return folder


def test_descriptors_of_one_registered_name_with_other_checkpoints_are_refused(checkpoints, tmp_path, capsys):
    a, b, none = (str(checkpoints / f'{name}.emb.safetensors') for name in ('a', 'b', 'none'))
    for query, gallery, says, flags in (
            (b, a, f"with --checkpoint {checkpoints / 'b.safetensors'}", '--checkpoint'),
            (none, a, 'with --untrained', '--checkpoint and --untrained')):
        assert main(['--query', query, '--gallery', gallery, '--output', str(tmp_path / 'o')]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and not (tmp_path / 'o').exists()
        assert err == (f'python -m hbfp_timm.search: error: --gallery: {gallery} was embedded by hbfp_resnet18 '
                       f"with --checkpoint {checkpoints / 'a.safetensors'} at 64x32 without --flip, --query: "
                       f'{query} by hbfp_resnet18 {says} at 64x32 without --flip; their distances cannot be '
                       f'compared: describe both with the same {flags}')
    # A side that search describes itself says which weights file described it too.
    common = ['--gallery', a, '--output', str(tmp_path / 'o'), '--num-pictures', '0', *TINY]
    assert main(['--query', str(checkpoints / 'photos'), *common, '--checkpoint',
                 str(checkpoints / 'b.safetensors')]) == 2
    assert f"--query: {checkpoints / 'photos'} by hbfp_resnet18 with --checkpoint {checkpoints / 'b.safetensors'}" \
        in capsys.readouterr().err
    # The same file by another path, or the same content in another file, is the same weights.
    assert main(['--query', str(checkpoints / 'photos'), *common, '--checkpoint',
                 str(checkpoints / 'elsewhere' / '..' / 'a.safetensors')]) == 0
    assert main(['--query', str(checkpoints / 'photos'), *common, '--checkpoint',
                 str(checkpoints / 'elsewhere' / 'copy.safetensors')]) == 0


LATER_KEYS = ('untrained', 'model_args', 'weights_sha256')  # recorded after checkpoint and checkpoint_sha256


def test_files_that_do_not_say_which_weights_file_are_compared_on_the_rest(checkpoints, tmp_path, capsys):
    from hbfp_timm.inference.embeddings import load_embeddings, save_embeddings
    embeddings = load_embeddings(checkpoints / 'a.emb.safetensors')
    a, b, none = (str(checkpoints / f'{name}.emb.safetensors') for name in ('a', 'b', 'none'))
    # Written before any of the weights were recorded: compared on the model, input size and flip.
    older = {key: value for key, value in embeddings.metadata.items()
             if not key.startswith('checkpoint') and key not in LATER_KEYS}
    save_embeddings(tmp_path / 'older.safetensors', embeddings._replace(metadata=older))
    for gallery in (b, none):
        assert main(['--query', str(tmp_path / 'older.safetensors'), '--gallery', gallery,
                     '--output', str(tmp_path / 'o'), '--num-pictures', '0']) == 0
    # Written when only the weights file was recorded: compared on it too, as then.
    older = {key: value for key, value in embeddings.metadata.items() if key not in LATER_KEYS}
    save_embeddings(tmp_path / 'older.safetensors', embeddings._replace(metadata=older))
    for gallery, status in ((a, 0), (b, 2), (none, 2)):
        assert main(['--query', str(tmp_path / 'older.safetensors'), '--gallery', gallery,
                     '--output', str(tmp_path / 'o'), '--num-pictures', '0']) == status
        assert capsys.readouterr().err.strip().endswith('' if status == 0 else
                                                        'describe both with the same --checkpoint')


def test_a_checkpoint_whose_content_changed_between_the_two_embeddings_is_refused(tmp_path, capsys):
    weights = {**SHIPPED_HOW, 'checkpoint': str(tmp_path / 'w.safetensors')}
    query, gallery = write_embeddings(tmp_path, {**weights, 'checkpoint_sha256': '1' * 64},
                                      {**weights, 'checkpoint_sha256': '2' * 64})
    assert main(['--query', query, '--gallery', gallery, '--output', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith('describe both with the same --checkpoint')
    assert f"with --checkpoint {tmp_path / 'w.safetensors'} (sha256 222222222222) at 128x64" in err
    assert f"with --checkpoint {tmp_path / 'w.safetensors'} (sha256 111111111111) at 128x64" in err


def test_same_person_does_not_take_the_thresholds_of_a_registered_name_for_a_checkpoint(checkpoints, tmp_path,
                                                                                         capsys):
    out = str(tmp_path / 'o')
    # The shipped model's name with another weights file: its stored thresholds are not these weights'.
    weights = {**SHIPPED_HOW, 'checkpoint': str(tmp_path / 'w.safetensors'), 'checkpoint_sha256': '1' * 64}
    query, gallery = write_embeddings(tmp_path, weights, weights)
    assert main(['--query', query, '--gallery', gallery, '--output', out, '--same-person']) == 2
    assert capsys.readouterr().err.strip() == (
        'python -m hbfp_timm.search: error: --same-person: the descriptors were made by hbfp_mobilenetv2_100.cuhk03 '
        f"with --checkpoint {tmp_path / 'w.safetensors'}, a weights file with no calibrated threshold stored with it "
        '(those of hbfp_mobilenetv2_100.cuhk03 are for its own weights); calibrate one with python -m '
        'hbfp_timm.evaluate --calibrate on labelled data and pass it as --threshold, or describe the images with '
        '--model naming the run or Hub folder of these weights')
    assert not (tmp_path / 'o').exists()
    # Files that do not say, with --checkpoint given; files that say none, with --checkpoint given.
    query, gallery = write_embeddings(tmp_path, SHIPPED_HOW, SHIPPED_HOW)
    assert main(['--query', query, '--gallery', gallery, '--output', out, '--same-person', '--checkpoint',
                 'w.safetensors']) == 2
    assert 'made by hbfp_mobilenetv2_100.cuhk03 with --checkpoint w.safetensors, a weights file with no ' in \
        capsys.readouterr().err
    query, gallery = write_embeddings(tmp_path, {**SHIPPED_HOW, 'checkpoint': ''}, {**SHIPPED_HOW, 'checkpoint': ''})
    assert main(['--query', query, '--gallery', gallery, '--output', out, '--same-person', '--checkpoint',
                 'w.safetensors']) == 2
    assert capsys.readouterr().err.strip().endswith(
        'the descriptors were made by hbfp_mobilenetv2_100.cuhk03 without --checkpoint, not with --checkpoint '
        'w.safetensors; leave --checkpoint out to use the thresholds of the weights that made them')
    assert main(['--query', query, '--gallery', gallery, '--output', out, '--same-person', '--num-pictures', '0']) == 0
    assert json.loads((tmp_path / 'o' / 'ranking.json').read_text())['threshold'] > 0  # the shipped model's
    # Real files embedded with a checkpoint, and a side that search describes itself with one.
    a = str(checkpoints / 'a.emb.safetensors')
    for query in (a, str(checkpoints / 'photos')):
        assert main(['--query', query, '--gallery', a, '--output', out, '--same-person', *TINY,
                     '--checkpoint', str(checkpoints / 'a.safetensors')]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"made by hbfp_resnet18 with --checkpoint {checkpoints / 'a.safetensors'}, a weights file with no" in err


def test_same_person_takes_the_thresholds_of_a_run_folder_that_embed_named(tmp_path, capsys):
    from hbfp_timm.metrics.verification import THRESHOLDS_NAME, save_thresholds
    run = write_run(tmp_path / 'run', tiny_model())
    save_thresholds(run / THRESHOLDS_NAME, {'metric': 'euclidean', 'img_size': [64, 32], 'flip': False,
                                            'thresholds': [{'fmr_target': 1e-3, 'threshold': 2.5}]})
    write_images(tmp_path / 'photos', ['x.png', 'y.png'])
    assert embed_main([str(tmp_path / 'photos'), '--model', str(run), '--output', str(tmp_path / 'e.safetensors'),
                       '--device', 'cpu', '--workers', '0']) == 0
    assert main(['--query', str(tmp_path / 'e.safetensors'), '--gallery', str(tmp_path / 'e.safetensors'),
                 '--output', str(tmp_path / 'o'), '--same-person', '--num-pictures', '0']) == 0
    assert json.loads((tmp_path / 'o' / 'ranking.json').read_text())['threshold'] == 2.5


def _digest(path) -> str:
    from hbfp_timm.inference.embeddings import load_embeddings
    return load_embeddings(path).metadata['weights_sha256'][:12]


def test_untrained_descriptors_compare_only_with_the_same_random_weights(checkpoints, tmp_path, capsys):
    none, photos, again = (checkpoints / 'none.emb.safetensors', checkpoints / 'photos',
                           tmp_path / 'again.safetensors')
    common = ['--output', str(tmp_path / 'o'), '--num-pictures', '0']
    # Another run of embed --untrained draws other random weights: the same flags, other weights. (Each process
    # starts from another random state; in this one, seeds stand for that.)
    torch.manual_seed(1)
    assert embed_main([str(photos), '--output', str(again), *TINY, '--untrained']) == 0
    assert main(['--query', str(again), '--gallery', str(none), *common]) == 2
    assert capsys.readouterr().err.strip() == (
        f'python -m hbfp_timm.search: error: --gallery: {none} was embedded by hbfp_resnet18 with --untrained '
        f'(weights sha256 {_digest(none)}) at 64x32 without --flip, --query: {again} by hbfp_resnet18 with '
        f'--untrained (weights sha256 {_digest(again)}) at 64x32 without --flip; their distances cannot be compared: '
        '--untrained draws new random weights on each run: describe query and gallery from their images in one run '
        'of search')
    torch.manual_seed(2)
    assert main(['--query', str(photos), '--gallery', str(none), *common, *TINY, '--untrained']) == 2
    assert '--untrained draws new random weights on each run' in capsys.readouterr().err
    # Both sides described in one run of search: the same random weights.
    assert main(['--query', str(photos), '--gallery', str(photos), *common, *TINY, '--untrained']) == 0
    # Two runs seeded alike draw the same weights: the same digest.
    for name in ('s1', 's2'):
        torch.manual_seed(7)
        assert embed_main([str(photos), '--output', str(tmp_path / f'{name}.safetensors'), *TINY, '--untrained']) == 0
    assert main(['--query', str(tmp_path / 's1.safetensors'), '--gallery', str(tmp_path / 's2.safetensors'),
                 *common]) == 0


def test_weights_changed_under_one_name_are_refused_and_the_same_weights_from_two_files_are_the_same(
        checkpoints, tmp_path, capsys):
    photos, before, after = checkpoints / 'photos', tmp_path / 'before.safetensors', tmp_path / 'after.safetensors'
    run = write_run(tmp_path / 'run', tiny_model())
    common = ['--device', 'cpu', '--workers', '0']
    assert embed_main([str(photos), '--model', str(run), '--output', str(before), *common]) == 0
    write_run(run, trained_like(tiny_model(), seed=5))  # the run folder trained again
    assert embed_main([str(photos), '--model', str(run), '--output', str(after), *common]) == 0
    assert main(['--query', str(after), '--gallery', str(before), '--output', str(tmp_path / 'o')]) == 2
    assert capsys.readouterr().err.strip() == (
        f'python -m hbfp_timm.search: error: --gallery: {before} was embedded by {run} (weights sha256 '
        f'{_digest(before)}) at 64x32 without --flip, --query: {after} by {run} (weights sha256 {_digest(after)}) at '
        f'64x32 without --flip; their distances cannot be compared: the weights of {run} changed between the two '
        '(trained again, or another version): embed both again with the same weights')
    # The weights of a.safetensors saved as a .pt file: another file, the same weights.
    torch.save(trained_like(tiny_model(), seed=1).state_dict(), tmp_path / 'a.pt')
    assert main(['--query', str(photos), '--gallery', str(checkpoints / 'a.emb.safetensors'), '--output',
                 str(tmp_path / 'o'), '--num-pictures', '0', *TINY, '--checkpoint', str(tmp_path / 'a.pt')]) == 0


def test_other_model_args_are_another_model_in_any_order(checkpoints, tmp_path, capsys):
    a, photos = checkpoints / 'a.emb.safetensors', checkpoints / 'photos'
    common = ['--gallery', str(a), '--output', str(tmp_path / 'o'), '--num-pictures', '0', '--model', 'hbfp_resnet18',
              '--img-size', '64', '32', '--device', 'cpu', '--workers', '0', '--checkpoint',
              str(checkpoints / 'a.safetensors')]
    tiny = [f'--model-arg={key}={value}' for key, value in TINY_ARGS.items()]
    # The same weights pooled otherwise: the weights' digest is the same, the descriptors are not.
    assert main(['--query', str(photos), *common, *tiny, '--model-arg', 'gep_combine=sum']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith('; their distances cannot be compared: describe both with '
                                                       'the same --model-arg')
    assert (f"was embedded by hbfp_resnet18 with --checkpoint {checkpoints / 'a.safetensors'} with --model-arg "
            'correlation_dim=8 --model-arg perception_dim=16 at 64x32 without --flip, --query: ') in err
    assert ("with --model-arg correlation_dim=8 --model-arg gep_combine='sum' --model-arg perception_dim=16 at "
            '64x32 without --flip;') in err
    assert main(['--query', str(photos), *common, *reversed(tiny)]) == 0


@pytest.fixture(scope='module')
def shipped(tmp_path_factory):
    """Embeddings files of images by the shipped model's name: with its weights (own), with --untrained, and with
    its weights pooled otherwise (--model-arg gep_combine=sum)."""
    folder = tmp_path_factory.mktemp('shipped')
    write_images(folder / 'photos', ['x.png', 'y.png'])
    for name, flags in (('own', []), ('untrained', ['--untrained']), ('sum', ['--model-arg', 'gep_combine=sum'])):
        assert embed_main([str(folder / 'photos'), '--output', str(folder / f'{name}.safetensors'), '--model',
                           SHIPPED_HOW['model'], '--device', 'cpu', '--workers', '0', *flags]) == 0
    return folder


def test_the_shipped_name_untrained_or_with_model_args_is_another_model(shipped, tmp_path, capsys):
    own = shipped / 'own.safetensors'
    for name, says, flag in (('untrained', 'with --untrained', '--untrained'),
                             ('sum', "with --model-arg gep_combine='sum'", '--model-arg')):
        query = shipped / f'{name}.safetensors'
        assert main(['--query', str(query), '--gallery', str(own), '--output', str(tmp_path / 'o')]) == 2
        assert capsys.readouterr().err.strip() == (
            f'python -m hbfp_timm.search: error: --gallery: {own} was embedded by {SHIPPED_HOW["model"]} without '
            f'{flag} at 128x64 without --flip, --query: {query} by {SHIPPED_HOW["model"]} {says} at 128x64 '
            'without --flip; '
            f'their distances cannot be compared: describe both with the same {flag}')


def test_same_person_does_not_take_the_thresholds_of_a_registered_name_untrained_or_with_model_args(
        shipped, tmp_path, capsys):
    model = SHIPPED_HOW['model']
    out = ['--output', str(tmp_path / 'o'), '--num-pictures', '0', '--same-person']
    untrained = (f'python -m hbfp_timm.search: error: --same-person: the descriptors were made by {model} with '
                 f'--untrained, random weights that no calibrated threshold holds for (those of {model} are for its '
                 'own weights); describe the images without --untrained, or pass --threshold')
    model_arg = (f"python -m hbfp_timm.search: error: --same-person: the descriptors were made by {model} with "
                 f"--model-arg gep_combine='sum', another model than the one its thresholds were calibrated for "
                 f'(those of {model} are for its own weights, built without --model-arg); describe the images '
                 'without --model-arg, or calibrate one with python -m hbfp_timm.evaluate --calibrate with the same '
                 '--model-arg on labelled data and pass it as --threshold')
    own = str(shipped / 'own.safetensors')
    assert main(['--query', own, '--gallery', own, *out]) == 0  # its own weights: its thresholds
    assert json.loads((tmp_path / 'o' / 'ranking.json').read_text())['threshold'] > 0
    for name, message in (('untrained', untrained), ('sum', model_arg)):
        file = str(shipped / f'{name}.safetensors')
        assert main(['--query', file, '--gallery', file, *out]) == 2
        assert capsys.readouterr().err.strip() == message
    # A side that search describes itself with the flag.
    photos = str(shipped / 'photos')
    common = ['--model', model, '--device', 'cpu', '--workers', '0']
    assert main(['--query', photos, '--gallery', own, *out, *common, '--model-arg', 'gep_combine=sum']) == 2
    assert 'describe both with the same --model-arg' in capsys.readouterr().err
    assert main(['--query', photos, '--gallery', photos, *out, *common, '--untrained']) == 2
    assert capsys.readouterr().err.strip() == untrained
    # Files that do not say, with the flag given; files that say neither was given, with it given.
    for how in (SHIPPED_HOW, {**SHIPPED_HOW, 'checkpoint': '', 'untrained': 'False', 'model_args': ''}):
        query, gallery = write_embeddings(tmp_path, how, how)
        for flags, message in ((['--untrained'], untrained), (['--model-arg', 'gep_combine=sum'], model_arg)):
            assert main(['--query', query, '--gallery', gallery, *out, *flags]) == 2
            err = capsys.readouterr().err.strip()
            if how is SHIPPED_HOW:
                assert err == message
            else:
                flag = flags[0]
                given = "--model-arg gep_combine='sum'" if flag == '--model-arg' else flag
                assert err.endswith(f'--same-person: the descriptors were made by {model} without {flag}, not with '
                                    f'{given}; leave {flag} out to use the thresholds of the '
                                    f"{'weights' if flag == '--untrained' else 'model'} that made them")
