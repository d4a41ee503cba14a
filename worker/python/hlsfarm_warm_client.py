"""A trial's stand-in for `python hlsfarm_driver.py REQUEST RESULT` when a warm interpreter
serves its model family: run with `python -I -S` (no site, stdlib only: it starts in
milliseconds), it hands its stdin, stdout and stderr, folder, environment and process group to
the warm interpreter, which forks a child that runs the driver inside this trial's process
group; it then waits for the child's exit status and ends the same way (code or signal).
Killing this process's group (cancel, time limit, memory limit) kills the child with it.

    python -I -S hlsfarm_warm_client.py SOCKET PYTHON DRIVER REQUEST RESULT

When the warm interpreter is not there (it died, or never started) it runs the driver cold:
it becomes `PYTHON DRIVER REQUEST RESULT`.
"""
import json
import os
import signal
import socket
import sys
import time


def cold(python, driver, request, result, why):
    print(f"hlsfarm: the warm interpreter is not there ({why}): starting a cold one", file=sys.stderr, flush=True)
    os.execv(python, [python, driver, request, result])


def gone(pid):
    """The child has ended (or is a zombie nobody reaps)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def main():
    path, python, driver, request, result = sys.argv[1:6]
    message = json.dumps({"argv": [request, result], "cwd": os.getcwd(), "env": dict(os.environ),
                          "pgid": os.getpgid(0)}).encode() + b"\n"
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        sent = socket.send_fds(conn, [message], [0, 1, 2])
        conn.sendall(message[sent:])
    except OSError as e:
        cold(python, driver, request, result, e)
    pid = None
    for line in conn.makefile("rb"):
        answer = json.loads(line)
        if "pid" in answer:
            pid = answer["pid"]
        elif "exit" in answer:
            return answer["exit"]
        elif "signal" in answer:
            sig = answer["signal"]
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            time.sleep(1)
            return 128 + sig
    if pid is None:
        cold(python, driver, request, result, "it closed the connection before starting the trial")
    # The warm interpreter died while the trial ran: wait for the trial itself.
    print("hlsfarm: the warm interpreter ended during the trial; waiting for the trial's process",
          file=sys.stderr, flush=True)
    while not gone(pid):
        time.sleep(0.1)
    return 0 if os.path.exists(result) else 1


if __name__ == "__main__":
    sys.exit(main())
