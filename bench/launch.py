"""A small launcher that runs one command and reports the kernel's account of it. Run as a script:

    python -I -S bench/launch.py TIMEOUT STDIN STDOUT STDERR COMMAND [ARG ...]

prints one line: `returncode wall utime stime maxrss_kib timed_out`.

Why a launcher at all: on Linux a process's peak RSS (ru_maxrss) survives execve, and a child
that Python starts with vfork (subprocess does) or fork inherits its parent's high-water mark.
A child started directly by the benchmark process (60 MiB and growing, with boto3 loaded)
would report at least that. Started from this launcher (python -I -S, about 9 MiB, nothing
imported beyond os, sys, time and signal) a child's ru_maxrss is its own peak whenever that is
above the launcher's; every command the benchmark weighs is a Python process of 30 MiB or more.

The child gets its own session, the given files as stdin/stdout/stderr, and the launcher's
environment. On timeout the whole group is killed. wall = perf_counter around fork ... wait4.
"""

import os
import signal
import sys
import time


def main() -> int:
    timeout, stdin, stdout, stderr, *argv = sys.argv[1:]
    fds = [os.open(stdin, os.O_RDONLY), os.open(stdout, os.O_WRONLY), os.open(stderr, os.O_WRONLY)]
    timed_out = []
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: own session, the three files, then the command
        try:
            os.setsid()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)

    def expire(signum, frame):
        timed_out.append(True)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(timeout))
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    signal.setitimer(signal.ITIMER_REAL, 0)
    try:  # whatever the command left running in its group goes too
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    rc = os.waitstatus_to_exitcode(status)
    print(rc, repr(wall), repr(usage.ru_utime), repr(usage.ru_stime), usage.ru_maxrss, int(bool(timed_out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
