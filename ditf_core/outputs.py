"""Writing output files so that nobody ever reads half of one, and an output folder tells a finished run from an
interrupted one.

* :func:`atomic_path` is the one way this package writes a file: the writer fills a temporary file beside the
  destination, which is then renamed over it. The temporary file is created with the permissions a plain ``open()``
  gives (``0o666`` minus the umask, so readable by the group; ``tempfile`` would give 0600). On any error or Ctrl-C
  the temporary file is removed and the destination is left as it was. :func:`write_text`, :func:`write_json` and
  :func:`save_image` build on it; ``DiTFeatures.save``, the inspector, the demo and the evaluation write through it.
* :class:`OutputFolder` makes one command run's output folder a transaction: the run writes into a hidden staging
  folder inside it; only when the run finishes are the files moved in, the previous run's files that this run did
  not rewrite removed (so nothing stale looks current), and the marker ``ditf_run.json`` written last. An
  interrupted run leaves the previous outputs as they were; a staging folder left by a killed process is reported
  and removed by the next run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .errors import DiTFInputError
from .wording import plural, short_list

MARKER = "ditf_run.json"
STAGING_PREFIX = ".ditf-partial-"
TEMPORARY_SUFFIX = ".partial"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; it replaces ``path`` when the block ends without error.

    The temporary name keeps the destination's suffix, so writers that pick a format by suffix (PIL) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}{path.suffix}")
    # os.open applies the umask to 0o666, as open() would: group-readable where the user's files are. Some writers
    # (safetensors) recreate the file as 0600, so the mode is set again before the rename.
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = temporary.stat().st_mode & 0o777
    try:
        yield temporary
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data, **options) -> Path:
    """``data`` as indented JSON with sorted keys (``options`` go to ``json.dumps``, e.g. ``default=str``)."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, **options) + "\n")


def save_image(image, path: str | Path) -> Path:
    """A PIL image, in the format its file suffix names."""
    with atomic_path(path) as temporary:
        image.save(temporary)
    return Path(path)


class OutputFolder:
    """One run's output folder, used as ``with OutputFolder(out, "extract") as folder:``.

    Entering checks the folder can be used (not a file, creatable, writable), reports and removes what a killed
    run left, and creates the staging folder ``folder.path``, which the run writes into. Leaving without an error
    commits (see the module docstring); leaving with an error or Ctrl-C removes the staging folder, and the folder
    itself when this run created it, so the previous outputs stay exactly as they were.

    note: called with one line of text for each thing worth telling the user (default: ignore).
    """

    def __init__(self, final: str | Path, command: str, *, option: str = "--out",
                 note: Callable[[str], None] | None = None) -> None:
        self.final = Path(final)
        self.command = command
        self.option = option
        self.note = note or (lambda text: None)
        self.path: Path | None = None
        self._created: Path | None = None

    def __enter__(self) -> OutputFolder:
        self._created = _create_folder(self.final, self.option)
        self._remove_leftovers()
        previous = _read_marker(self.final)
        if previous is None and self._created is None and any(self.final.iterdir()):
            self.note(f"{self.final} already holds files that no earlier run of this tool listed; "
                      "files of the same names are replaced, the others are left as they are")
        self.path = self.final / f"{STAGING_PREFIX}{secrets.token_hex(4)}"
        self.path.mkdir()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.commit()
            return
        shutil.rmtree(self.path, ignore_errors=True)
        if self._created is not None:
            _remove_empty_folders(self.final, stop=self._created.parent)

    def commit(self) -> list[Path]:
        """Move the staged files in, remove the previous run's other files, write the marker last; the files."""
        staged = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())
        previous = (_read_marker(self.final) or {}).get("files", [])
        # While files move, the marker lists everything this folder may hold, so a crash here is cleaned next time.
        write_json(self.final / MARKER, {"command": self.command, "status": "replacing",
                                         "files": sorted(set(previous) | set(staged))})
        stale = sorted(set(previous) - set(staged))
        for name in stale:
            _unlink_inside(self.final, name)
        if stale:
            self.note(f"removed {plural(len(stale), 'file')} of the previous run that this run did not write: "
                      f"{short_list(stale)}")
        for name in staged:
            destination = self.final / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path / name, destination)
        shutil.rmtree(self.path, ignore_errors=True)
        finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(self.final / MARKER, {"command": self.command, "status": "complete", "finished": finished,
                                         "files": staged})
        return [self.final / name for name in staged]

    def _remove_leftovers(self) -> None:
        leftovers = sorted(self.final.glob(f"{STAGING_PREFIX}*"))
        marker = _read_marker(self.final)
        if leftovers or (marker is not None and marker.get("status") != "complete"):
            self.note(f"a previous run into {self.final} was interrupted before it finished; "
                      "its partial outputs are removed")
        for leftover in leftovers:
            shutil.rmtree(leftover, ignore_errors=True)
        for partial in self.final.glob(f".*{TEMPORARY_SUFFIX}*"):
            partial.unlink(missing_ok=True)


def is_complete(folder: str | Path) -> bool:
    """Whether ``folder`` holds the outputs of a run that finished."""
    marker = _read_marker(Path(folder))
    return marker is not None and marker.get("status") == "complete"


def _create_folder(folder: Path, option: str) -> Path | None:
    """Create ``folder`` if needed; the topmost folder this created (to remove on failure), or None."""
    if folder.exists() and not folder.is_dir():
        raise DiTFInputError(f"{option} {folder} is a file, not a folder; give a folder name (created if needed)")
    if folder.is_dir():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DiTFInputError(f"{option} {folder} is not writable; give a folder you can write to")
        return None
    topmost = folder
    while not topmost.parent.exists() and topmost.parent != topmost:
        topmost = topmost.parent
    if topmost.parent.exists() and not topmost.parent.is_dir():
        raise DiTFInputError(f"{option} {folder}: {topmost.parent} is a file, not a folder")
    try:
        folder.mkdir(parents=True)
    except OSError as error:
        raise DiTFInputError(f"{option} {folder} cannot be created ({error.strerror}); "
                             "give a folder you can write to") from None
    return topmost


def _read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return None
    return data


def _unlink_inside(folder: Path, name: str) -> None:
    """Remove ``folder / name`` if it is a file inside ``folder`` (a marker is data: never follow it outside)."""
    path = (folder / name).resolve()
    root = folder.resolve()
    if root not in path.parents or not path.is_file():
        return
    path.unlink()
    _remove_empty_folders(path.parent, stop=root)


def _remove_empty_folders(folder: Path, *, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty."""
    folder, stop = folder.resolve(), stop.resolve()
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
