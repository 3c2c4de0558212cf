"""python -m hbfp_timm.embed: folders, lists and names in, descriptors with paths (and identities) out."""
import functools
import hashlib
import re

import pytest
import torch
from safetensors.torch import save_file

from hbfp_timm import FeatureExtractor
from hbfp_timm.data.lists import collect_images
from hbfp_timm.embed import main
from hbfp_timm.inference import extractor as extractor_module
from hbfp_timm.inference.embeddings import Embeddings, load_embeddings, save_embeddings, weights_sha256
from hbfp_timm.utils.progress import progress

from tiny_models import TINY_ARGS, single_thread, tiny_model, trained_like, write_images, write_run  # noqa: F401

pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp('run'), tiny_model())


def test_a_folder_is_embedded_recursively_in_sorted_order(run, tmp_path, capsys):
    paths = write_images(tmp_path / 'photos', ['b.jpg', 'a.png', 'sub/c.jpeg', 'sub/deeper/d.bmp'])
    (tmp_path / 'photos' / 'notes.txt').write_text('not an image')
    with pytest.warns(UserWarning, match=r'photos: not read: 1 file without the extension of an image format '
                                         r'Pillow decodes \(notes\.txt\)$'):
        assert main([str(tmp_path / 'photos'), '--model', str(run), '--output', str(tmp_path / 'f.safetensors'),
                     '--device', 'cpu', '--workers', '0', '--batch-size', '3']) == 0
    assert '4 images -> 1024-d descriptors' in capsys.readouterr().out
    embeddings = load_embeddings(tmp_path / 'f.safetensors')
    expected_paths = sorted(str(p) for p in paths)
    assert embeddings.paths == expected_paths
    assert embeddings.pids is None and embeddings.camids is None  # free names: identities unknown
    expected = FeatureExtractor(run, device='cpu')(expected_paths)
    torch.testing.assert_close(embeddings.features, expected, rtol=1e-4, atol=1e-5)
    assert embeddings.metadata['img_size'] == '64x32' and embeddings.metadata['model'] == str(run)


def test_a_log_gets_a_progress_line_of_long_work(run, tmp_path, monkeypatch, capsys):
    """Progress was shown on a terminal only: embedding a large folder in a batch job (stderr to a log file)
    printed nothing for hours. A log gets whole lines, one a minute (here: with no wait)."""
    write_images(tmp_path / 'photos', [f'{i}.png' for i in range(4)])
    monkeypatch.setattr(extractor_module, 'progress', functools.partial(progress, interval=0))
    assert main([str(tmp_path / 'photos'), '--model', str(run), '--output', str(tmp_path / 'f.safetensors'),
                 '--device', 'cpu', '--workers', '0', '--batch-size', '2']) == 0
    err = capsys.readouterr().err  # not a terminal
    assert '\r' not in err and [line.split()[:3] for line in err.splitlines()] == [
        ['images:', '50%', '1/2'], ['images:', '100%', '2/2']]


def test_the_checkpoint_given_with_a_registered_name_is_recorded_by_its_absolute_path_and_content(
        run, tmp_path, monkeypatch):
    (tmp_path / 'weights').mkdir()
    save_file(trained_like(tiny_model(), seed=1).state_dict(), str(tmp_path / 'weights' / 'w.safetensors'))
    write_images(tmp_path / 'photos', ['a.png'])
    monkeypatch.chdir(tmp_path / 'photos')  # the checkpoint given by a relative path
    common = ['--device', 'cpu', '--workers', '0', '--img-size', '64', '32']
    assert main(['.', '--model', 'hbfp_resnet18', '--checkpoint', '../weights/w.safetensors', '--output',
                 str(tmp_path / 'c.safetensors'), *common,
                 *[f'--model-arg={key}={value}' for key, value in TINY_ARGS.items()]]) == 0
    metadata = load_embeddings(tmp_path / 'c.safetensors').metadata
    assert metadata['model'] == 'hbfp_resnet18' and metadata['img_size'] == '64x32'
    assert metadata['checkpoint'] == str((tmp_path / 'weights' / 'w.safetensors').resolve())
    assert metadata['checkpoint_sha256'] == hashlib.sha256((tmp_path / 'weights' / 'w.safetensors').read_bytes()
                                                           ).hexdigest()
    # Without a weights file the metadata say so (empty), rather than nothing as in older files.
    assert main(['.', '--model', str(run), '--output', str(tmp_path / 'r.safetensors'), *common]) == 0
    metadata = load_embeddings(tmp_path / 'r.safetensors').metadata
    assert metadata['checkpoint'] == '' and 'checkpoint_sha256' not in metadata


def test_untrained_model_args_and_the_digest_of_the_weights_are_recorded(run, tmp_path):
    """--untrained and the --model-arg values (sorted: the same arguments in another order read the same), and
    the SHA-256 of the weights as loaded: that of the checkpoint's tensors, another one on each --untrained run."""
    save_file(trained_like(tiny_model(), seed=1).state_dict(), str(tmp_path / 'w.safetensors'))
    write_images(tmp_path / 'photos', ['a.png'])
    common = ['--device', 'cpu', '--workers', '0', '--img-size', '64', '32', '--model', 'hbfp_resnet18']
    reversed_args = [f'--model-arg={key}={value}' for key, value in reversed(TINY_ARGS.items())]
    for name, flags in (('c', ['--checkpoint', str(tmp_path / 'w.safetensors')]), ('u1', ['--untrained']),
                        ('u2', ['--untrained'])):
        assert main([str(tmp_path / 'photos'), '--output', str(tmp_path / f'{name}.safetensors'), *common,
                     *reversed_args, *flags]) == 0
    c, u1, u2 = (load_embeddings(tmp_path / f'{name}.safetensors').metadata for name in ('c', 'u1', 'u2'))
    assert c['untrained'] == 'False' and u1['untrained'] == u2['untrained'] == 'True'
    assert c['model_args'] == u1['model_args'] == "{'correlation_dim': 8, 'perception_dim': 16}"
    assert c['weights_sha256'] == weights_sha256(trained_like(tiny_model(), seed=1))
    assert re.fullmatch('[0-9a-f]{64}', u1['weights_sha256']) and u1['weights_sha256'] != u2['weights_sha256']
    # A run folder brings its own weights and arguments: none given, its weights' digest.
    assert main([str(tmp_path / 'photos'), '--model', str(run), '--output', str(tmp_path / 'r.safetensors'),
                 '--device', 'cpu', '--workers', '0']) == 0
    metadata = load_embeddings(tmp_path / 'r.safetensors').metadata
    assert metadata['untrained'] == 'False' and metadata['model_args'] == ''
    assert metadata['weights_sha256'] == weights_sha256(tiny_model())


def test_the_digest_of_the_weights_depends_on_every_value_name_and_shape():
    digest = weights_sha256(tiny_model())
    assert weights_sha256(tiny_model()) == digest  # the same weights in another module
    other = tiny_model()
    with torch.no_grad():
        next(iter(other.parameters())).view(-1)[0] += 1e-6
    assert weights_sha256(other) != digest
    # The same bytes: other shapes, other names.
    wide, tall = torch.nn.Linear(2, 3, bias=False), torch.nn.Linear(3, 2, bias=False)
    for layer in (wide, tall):
        torch.nn.init.zeros_(layer.weight)
    assert weights_sha256(wide) != weights_sha256(tall)
    assert weights_sha256(torch.nn.Sequential(wide)) != weights_sha256(wide)


def test_identities_come_from_a_list_file_or_from_data_set_names(run, tmp_path):
    write_images(tmp_path, ['x.jpg', 'y.jpg'])
    (tmp_path / 'list.csv').write_text('x.jpg,7,1\ny.jpg,9,0\n')
    assert main([str(tmp_path / 'list.csv'), '--model', str(run), '--output', str(tmp_path / 'l.safetensors'),
                 '--device', 'cpu', '--workers', '0', '--half']) == 0
    embeddings = load_embeddings(tmp_path / 'l.safetensors')
    assert embeddings.pids.tolist() == [7, 9] and embeddings.camids.tolist() == [1, 0]
    assert embeddings.features.dtype == torch.float16
    write_images(tmp_path / 'market', ['0002_c1s1_000451_03.jpg', '0007_c3s2_000100_01.jpg'])
    listing = collect_images(tmp_path / 'market')
    assert listing.pids == [2, 7] and listing.camids == [0, 2]


def test_embeddings_round_trip_with_any_path_text(tmp_path):
    original = Embeddings(torch.randn(3, 5), ['a,b.jpg', 'ünïcødé/ç.png', '/abs/path with spaces.jpg'],
                          torch.tensor([1, 2, 3]), None, {'model': 'm'})
    loaded = load_embeddings(save_embeddings(tmp_path / 'e.safetensors', original))
    assert loaded.paths == original.paths and torch.equal(loaded.features, original.features)
    assert loaded.pids.tolist() == [1, 2, 3] and loaded.camids is None and loaded.metadata['model'] == 'm'
    with pytest.raises(ValueError, match='line break'):
        save_embeddings(tmp_path / 'bad.safetensors', original._replace(paths=['a\nb', 'c', 'd']))
    save_file({'features': torch.zeros(2, 2)}, str(tmp_path / 'other.safetensors'))
    with pytest.raises(ValueError, match='not an embeddings file'):
        load_embeddings(tmp_path / 'other.safetensors')


@pytest.mark.parametrize('workers', ['0', '1'])  # an error inside a decoding process is one line too
@pytest.mark.parametrize('setup, message, code', [  # 2: what was asked cannot be done; 1: the work failed
    (lambda tmp: (tmp / 'empty').mkdir(), r'empty: no images in this folder or below \(any format Pillow', 2),
    (lambda tmp: None, r'nowhere: not found; expected a folder of images', 2),
    (lambda tmp: (tmp / 'empty').mkdir() or (tmp / 'empty' / 'broken.jpg').write_text('x'),
     r'cannot read image .*broken.jpg', 1),
])
def test_bad_input_is_one_line_with_a_nonzero_exit(run, tmp_path, capsys, setup, message, code, workers):
    setup(tmp_path)
    source = tmp_path / ('empty' if (tmp_path / 'empty').exists() else 'nowhere')
    assert main([str(source), '--model', str(run), '--output', str(tmp_path / 'o.safetensors'), '--device', 'cpu',
                 '--workers', workers]) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith('python -m hbfp_timm.embed: error: ')
    assert re.search(message, err)


def test_an_unknown_model_is_one_line(tmp_path, capsys):
    write_images(tmp_path, ['a.jpg'])
    assert main([str(tmp_path / 'a.jpg'), '--model', 'not_a_model', '--output', str(tmp_path / 'o.safetensors')]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'not_a_model' is neither a registered timm model" in err


def test_skip_bad_images_leaves_them_out_and_lists_each_one(run, tmp_path, capsys):
    good = write_images(tmp_path / 'photos', ['a.jpg', 'c.jpg'])
    (tmp_path / 'photos' / 'b.jpg').write_bytes(b'not a picture')
    (tmp_path / 'photos' / 'd.png').write_bytes(good[0].read_bytes()[:200])  # cut short: decoding fails
    common = ['--model', str(run), '--device', 'cpu', '--workers', '0']
    assert main([str(tmp_path / 'photos'), '--output', str(tmp_path / 'all.safetensors'), *common]) == 1
    assert 'cannot read image' in capsys.readouterr().err  # the default stays an error
    assert main([str(tmp_path / 'photos'), '--output', str(tmp_path / 'ok.safetensors'), '--skip-bad-images',
                 *common]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"skipped unreadable image {tmp_path / 'photos' / 'b.jpg'}: ")
    assert err[1].startswith(f"skipped unreadable image {tmp_path / 'photos' / 'd.png'}: ")
    assert err[2] == f"skipped 2 of 4 images of {tmp_path / 'photos'} (--skip-bad-images)"
    embeddings = load_embeddings(tmp_path / 'ok.safetensors')
    assert embeddings.paths == [str(p) for p in good]
    torch.testing.assert_close(embeddings.features, FeatureExtractor(run, device='cpu')([str(p) for p in good]),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('flags, message', [
    (['--batch-size', '0'], '--batch-size: expected a positive integer, got 0'),
    (['--workers', '-1'], '--workers: expected a non-negative integer, got -1'),
    (['--img-size', '0', '32'], '--img-size: expected two positive integers H W, got 0 32'),
])
def test_bad_model_options_are_one_line_naming_the_option(run, tmp_path, capsys, flags, message):
    write_images(tmp_path, ['a.jpg'])
    assert main([str(tmp_path / 'a.jpg'), '--model', str(run), '--output', str(tmp_path / 'o.safetensors'),
                 '--device', 'cpu', *flags]) == 2
    assert capsys.readouterr().err.strip() == f'python -m hbfp_timm.embed: error: {message}'


def test_an_output_that_cannot_be_an_embeddings_file_is_refused_before_any_work(run, tmp_path, capsys):
    write_images(tmp_path, ['a.jpg'])
    (tmp_path / 'folder.safetensors').mkdir()
    (tmp_path / 'a_file').write_text('x')
    for output, message in [
        (tmp_path / 'x.txt', f'{tmp_path / "x.txt"}: expected a file name ending with .safetensors, the format '
                             'written in it'),
        (tmp_path / 'folder.safetensors', f'{tmp_path / "folder.safetensors"} is a folder; expected a .safetensors '
                                          'file'),
        (tmp_path / 'a_file' / 'e.safetensors', f'{tmp_path / "a_file" / "e.safetensors"} cannot be written: '
                                                f'{tmp_path / "a_file"} is a file, not a folder'),
    ]:
        assert main([str(tmp_path / 'a.jpg'), '--model', str(run), '--output', str(output), '--device', 'cpu',
                     '--workers', '0']) == 2
        assert capsys.readouterr().err.strip() == f'python -m hbfp_timm.embed: error: --output: {message}'
    assert not (tmp_path / 'x.txt').exists()


def test_a_damaged_embeddings_file_is_named_when_read(tmp_path):
    path = save_embeddings(tmp_path / 'e.safetensors', Embeddings(torch.zeros(2, 3), ['x', 'y'], metadata={'m': '1'}))
    whole = path.read_bytes()
    for length in (5, 100, len(whole) - 1):
        path.write_bytes(whole[:length])
        with pytest.raises(ValueError, match=f'^{re.escape(str(path))}: cannot read this safetensors file, cut short'):
            load_embeddings(path)
    save_file({'features': torch.zeros(2, 2)}, str(path), metadata={'format': 'hbfp_timm.embeddings/1'})
    with pytest.raises(ValueError, match='an embeddings file without its paths'):
        load_embeddings(path)
