#!/usr/bin/env python3
"""A tiny HTTP program for the vassal-shim end-to-end tests. Knows nothing about uWSGI.

Options:
  --port N            listen on 127.0.0.1:N (otherwise: the systemd-activated fd 3)
  --notify            speak sd_notify: READY=1 and STATUS= once listening, WATCHDOG=1 pings
                      when WATCHDOG_USEC is set, STOPPING=1 on SIGTERM
  --idle-after-request  after the first request, send X_VASSAL_IDLE=1 (the shim's extension)
  --children          start a child in the same process group and one that escapes it (setsid)
  --sos               once listening, send X_VASSAL_SOS=1 (the shim's extension)
  --crash             exit 1 at once
  --startup-delay S   wait S seconds before listening

Every response body: "hello pid=<pid> gen=<VASSAL_SHIM_GENERATION> listen_fds=<LISTEN_FDS>
config=<contents of the file named by VASSAL_SHIM_CONFIG>".
"""
import os
import signal
import socket
import sys
import threading
import time


def notify(msg):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.sendto(msg.encode(), path)
    finally:
        s.close()


def log(msg):
    print("testapp pid=%d %s" % (os.getpid(), msg), flush=True)


def main():
    args = sys.argv[1:]
    opt = lambda name: name in args
    val = lambda name: args[args.index(name) + 1] if name in args else None

    if opt("--crash"):
        log("crashing")
        sys.exit(1)
    if val("--startup-delay"):
        time.sleep(float(val("--startup-delay")))

    if opt("--notify"):
        def on_term(signo, frame):
            notify("STOPPING=1")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)

    if opt("--children"):
        pid = os.fork()
        if pid == 0:
            os.execvp("sleep", ["sleep", "1000"])
        log("child=%d" % pid)
        pid = os.fork()
        if pid == 0:
            os.setsid()
            pid2 = os.fork()
            if pid2 == 0:
                os.execvp("sleep", ["sleep", "1001"])
            print("testapp pid=%d escaped=%d" % (os.getpid(), pid2), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)

    listen_fds = os.environ.get("LISTEN_FDS", "")
    if val("--port"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(val("--port"))))
        sock.listen(16)
        where = "port %s" % val("--port")
    else:
        if listen_fds != "1" or os.environ.get("LISTEN_PID") != str(os.getpid()):
            log("no --port and no socket activation (LISTEN_FDS=%r LISTEN_PID=%r)"
                % (listen_fds, os.environ.get("LISTEN_PID")))
            sys.exit(2)
        sock = socket.socket(fileno=3)
        where = "fd 3 (socket activation, %s)" % sock.getsockname()
    log("listening on %s gen=%s" % (where, os.environ.get("VASSAL_SHIM_GENERATION")))

    if opt("--notify"):
        notify("READY=1\nSTATUS=serving on %s" % where)
        usec = os.environ.get("WATCHDOG_USEC")
        if usec:
            interval = int(usec) / 2e6

            def ping():
                while True:
                    notify("WATCHDOG=1")
                    time.sleep(interval)
            threading.Thread(target=ping, daemon=True).start()

    if opt("--sos"):
        log("overloaded: asking for reinforcements")
        notify("X_VASSAL_SOS=1")

    served = 0
    while True:
        conn, _ = sock.accept()
        try:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data and b"\n\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            config = ""
            cpath = os.environ.get("VASSAL_SHIM_CONFIG")
            if cpath:
                try:
                    with open(cpath) as f:
                        config = f.read()
                except OSError as e:
                    config = "<%s>" % e
            body = ("hello pid=%d gen=%s listen_fds=%s config=%s" % (
                os.getpid(), os.environ.get("VASSAL_SHIM_GENERATION"), listen_fds, config)).encode()
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        except OSError:
            pass
        finally:
            conn.close()
        served += 1
        if served == 1 and opt("--idle-after-request"):
            log("idle: asking to be stopped")
            notify("X_VASSAL_IDLE=1")


if __name__ == "__main__":
    main()
