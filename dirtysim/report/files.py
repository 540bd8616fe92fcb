"""Write a run's outputs whole or not at all.

The guarantee, for ``dirtysim run``, ``replay`` and every ``sweep`` variant:
after the command, the output directory OUT holds either the complete earlier
set of files or the complete new set, never a mix and never half a file.

1. Before the run, ``OutputDir`` creates OUT if needed and locks it
   (``OUT/.dirtysim.lock``, ``fcntl.flock``, holding the writer's pid), which
   also proves that OUT is writable. A second run into OUT is refused with the
   pid of the one holding the lock; the lock ends with the process.
2. After the run, ``commit`` writes every file into a fresh ``OUT/.tmp-*/`` (same
   file system). A failed write (disk full, permission) removes that directory
   and leaves OUT as it was.
3. The files are then renamed into OUT, ``summary.json`` last (it is in every
   set), and the files of an earlier set that this one does not produce (say
   ``convergence.png`` when plots are off) are removed. SIGINT, SIGTERM and SIGHUP
   are held back during those few renames, so a signal cannot split the sets;
   only SIGKILL or a machine crash in those microseconds can (files are not
   fsync'd: this is not a power-loss guarantee), and ``summary.json``'s
   fingerprint would then disagree with ``events.jsonl``.

Other files in OUT are never touched. ``.tmp-*`` directories left by a killed
run are removed by the next run that takes the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterable

from ..events.log import encode_log, fingerprint
from ..scenario.load import resolved_to_file
from ..dirtyrate.report import measurements as dirtyrate_measurements
from . import tables
from .postcopy import LATENCY_FIELDS, postcopy_latency_rows

LOCK_NAME = ".dirtysim.lock"
TMP_PREFIX = ".tmp-"
RUN_FILES = ("events.jsonl", "rounds.csv", "vcpus.csv", "guest.csv", "convergence.png", "postcopy-latency.csv",
             "postcopy-latency.png", "summary.json")
PROJECTION_FILES = RUN_FILES[1:]  # what replay writes: never the log it reads
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class OutputError(OSError):
    """An output directory that cannot be used or written. ``str()`` is one line for the user."""

    def __str__(self) -> str:
        return self.args[0]


def child(base: Path, name: str, what: str) -> Path:
    """``base / name`` for a name taken from a scenario or a sweep: one plain path component, never leaving ``base``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise OutputError(f"{what} {name!r} cannot name a directory inside {base}/: "
                          "use a name without '/', '\\', NUL, and not '.' or '..'")
    return base / name


class OutputDir:
    """A locked output directory, written with ``commit`` (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.committed = False
        self._fd: int | None = None

    def __enter__(self) -> OutputDir:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise OutputError(f"{self.path}: exists and is not a directory") from None
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot create the output directory: {exc.strerror}") from None
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{self.path}: output directory not writable: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(f"{self.path}: another dirtysim run (pid {pid}) is writing here; "
                              "wait for it to end or choose another output directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        for stale in self.path.glob(TMP_PREFIX + "*"):  # left by a run that was killed while writing
            shutil.rmtree(stale, ignore_errors=True)
        try:  # the lock file may predate us: prove that new files can be created
            os.rmdir(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.path))
        except OSError as exc:
            self.__exit__()
            raise OutputError(f"{self.path}: output directory not writable: {exc.strerror}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (deleting it would race a waiting run)
            self._fd = None

    def commit(self, files: dict[str, bytes], owned: Iterable[str]) -> None:
        """Replace the set ``owned`` (names this kind of writer produces) with ``files``, whole or not at all."""
        assert self._fd is not None, "commit outside `with OutputDir(...)`"
        try:
            tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.path))
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write: {exc.strerror}") from None
        try:
            for name, data in files.items():
                try:
                    (tmp / name).write_bytes(data)
                except OSError as exc:
                    raise OutputError(f"{self.path / name}: cannot write: {exc.strerror}; "
                                      f"{self.path}/ keeps its previous files") from None
            order = sorted(files, key=lambda n: n == "summary.json")
            with _signals_held():
                for name in order:
                    os.replace(tmp / name, self.path / name)
                for name in set(owned) - set(files):
                    (self.path / name).unlink(missing_ok=True)
            self.committed = True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _signals_held():
    """Delay SIGINT/SIGTERM/SIGHUP until the block ends (they are delivered then, not lost)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def write_atomic(path: Path, data: bytes) -> None:
    """One file by temp file + rename, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def projections(events: list, run_info: dict, plots: bool, title: str | None = None) -> tuple[dict, dict[str, bytes]]:
    """The summary, and the bytes of rounds.csv, vcpus.csv, guest.csv, the plot and summary.json (``run_info`` in
    ``dirtysim``). ``title``: the figure's name for the run (default: the scenario's name)."""
    f = tables.fold(events)  # once: a 1 TiB run has hundreds of thousands of events
    summary = tables.summary(events, f)
    summary["dirtysim"].update(run_info, scenario=resolved_to_file(run_info.get("scenario", {})))
    measured = dirtyrate_measurements(events)
    if measured:
        summary["calc-dirty-rate"] = measured
    files = {"rounds.csv": tables.csv_bytes(f.rounds), "vcpus.csv": tables.csv_bytes(f.vcpu_rows, tables.VCPU_FIELDS),
             "guest.csv": tables.csv_bytes(tables.guest_rows(events, f), tables.GUEST_FIELDS)}
    latency = postcopy_latency_rows(f)
    if latency is not None:  # a run that switched to postcopy
        files["postcopy-latency.csv"] = tables.csv_bytes(latency, LATENCY_FIELDS)
    if plots:
        from .plots import convergence_figure, figure_png, postcopy_latency_figure

        files["convergence.png"] = figure_png(convergence_figure(events, f, title))
        if latency is not None:
            name = title if title is not None else getattr(events[0], "name", "")
            files["postcopy-latency.png"] = figure_png(postcopy_latency_figure(latency, name))
    files["summary.json"] = json_bytes(summary)
    return summary, files


def _commit(out: Path | OutputDir, files: dict[str, bytes], owned: Iterable[str]) -> None:
    if isinstance(out, OutputDir):
        out.commit(files, owned)
    else:
        with OutputDir(out) as target:
            target.commit(files, owned)


def write_replay(events: list, out: Path | OutputDir, plots: bool | None = None) -> dict:
    """The projections of a saved log; the wall-clock facts of the run are not in the log, so they are null."""
    scenario = events[0].scenario
    info = {"fingerprint": fingerprint(events), "wall-time-s": None, "compile-time-s": None, "sim-speed": None,
            "scenario": scenario}
    if plots is None:
        plots = scenario.get("outputs", {}).get("plots", True)
    summary, files = projections(events, info, plots)
    _commit(out, files, PROJECTION_FILES)
    return summary


def write_run(result, out: Path | OutputDir, plots: bool | None = None, title: str | None = None) -> dict:
    """Every file of a run. Called for failed and interrupted runs too: the summary then says so.

    ``plots`` overrides the scenario's ``outputs.plots`` (tests skip the slow figure); ``title`` names the run in
    the figure (a sweep names its variant; default: the scenario's name).
    """
    info = {
        "fingerprint": result.fingerprint,
        "wall-time-s": round(result.wall_time_s, 3),
        "compile-time-s": round(result.compile_time_s, 3),
        "sim-speed": round(result.sim_speed, 3),
        "scenario": result.scenario.model_dump(mode="json"),
    }
    if plots is None:
        plots = result.scenario.outputs.plots and result.error is None
    summary, files = projections(result.events, info, plots, title)
    _commit(out, {"events.jsonl": encode_log(result.events), **files}, RUN_FILES)
    return summary


DIRTYRATE_FILES = ("events.jsonl", "dirtyrate.json")


def write_dirtyrate(result, out: Path | OutputDir, record: dict) -> None:
    """A dirty-rate measurement's log and its record (``query-dirty-rate``, the truth, the run)."""
    _commit(out, {"events.jsonl": encode_log(result.events), "dirtyrate.json": json_bytes(record)}, DIRTYRATE_FILES)
