"""Runs one reward function over a batch of completions; executed as `python -I -B <this file>`.

Standard library only and never imported by the worker. Reads one JSON request on stdin
({code, function, completions, kwargs}) and writes one JSON answer on its original stdout
({ok, values} or {ok: false, error}). Before any user code runs it:
- caps its own resources (hard limits, so user code cannot raise them): address space, CPU
  seconds, file size 0 (no file writes), open files, core dumps;
- drops root to nobody when it is root (after preloading common stdlib modules);
- replaces the socket constructors and installs an audit hook (which Python code cannot
  remove) that ends the process on any network, process-spawning, ctypes or file-modifying
  event, so a reward that tries such a thing fails even if it catches the exception.
The launcher adds a wall-clock timeout, an empty temporary cwd, and a fresh network namespace
(`unshare -n`) where available.
"""

import _socket
import json
import os
import resource
import socket
import sys

# Modules reward code commonly needs; imported before privileges are dropped (the interpreter's
# own files may not be readable by nobody).
PRELOAD = (
    "re",
    "math",
    "json",
    "string",
    "collections",
    "itertools",
    "functools",
    "statistics",
    "difflib",
    "unicodedata",
    "random",
    "fractions",
    "decimal",
    "textwrap",
    "operator",
    "heapq",
    "bisect",
    "typing",
    "dataclasses",
    "enum",
    "ast",
    "copy",
    "datetime",
)

BLOCKED_EVENT_PREFIXES = (
    "socket.",
    "subprocess.",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "ctypes.",
    "os.remove",
    "os.unlink",
    "os.rename",
    "os.rmdir",
    "os.mkdir",
    "os.chmod",
    "os.chown",
    "os.link",
    "os.symlink",
    "os.truncate",
    "os.putenv",
    "os.unsetenv",
    "shutil.",
    "pty.",
    "winreg.",
    "msvcrt.",
    "webbrowser.",
    "urllib.",
    "http.",
    "ftplib.",
    "smtplib.",
    "imaplib.",
    "poplib.",
    "nntplib.",
    "telnetlib.",
)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _set_limits(limits):
    pairs = [
        (resource.RLIMIT_AS, limits["memory_bytes"]),
        (resource.RLIMIT_CPU, limits["cpu_seconds"]),
        (resource.RLIMIT_FSIZE, 0),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 64),
    ]
    for res, value in pairs:
        resource.setrlimit(res, (value, value))


def _drop_root():
    if os.getuid() != 0:
        return
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except OSError:
        pass  # e.g. inside a user namespace where nobody is not mapped


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _install_guards(out_fd):
    def deny(what):
        answer = {"ok": False, "error": f"sandbox violation: {what} is not allowed in a reward function"}
        _write_all(out_fd, json.dumps(answer).encode())
        os._exit(3)

    def hook(event, args):
        if event.startswith(BLOCKED_EVENT_PREFIXES):
            if event.startswith("socket."):
                deny(f"network access ({event})")
            deny(event)
        if event == "open" and len(args) >= 3:
            mode, flags = args[1], args[2]
            writes = (isinstance(mode, str) and any(ch in mode for ch in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS
            )
            if writes:
                deny(f"opening {args[0]!r} for writing")

    def no_network(*_args, **_kwargs):
        deny("network access (socket)")

    for name in (
        "socket",
        "create_connection",
        "create_server",
        "socketpair",
        "fromfd",
        "getaddrinfo",
        "gethostbyname",
        "gethostbyname_ex",
        "gethostbyaddr",
    ):
        if hasattr(socket, name):
            setattr(socket, name, no_network)
    _socket.socket = no_network
    sys.addaudithook(hook)


def _pick_function(namespace, name):
    if name:
        fn = namespace.get(name)
        if not callable(fn):
            raise ValueError(f"the reward code defines no function {name!r}")
        return fn
    candidates = [
        v
        for k, v in namespace.items()
        if callable(v)
        and getattr(v, "__module__", None) == "reward_module"
        and not k.startswith("_")
        and not isinstance(v, type)
    ]
    if len(candidates) != 1:
        raise ValueError(
            f"the reward code must define exactly one function (found {len(candidates)}); "
            "name it with params['function']"
        )
    return candidates[0]


def main():
    limits = json.loads(sys.argv[1])
    _set_limits(limits)
    request = json.loads(sys.stdin.buffer.read())
    for module in PRELOAD:
        __import__(module)
    _drop_root()
    out_fd = os.dup(1)
    os.dup2(2, 1)  # prints of the reward code go to stderr, not into the answer
    _install_guards(out_fd)
    try:
        namespace = {"__name__": "reward_module", "__builtins__": __builtins__}
        exec(compile(request["code"], "<reward function>", "exec"), namespace)
        fn = _pick_function(namespace, request.get("function"))
        values = fn(request["completions"], **request["kwargs"])
        values = [float(v) for v in values]
        if len(values) != len(request["completions"]):
            raise ValueError(f"returned {len(values)} values for {len(request['completions'])} completions")
        answer = {"ok": True, "values": values}
    except BaseException as exc:  # noqa: BLE001 - reported to the worker
        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    _write_all(out_fd, json.dumps(answer).encode())
    os._exit(0)


if __name__ == "__main__":
    main()
