"""Writing output files safely: atomic replacement, the user's umask, one clear error when the disk is full.

Every file the trainer writes, and the output files of ``python -m hbfp_timm.embed``, ``search`` and ``evaluate``,
go through :func:`atomic_write`: the data goes to a temporary file in the destination folder, which is fsynced and
then renamed over the destination, so that an interruption at any moment leaves either the old file or the new
one, never a torn one (``python -m hbfp_timm.hub save`` writes its files in a staging folder and moves them into
place, for the same reason). A temporary file is named ``.<name>.<pid>.<random>.tmp``; one left behind by a
process that was killed outright (``kill -9``, power loss) is recognised by its pid and removed by
:func:`remove_stale_temporaries`.
"""
import errno
import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterable, List, Tuple, Union

__all__ = [
    'RESULTS_NAME', 'MODEL_NAME', 'OutputWriteError', 'atomic_write', 'atomic_write_text', 'follow_umask',
    'check_writable_folder', 'output_write_error',
    'remove_stale_temporaries', 'format_size', 'sha256_file',
]

# A trainer run folder, as the trainer writes it and the hub, release and extractor read it.
RESULTS_NAME = 'results.json'  # the run's summary: model, arguments, data set, input size, scores
MODEL_NAME = 'model.safetensors'  # the descriptor model's weights (also a Hub repository's weights file)

PathLike = Union[str, os.PathLike]
# Below this much free space a failed write is taken to be a full disk: torch.save reports a full disk as
# "[enforce fail at inline_container.cc] ... file write failed", without an errno.
NEARLY_FULL_BYTES = 1 << 20
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# ".<name>.<pid>.<8 random>.tmp" (this module) or ".<name>.<8 random>.tmp" (tempfile.mkstemp, earlier versions).
TEMPORARY_PATTERN = re.compile(r'^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$')


class OutputWriteError(OSError):
    """An output file could not be written (no space left, no permission); the message names the file."""


def current_umask() -> int:
    """The process umask (read from /proc on Linux, where reading it does not briefly change it)."""
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: PathLike) -> None:
    """Give a file the mode a plain ``open(path, 'w')`` would have (0o666 less the umask).

    ``tempfile.mkstemp`` and writers that rename a private temporary into place (safetensors) create files
    readable by their owner only, whatever the umask says; shared result folders need the usual mode.
    """
    os.chmod(path, 0o666 & ~current_umask())


def format_size(num_bytes: float) -> str:
    """``1234567`` -> ``'1.2 MB'`` (decimal units, as ``ls -h --si`` and disk vendors count)."""
    if num_bytes < 1000:
        return f'{num_bytes:.0f} B'
    for unit in ('kB', 'MB', 'GB'):
        num_bytes /= 1000
        if num_bytes < 1000 or unit == 'GB':
            break
    return f'{num_bytes:.1f} {unit}'


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return -1


def _is_no_space(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return True
    return 0 <= _free_bytes(folder) < NEARLY_FULL_BYTES


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(tmp_path)`` on a temporary file in the same folder, fsync it, then
    ``os.replace`` it into place: a crash mid-write leaves the previous file intact. The file gets the mode the
    umask gives.

    Args:
        path: Destination file; its folder is created if missing.
        write: Writes the content to the path it is given (``torch.save``, ``safetensors.torch.save_file``...).

    Raises:
        OutputWriteError: The file could not be written; a full disk says "no space left on device" and names
            the file. The temporary file is removed whatever happens, interruptions included.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_name = str(path.parent / f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp')
        os.close(os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        write(tmp_name)
        follow_umask(tmp_name)
        with open(tmp_name, 'rb+') as tmp_file:
            os.fsync(tmp_file.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        no_space = isinstance(exc, Exception) and _is_no_space(exc, path.parent)  # judged before freeing the space
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
        if isinstance(exc, (OSError, RuntimeError)) or no_space:
            raise _write_error(path, exc, no_space) from None
        raise
    if hasattr(os, 'O_DIRECTORY'):  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`: a failed or interrupted write leaves the
    previous file, never a torn one, and raises an ``OutputWriteError`` naming the file."""
    atomic_write(path, lambda tmp_name: Path(tmp_name).write_text(text, encoding='utf-8'))


def output_write_error(path: PathLike, exc: BaseException) -> OutputWriteError:
    """The `OutputWriteError` of a failed write of `path` (a file, or a folder whose files were being written), for
    writers that cannot go through :func:`atomic_write`: a full disk says "no space left on device" (call it before
    removing what the failed write left, which frees the space), anything else what failed."""
    path = Path(path)
    return _write_error(path, exc, isinstance(exc, Exception) and _is_no_space(exc, path.parent))


def _write_error(path: Path, exc: BaseException, no_space: bool = False) -> OutputWriteError:
    if no_space or (isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS):
        return OutputWriteError(errno.ENOSPC, f'{path}: no space left on device '
                                              f'({format_size(max(_free_bytes(path.parent), 0))} free); the previous '
                                              f'version of the file, if any, is intact. Free some space or write '
                                              f'to another disk')
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
    return OutputWriteError(getattr(exc, 'errno', None) or errno.EIO, f'{path}: cannot write ({detail})')


def check_writable_folder(folder: PathLike) -> Path:
    """Create ``folder`` if needed and prove that files can be created in it, before any long work.

    Raises:
        OutputWriteError: ``folder`` is a file, cannot be created, or is not writable.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputWriteError(errno.ENOTDIR, f'{folder} is a file; expected a folder (created if missing)')
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f'.write-test.{os.getpid()}.{secrets.token_hex(4)}.tmp'
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.remove(probe)
    except OSError as exc:
        raise OutputWriteError(exc.errno, f'{folder}: cannot write in this folder ({exc.strerror or exc})') from None
    return folder


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temporaries(folder: PathLike, names: Iterable[str]) -> Tuple[List[Path], int]:
    """Remove temporary files of :func:`atomic_write` for ``names`` that no running process is writing.

    Args:
        folder: The folder to clean.
        names: Destination file names whose temporaries may be removed (``checkpoint.pt``...).

    Returns:
        The removed paths and their total size in bytes.
    """
    names = set(names)
    removed, size = [], 0
    folder = Path(folder)
    if not folder.is_dir():
        return removed, size
    for entry in folder.iterdir():
        match = TEMPORARY_PATTERN.match(entry.name)
        if match is None or match['name'] not in names or not entry.is_file():
            continue
        if match['pid'] is not None and int(match['pid']) != os.getpid() and _process_alive(int(match['pid'])):
            continue
        try:
            entry_size = entry.stat().st_size
            entry.unlink()
        except FileNotFoundError:  # its writer finished in the meantime
            continue
        removed.append(entry)
        size += entry_size
    return sorted(removed), size


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks.

    Args:
        path: The file.
        chunk_size: Bytes read at a time.

    Returns:
        The 64-character hex digest.
    """
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()
