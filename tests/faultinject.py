"""The crash-test driver: the real `bottleneck` CLI run with a fault injected at its K-th write, for every K, as
SQLite's crash tests do.

    python tests/faultinject.py MODE RESULTS.json "OUTPUT[;OUTPUT...]" -- bottleneck arguments...

A write is any file opened for writing (`open`, `io.open`), a folder created (`os.mkdir`), a rename
(`os.replace`, `os.rename`), a file or folder removed (`os.unlink`, `os.remove`, `os.rmdir`, `shutil.rmtree`),
or an HDF5 file opened to write (`h5py.File`), in the working folder: the command's own files (what a library
writes to its temporary or cache folders elsewhere is not counted, and never faulted). At the K-th: MODE `fail`
raises OSError(ENOSPC), as a full disk does; MODE `crash` ends the process at once (`os._exit(137)`, as SIGKILL
does: no cleanup, no atexit, no finally).

The driver imports TensorFlow and the CLI once, then forks one child per run, so each run costs its own work
and not five seconds of imports: first an uninterrupted run (it counts the writes), then for each K the faulty
run followed by the same command without a fault (it must complete: no wedge). After each child the driver
records its exit code, its stderr and the SHA-256 of each OUTPUT (a file path relative to the working folder),
(of a cache: of its rows) and writes them all to RESULTS.json for the test to judge; a killed run's outputs are
not read (a killed commit is the next command's to roll back). Each faulty run starts from what the previous
rerun left (the command's outputs in place), which is how a user meets a fault: a rerun over earlier results.

    python tests/faultinject.py serve

The same imports once, then a real process forked per request, without a fault (`serve`; conftest's `forked`
fixture): for tests about what a process does when killed, its exit code or its stderr, where a fresh
interpreter's five seconds of start-up are not what is tested.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import sys
import time
import traceback

_real_open = io.open


def _install(mode: str, k: int, log: str) -> None:
    """Patch every write of this (child) process to count, and to fail or die at the k-th."""
    count = [0]
    root = os.getcwd() + os.sep

    def hit(what) -> None:
        if not isinstance(what, (str, bytes, os.PathLike)):
            return  # an in-memory buffer (Keras zips through one)
        path = os.fsdecode(what)
        if os.path.isabs(path) and not path.startswith(root):
            return  # a library's own temporary or cache files: not the command's writes
        count[0] += 1
        with _real_open(log, "a") as f:
            f.write(f"{what}\n")
        if count[0] == k:
            if mode == "crash":
                os._exit(137)
            raise OSError(errno.ENOSPC, "No space left on device (injected)", str(what))

    def _open(file, mode_="r", *a, **kw):
        if isinstance(mode_, str) and any(c in mode_ for c in "wax+") and not str(file).startswith("/dev/"):
            hit(file)
        return _real_open(file, mode_, *a, **kw)

    builtins.open = io.open = _open  # io.open: what pathlib and zipfile (Keras' .keras files) call

    def wrap(owner, name):
        real = getattr(owner, name)

        def wrapped(*a, **kw):
            hit(a[0] if a else name)
            return real(*a, **kw)

        setattr(owner, name, wrapped)

    for fn in ("mkdir", "replace", "rename", "unlink", "remove", "rmdir"):
        wrap(os, fn)
    wrap(shutil, "rmtree")
    import h5py

    real_h5 = h5py.File.__init__

    def h5_init(self, name, *a, **kw):
        if kw.get("mode", a[0] if a else "r") != "r":
            hit(name)
        real_h5(self, name, *a, **kw)

    h5py.File.__init__ = h5_init


def _child(mode: str, k: int, args: list[str], tag: str) -> None:
    for fd, name in ((1, "out"), (2, "err")):
        os.dup2(os.open(f".fi-{tag}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    _install(mode, k, f".fi-{tag}.writes")
    from bottleneck.cli import app

    code = 1
    try:
        app(args=args, prog_name="bottleneck")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 -- what the CLI let through: the test fails on the traceback
        traceback.print_exc()
        code = 99
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(mode: str, k: int, args: list[str], outputs: list[str], tag: str) -> dict:
    for suffix in ("out", "err", "writes"):
        if os.path.exists(f".fi-{tag}.{suffix}"):
            os.remove(f".fi-{tag}.{suffix}")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(mode, k, args, tag)
    _, status = os.waitpid(pid, 0)
    read = {s: (_real_open(f".fi-{tag}.{s}").read() if os.path.exists(f".fi-{tag}.{s}") else "")
            for s in ("err", "writes")}
    rc = os.waitstatus_to_exitcode(status)
    digests = {} if rc == 137 else {p: _digest(p) for p in outputs}  # a killed run's files: the rerun's to judge
    return {"k": k, "mode": mode, "rc": rc, "stderr": read["err"], "writes": read["writes"].splitlines(),
            "outputs": digests}


def _digest(spec: str) -> str | None:
    """SHA-256 of a file; of a cache, of the rows it holds as bottleneck reads them (its bytes also hold times);
    `FILE.csv:col1,col2`: of those columns only (what must match where the numbers may not be bit-exact);
    `FILE?`: only whether it is there."""
    path, _, columns = spec.rstrip("?").partition(":")
    if not os.path.isfile(path):
        return None
    if spec.endswith("?"):
        return "present"
    h = hashlib.sha256()
    if columns:
        import csv

        with _real_open(path, newline="") as f:
            for row in csv.DictReader(f):
                h.update("\t".join(row[c] for c in columns.split(",")).encode() + b"\n")
    elif path.endswith(".h5"):
        from bottleneck.cache.store import load_cache

        data = load_cache(path)
        h.update(data.features.tobytes() + data.labels.tobytes())
        h.update("\n".join([*data.image_ids, *data.sha256, *data.class_names]).encode())
    else:
        h.update(_real_open(path, "rb").read())
    return h.hexdigest()


def _imports() -> None:
    """TensorFlow, Keras and the CLI, imported once before any fork; no op runs in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bottleneck.util.tfimport import tensorflow

    tensorflow()
    import keras  # noqa: F401  (imported for the children)

    import bottleneck.cli  # noqa: F401


# --- serve: real processes without the start-up, for tests about a kill, an exit code or stderr ------------------

def _served_child(request: dict) -> None:
    """Runs in the forked child: `bottleneck ARGS`, or `python -c CODE ARGS`, as that process would, then exits."""
    os.chdir(request["cwd"])
    for key, value in request["env"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # never the server's requests
    for fd, name in ((1, "out"), (2, "err")):
        os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    if request["fsize"] is not None:  # a write past it fails with EFBIG, as on a full disk (Python ignores SIGXFSZ)
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    code = 1
    try:
        if request["code"] is None:
            from bottleneck.cli import app

            app(args=request["args"], prog_name="bottleneck")
        else:
            sys.argv = ["-c", *request["args"]]
            exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 -- as `python` does with an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _exit_code(pid: int, block: bool) -> int | None:
    done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def _wait(pid: int, timeout: float) -> dict:
    """The child's exit code, once it has ended; SIGKILLed at the timeout (a wedged child fails its test)."""
    deadline = time.monotonic() + timeout
    while (rc := _exit_code(pid, block=False)) is None:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return {"rc": _exit_code(pid, block=True), "timed_out": True}
        time.sleep(0.01)
    return {"rc": rc, "timed_out": False}


def serve() -> None:
    """`python faultinject.py serve`: one JSON request a line on stdin, one JSON answer a line on stdout.

    {"op": "start", "args", "code", "cwd", "env", "fsize", "out", "err"} forks a child that runs `bottleneck ARGS`
    (or `python -c CODE ARGS`) in cwd with env changed (None: removed), RLIMIT_FSIZE fsize, and its stdout and
    stderr in the files out and err: {"pid"}. {"op": "poll", "pid"}: {"rc"}, None while it runs. {"op": "wait",
    "pid", "timeout"}: {"rc"}, after a SIGKILL at the timeout (and "timed_out"). rc as subprocess's returncode:
    the exit status, or minus the signal that ended it."""
    _imports()
    answer = sys.stdout
    answer.write(json.dumps({"ready": os.getpid()}) + "\n")
    answer.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _served_child(request)
            reply = {"pid": pid}
        elif request["op"] == "poll":
            reply = {"rc": _exit_code(request["pid"], block=False)}
        else:
            reply = _wait(request["pid"], request["timeout"])
        answer.write(json.dumps(reply) + "\n")
        answer.flush()


def main() -> None:
    if sys.argv[1] == "serve":
        return serve()
    mode, results, outputs = sys.argv[1], sys.argv[2], sys.argv[3].split(";")
    args = sys.argv[sys.argv.index("--") + 1:]
    _imports()

    reference = run("fail", 0, args, outputs, "ref")
    out = {"reference": reference, "runs": []}
    for k in range(1, len(reference["writes"]) + 1):
        fault = run(mode, k, args, outputs, f"{mode}{k}")
        rerun = run("fail", 0, args, outputs, f"re{k}")
        out["runs"].append({"fault": fault, "rerun": rerun})
    with _real_open(results, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
