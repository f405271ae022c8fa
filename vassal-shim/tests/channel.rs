//! The shim driven byte by byte over a socketpair (a channel-level emperor): exact bytes on
//! start / reload / stop, the config channel (including uWSGI 2.0's double push), EOF,
//! exit codes, notify extensions, socket activation, the uWSGI fallback and standalone mode.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::*;

const READY: u8 = 1;
const CONFIG_REQUEST: u8 = 2;
const ACCEPTING: u8 = 5;
const LOYAL: u8 = 17;
const STOP_ME: u8 = 22;
const HEARTBEAT: u8 = 26;
const SOS: u8 = 30;

fn py_exec(args: &str) -> Vec<String> {
    vec![
        python().display().to_string(),
        testapp().display().to_string(),
    ]
    .into_iter()
    .chain(args.split_whitespace().map(str::to_string))
    .collect()
}

/// `python3 -c CODE`.
fn py_code(code: &str) -> Vec<String> {
    vec![
        python().display().to_string(),
        "-c".to_string(),
        code.to_string(),
    ]
}

/// A program that does nothing for 1,000 s.
fn sleeper() -> Vec<String> {
    vec!["sleep".to_string(), "1000".to_string()]
}

/// The shim with `opts` over `program`, no config channel, nothing changed in its command.
fn start_plain(opts: &[&str], program: &[String]) -> FakeEmperor {
    FakeEmperor::start(&shim_args(opts, program), false, |_| {})
}

fn shim_args<'a>(opts: &'a [&'a str], program: &'a [String]) -> Vec<&'a str> {
    let mut v: Vec<&str> = opts.to_vec();
    v.push("--");
    v.extend(program.iter().map(String::as_str));
    v
}

#[test]
fn bytes_on_start_reload_and_stop() {
    let port = free_port();
    let prog = py_exec(&format!("--port {port} --children"));
    let ready = format!("http://127.0.0.1:{port}/");
    let opts = ["--ready", &ready, "--loyal-after", "0.3"];
    let mut e = start_plain(&opts, &prog);
    assert_eq!(e.read_byte(SOON), Some(READY));
    assert_eq!(e.read_byte(SOON), Some(ACCEPTING));
    assert_eq!(e.read_byte(SOON), Some(LOYAL));
    let gen1 = http_get(port, "/").unwrap();
    assert!(gen1.contains("gen=1"), "{gen1}");
    let pid1 = pid_in(&gen1, "pid=");
    let child1 = pid_in(&e.proc.wait_for_line("child=", SOON), "child=");

    e.send(1);
    assert_eq!(e.read_byte(SOON), Some(READY));
    assert_eq!(e.read_byte(SOON), Some(ACCEPTING));
    assert_eq!(e.read_byte(SOON), Some(LOYAL));
    let gen2 = http_get(port, "/").unwrap();
    assert!(gen2.contains("gen=2"), "{gen2}");
    let pid2 = pid_in(&gen2, "pid=");
    wait_all_gone(&[pid1, child1], SOON);

    e.send(0);
    assert_eq!(
        e.read_byte(SOON),
        None,
        "the shim closes the channel when it exits"
    );
    let st = e.proc.wait_exit(SOON);
    assert_eq!(st.code(), Some(0));
    wait_all_gone(&[pid2], SOON);
    assert!(pids_with_cmdline(&format!("--port {port}")).is_empty());
}

#[test]
fn heartbeats_only_while_the_program_runs() {
    let prog = sleeper();
    let mut e = start_plain(&["--heartbeat", "0.2", "--loyal-after", "0"], &prog);
    assert_eq!(e.read_byte(SOON), Some(READY));
    assert_eq!(e.read_byte(SOON), Some(ACCEPTING));
    assert_eq!(e.read_byte(SOON), Some(HEARTBEAT));
    e.expect(LOYAL);
    e.expect(HEARTBEAT);
    e.expect(HEARTBEAT);
    let pid = pid_in(&e.proc.wait_for_line("started program", SOON), "program ");
    // Stopped: the shim notices (SIGCHLD with WUNTRACED) and goes quiet.
    // SAFETY: kill(2) on the program the shim started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    e.proc.wait_for_line("was stopped by SIGSTOP", SOON);
    // Drain what was in flight, then the channel stays silent for several periods.
    e.chan.set_nonblocking(true).unwrap();
    let mut sink = [0u8; 64];
    while std::io::Read::read(&mut e.chan, &mut sink).is_ok() {}
    e.chan.set_nonblocking(false).unwrap();
    e.chan
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut b = [0u8; 1];
    let quiet = std::io::Read::read(&mut e.chan, &mut b);
    assert!(quiet.is_err(), "heartbeat while stopped: {quiet:?} {b:?}");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    e.expect(HEARTBEAT);
    e.stop_cleanly();
}

#[test]
fn pushed_config_newest_wins_across_double_pushes() {
    let port = free_port();
    let ini = |version: u32| {
        format!(
            "[vassal-shim]\nexec = {}\nready = tcp:127.0.0.1:{port}\nloyal-after = 0.2\n\
             [app]\nversion = {version}\n",
            testapp_exec(&format!("--port {port}"))
        )
    };
    let mut e = FakeEmperor::start(&["--ini", "emperor://app.ini"], true, |_| {});
    e.push_config(&ini(1));
    e.expect_all(&[READY, ACCEPTING, LOYAL]);
    let body = http_get(port, "/").unwrap();
    assert!(body.contains("version = 1"), "{body}");

    // uWSGI 2.0: byte 1, a push right after it, then a second push answering byte 2.
    for version in [2, 3] {
        e.send(1);
        e.push_config(&ini(version));
        e.expect(CONFIG_REQUEST);
        e.push_config(&ini(version));
        e.expect(READY);
        e.expect(ACCEPTING);
        e.expect(LOYAL);
        let body = http_get(port, "/").unwrap();
        assert!(
            body.contains(&format!("version = {version}")),
            "stale config after reload {version}: {body}"
        );
    }
    e.proc.wait_for_line("config push #", SOON);
    e.send(2);
    assert_eq!(e.proc.wait_exit(SOON).code(), Some(0));
}

#[test]
fn config_pushed_only_on_request_like_uwsgi_2_1() {
    let port = free_port();
    let text = format!(
        "[vassal-shim]\nexec = {}\nready = tcp:127.0.0.1:{port}\n",
        testapp_exec(&format!("--port {port}"))
    );
    let mut e = FakeEmperor::start(&["--ini", "emperor://x.ini"], true, |_| {});
    e.push_config(&text);
    e.expect(READY);
    e.expect(ACCEPTING);
    e.send(1);
    e.expect(CONFIG_REQUEST);
    // The restart waits for the answer.
    e.push_config(&text.replace("[vassal-shim]", "[vassal-shim]\n; v2"));
    e.expect(READY);
    let body = http_get(port, "/").unwrap();
    assert!(body.contains("; v2"), "{body}");
    e.stop_cleanly();
}

#[test]
fn eof_stops_the_program() {
    let port = free_port();
    let prog = py_exec(&format!("--port {port}"));
    let mut e = start_plain(&[], &prog);
    e.expect(READY);
    let pid = pid_in(&e.proc.wait_for_line("listening", SOON), "pid=");
    let FakeEmperor { mut proc, chan, .. } = e;
    drop(chan);
    assert_eq!(proc.wait_exit(SOON).code(), Some(1));
    wait_all_gone(&[pid], SOON);
}

#[test]
fn stop_timeout_then_sigkill() {
    let prog: Vec<String> = [
        "sh",
        "-c",
        // The echo prints "TERM ignored"; the command line itself does not contain that text.
        "trap '' TERM; echo TERM ign''ored; while :; do sleep 1; done",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut e = start_plain(&["--stop-timeout", "0.5"], &prog);
    e.expect(READY);
    e.proc.wait_for_line("TERM ignored", SOON);
    e.stop_cleanly();
    e.proc.wait_for_line("did not stop within", SOON);
}

#[test]
fn exit_codes_pass_through_and_exile_codes_become_26() {
    for (code, want) in [(3, 3), (7, 26)] {
        let script = format!("exit {code}");
        let prog: Vec<String> = ["sh", "-c", &script]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut e = start_plain(&["--exile-codes", "7,9"], &prog);
        assert_eq!(
            e.proc.wait_exit(SOON).code(),
            Some(want),
            "program exit {code}"
        );
    }
}

#[test]
fn missing_program_fails_clearly() {
    let mut e = FakeEmperor::start(&["--", "/nonexistent/program"], false, |_| {});
    assert_eq!(e.proc.wait_exit(SOON).code(), Some(127));
    e.proc.wait_for_line("does not exist", SOON);
}

#[test]
fn notify_extensions_become_idle_and_sos_bytes() {
    let py = String::from(
        "import os,socket,time\n\
         s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n\
         p=os.environ['NOTIFY_SOCKET']\n\
         s.sendto(b'READY=1\\nSTATUS=up',p)\n\
         s.sendto(b'X_VASSAL_LOYAL=1',p)\n\
         s.sendto(b'X_VASSAL_SOS=1',p)\n\
         s.sendto(b'X_VASSAL_IDLE=1',p)\n\
         time.sleep(1000)\n",
    );
    let prog = py_code(&py);
    let mut e = start_plain(&["--ready", "notify"], &prog);
    assert_eq!(e.read_byte(SOON), Some(READY));
    assert_eq!(e.read_byte(SOON), Some(ACCEPTING));
    assert_eq!(e.read_byte(SOON), Some(LOYAL));
    assert_eq!(e.read_byte(SOON), Some(SOS));
    assert_eq!(e.read_byte(SOON), Some(STOP_ME));
    e.proc.wait_for_line("program status: up", SOON);
    e.stop_cleanly();
}

#[test]
fn listening_fd0_becomes_socket_activation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("od.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let lfd = listener.as_raw_fd();
    let prog = py_exec("");
    let mut e = FakeEmperor::start(&shim_args(&[], &prog), false, move |cmd: &mut Command| {
        // SAFETY: dup2(2) in the child, onto its stdin.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(lfd, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    e.expect(READY);
    let body = http_get_unix(&path, "/").unwrap();
    assert!(body.contains("listen_fds=1"), "{body}");
    e.proc.wait_for_line("LISTEN_FDS=1", SOON);
    e.stop_cleanly();
    drop(listener);
}

#[test]
fn reload_by_signal_keeps_the_program() {
    let py = "import os,signal,socket,time\n\
              p=os.environ['NOTIFY_SOCKET']\n\
              s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n\
              def hup(n,f):\n    print('got', 'HUP', flush=True)\n    s.sendto(b'READY=1',p)\n\
              signal.signal(signal.SIGHUP,hup)\n\
              s.sendto(b'READY=1',p)\n\
              while True: time.sleep(1)\n";
    let prog = py_code(py);
    let mut e = start_plain(&["--ready", "notify", "--reload", "signal:HUP"], &prog);
    e.expect(READY);
    e.expect(ACCEPTING);
    let started = e.proc.wait_for_line("started program", SOON);
    e.send(1);
    e.proc.wait_for_line("got HUP", SOON);
    e.expect(READY);
    e.expect(ACCEPTING);
    let out = e.proc.output();
    assert_eq!(
        out.matches("started program").count(),
        1,
        "no restart: {started}"
    );
    e.stop_cleanly();
}

/// `reload = signal:NAME` goes to the program's main process only (like `kill -HUP $MAINPID`):
/// a worker that keeps the default action for that signal (death) survives the reload, while
/// a stop still reaches the whole group.
#[test]
fn reload_by_signal_reaches_only_the_main_process() {
    // The worker answers SIGUSR2 with a line. Pending standard signals are delivered lowest
    // number first, so a SIGHUP that reached the worker kills it before the SIGUSR2 the test
    // sends after the reload can be answered: either the answer or the death is the event.
    // The worker announces its pid only once its handlers are in place, so the test's SIGUSR2
    // never meets the default action.
    let py = "import os,signal,socket,time\n\
              p=os.environ['NOTIFY_SOCKET']\n\
              s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n\
              def hup(n,f):\n    print('main got', 'HUP', flush=True)\n    s.sendto(b'READY=1',p)\n\
              signal.signal(signal.SIGHUP,hup)\n\
              w=os.fork()\n\
              if w==0:\n    signal.signal(signal.SIGHUP,signal.SIG_DFL)\n\
              \x20   signal.signal(signal.SIGUSR2,lambda n,f: print('worker', 'pong', flush=True))\n\
              \x20   print('wor'+'ker=%d' % os.getpid(), flush=True)\n\
              \x20   while True: time.sleep(1000)\n\
              s.sendto(b'READY=1',p)\n\
              while True: time.sleep(1)\n";
    let prog = py_code(py);
    let mut e = start_plain(&["--ready", "notify", "--reload", "signal:HUP"], &prog);
    e.expect(READY);
    e.expect(ACCEPTING);
    let worker = pid_in(&e.proc.wait_for_line("worker=", SOON), "worker=");
    for round in 1..=3 {
        e.send(1);
        e.proc.wait_for_new_line("main got HUP", SOON);
        e.expect(READY);
        e.expect(ACCEPTING);
        // SAFETY: kill(2) on the program's worker, started by this test's program.
        unsafe { libc::kill(worker, libc::SIGUSR2) };
        let answered = wait_until("the worker answers SIGUSR2 or dies", SOON, || {
            if e.proc.output().matches("worker pong").count() >= round {
                Some(true)
            } else if !alive(worker) {
                Some(false)
            } else {
                None
            }
        });
        assert!(
            answered,
            "reload {round}: the worker {worker} (default SIGHUP action) was killed by the reload signal"
        );
    }
    e.stop_cleanly();
    wait_all_gone(&[worker], SOON);
}

#[test]
fn ini_without_shim_section_runs_uwsgi() {
    let uwsgi = require_uwsgi();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("u.sock");
    let ini = dir.path().join("plain.ini");
    std::fs::write(
        &ini,
        format!(
            "[uwsgi]\nmaster = true\nprocesses = 1\nsocket = {}\n",
            sock.display()
        ),
    )
    .unwrap();
    let ini_s = ini.display().to_string();
    let mut e = FakeEmperor::start(&["--ini", &ini_s], false, move |cmd: &mut Command| {
        cmd.env("VASSAL_SHIM_UWSGI", &uwsgi);
    });
    e.proc.wait_for_line("handing over to", SOON);
    // Real uWSGI now speaks to our channel: ready from the master, accepting from worker 1.
    e.expect(READY);
    e.expect(ACCEPTING);
    e.proc.wait_for_line("has_emperor mode", SOON);
    e.send(0);
    e.proc.wait_exit(SOON);
}

#[test]
fn standalone_without_emperor() {
    let port = free_port();
    let mut cmd = Command::new(shim());
    cmd.arg("--ready")
        .arg(format!("tcp:127.0.0.1:{port}"))
        .arg("--")
        .args(py_exec(&format!("--port {port}")))
        .env_remove("UWSGI_EMPEROR_FD");
    let mut p = Proc::spawn(cmd);
    p.wait_for_line("no emperor", SOON);
    p.wait_for_line("is ready", SOON);
    let pid = pid_in(&http_get(port, "/").unwrap(), "pid=");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(SOON).code(), Some(0));
    wait_all_gone(&[pid], SOON);
}

#[test]
fn backlog_probe_sends_sos() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let lfd = listener.as_raw_fd();
    // A program that never accepts: connections pile up in the backlog.
    let prog = sleeper();
    let mut e = FakeEmperor::start(
        &shim_args(&["--sos-backlog", "2", "--loyal-after", "0"], &prog),
        false,
        move |cmd: &mut Command| {
            // SAFETY: dup2(2) in the child, onto its stdin.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(lfd, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    e.expect_all(&[READY, ACCEPTING, LOYAL]);
    let _waiting: Vec<_> = (0..3)
        .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
        .collect();
    e.expect(SOS);
    e.stop_cleanly();
    drop(listener);
}

/// A program that listens on `addr` (a unix socket path, or a port on 127.0.0.1) and never
/// accepts, so every connection stays in its backlog.
fn never_accepting(addr: &str) -> Vec<String> {
    let script = "import socket, sys, time\n\
                  a = sys.argv[1]\n\
                  if a.startswith('/'):\n    s = socket.socket(socket.AF_UNIX); s.bind(a)\n\
                  else:\n    s = socket.socket(); s.bind(('127.0.0.1', int(a)))\n\
                  s.listen(16)\n\
                  time.sleep(1000)\n";
    vec![
        python().display().to_string(),
        "-c".into(),
        script.into(),
        addr.into(),
    ]
}

/// `sos-backlog` on the program's own listener named by `ready`: real connections fill its
/// backlog (the shim measures it through its non-blocking sock_diag socket) until SOS.
fn backlog_of_the_programs_listener(ready: &str, addr: &str, connect: impl Fn()) {
    let prog = never_accepting(addr);
    let opts = [
        "--ready",
        ready,
        "--sos-backlog",
        "3",
        "--loyal-after",
        "0",
        // The health probe runs every heartbeat period and its connections would pile up in
        // the backlog too: an hour keeps them out of this test.
        "--heartbeat",
        "3600",
    ];
    let mut e = start_plain(&opts, &prog);
    e.expect_all(&[READY, ACCEPTING, LOYAL]);
    // The readiness probe's connection waits in the backlog too, but one is not three.
    for _ in 0..3 {
        connect();
    }
    e.expect(SOS);
    e.stop_cleanly();
}

#[test]
fn backlog_probe_of_a_unix_ready_socket_sends_sos() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let ready = format!("unix:{}", path.display());
    let held = std::cell::RefCell::new(Vec::new());
    backlog_of_the_programs_listener(&ready, path.to_str().unwrap(), || {
        held.borrow_mut()
            .push(std::os::unix::net::UnixStream::connect(&path).unwrap())
    });
}

#[test]
fn backlog_probe_of_a_tcp_ready_port_sends_sos() {
    let port = free_port();
    let ready = format!("tcp:127.0.0.1:{port}");
    let held = std::cell::RefCell::new(Vec::new());
    backlog_of_the_programs_listener(&ready, &port.to_string(), || {
        held.borrow_mut()
            .push(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
    });
}

#[test]
fn an_emperor_that_stops_reading_does_not_stall_the_shim() {
    let prog = sleeper();
    // Heartbeats every 10 ms into a channel nobody reads: a few hundred one-byte messages fill
    // a unix socket's send buffer.
    let mut e = start_plain(&["--heartbeat", "0.01", "--loyal-after", "0"], &prog);
    e.proc
        .wait_for_line("the emperor is not reading its channel", SOON);
    // The loop still runs: it reads the stop byte (the shim cannot write, but reads) and
    // stops the program.
    e.send(0);
    e.proc.wait_for_line("emperor says stop", SOON);
    assert_eq!(e.proc.wait_exit(SOON).code(), Some(0));
}

#[test]
fn program_gets_chdir_env_and_no_emperor_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    // One line (ini values are lines), double quotes inside single-quoted `exec` words.
    let py = "import os; \
              socks = [f for f in os.listdir(\"/proc/self/fd\") \
                       if os.path.exists(\"/proc/self/fd/\" + f) \
                       and os.readlink(\"/proc/self/fd/\" + f).startswith(\"socket:\")]; \
              print(\"CWD\", os.getcwd()); \
              print(\"FOO\", os.environ.get(\"FOO\"), \"BAR\", os.environ.get(\"BAR\")); \
              print(\"SOCKETS\", socks); \
              print(\"CONFIG\", open(os.environ[\"VASSAL_SHIM_CONFIG\"]).read().replace(chr(10), \"|\")); \
              print(\"EMPEROR_VARS\", [k for k in os.environ if k.startswith(\"UWSGI_EMPEROR\")])";
    let ini = format!(
        "[vassal-shim]\nexec = {} -c '{py}'\nenv = FOO=from ini\n",
        python().display()
    );
    let dir_s = dir.path().display().to_string();
    let mut e = FakeEmperor::start(
        &[
            "--ini",
            "emperor://cfg.ini",
            "--chdir",
            &dir_s,
            "--env",
            "BAR=2",
        ],
        true,
        |_| {},
    );
    e.push_config(&ini);
    e.proc.wait_for_line("EMPEROR_VARS [", SOON);
    let out = e.proc.output();
    let canon = std::fs::canonicalize(dir.path()).unwrap();
    assert!(out.contains(&format!("CWD {}", canon.display())), "{out}");
    assert!(out.contains("FOO from ini BAR 2"), "{out}");
    assert!(out.contains("SOCKETS []"), "{out}");
    assert!(out.contains("EMPEROR_VARS []"), "{out}");
    assert!(out.contains("CONFIG [vassal-shim]|"), "{out}");
    // The program exits 0 by itself: so does the shim.
    assert_eq!(e.proc.wait_exit(SOON).code(), Some(0));
}

#[test]
fn pushed_config_without_shim_section_goes_to_uwsgi_untouched() {
    let uwsgi = require_uwsgi();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("pushed.sock");
    let mut e = FakeEmperor::start(
        &["--ini", "emperor://pushed.ini"],
        true,
        move |cmd: &mut Command| {
            cmd.env("VASSAL_SHIM_UWSGI", &uwsgi);
        },
    );
    e.push_config(&format!(
        "[uwsgi]\nmaster = true\nprocesses = 1\nsocket = {}\n",
        sock.display()
    ));
    e.proc.wait_for_line("handing over to", SOON);
    e.expect(READY);
    e.expect(ACCEPTING);
    assert!(sock.exists(), "uWSGI read the pushed config");
    e.send(0);
    e.proc.wait_exit(SOON);
}

#[test]
fn reload_rereads_the_ini_file() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("app.ini");
    let write = |who: &str| {
        std::fs::write(
            &ini,
            format!(
                "[vassal-shim]\nexec = sh -c 'echo WHO=$WHO; exec sleep 1000'\nenv = WHO={who}\n\
                 loyal-after = 0\n"
            ),
        )
        .unwrap();
    };
    write("first");
    let ini_s = ini.display().to_string();
    let mut e = FakeEmperor::start(&["--ini", &ini_s, "--env", "OTHER=1"], false, |_| {});
    e.expect_all(&[READY, ACCEPTING, LOYAL]);
    e.proc.wait_for_line("WHO=first", SOON);
    write("second");
    e.send(1);
    e.expect_all(&[READY, ACCEPTING, LOYAL]);
    e.proc.wait_for_new_line("WHO=second", SOON);
    e.stop_cleanly();
}

#[test]
fn sigkilled_shim_leaves_no_program_process() {
    let port = free_port();
    let prog = py_exec(&format!("--port {port} --children"));
    let mut e = start_plain(&[], &prog);
    e.expect(READY);
    let child = pid_in(&e.proc.wait_for_line("child=", SOON), "child=");
    let escaped = pid_in(&e.proc.wait_for_line("escaped=", SOON), "escaped=");
    let pid = pid_in(&e.proc.wait_for_line("listening on port", SOON), "pid=");
    // SIGKILL to the shim alone (as an emperor's heartbeat check does).
    e.proc.signal(libc::SIGKILL);
    e.proc.wait_exit(SOON);
    // The shim's log carries the sentinel's lines too (it logs through the shim's stderr).
    wait_all_gone_or(&[pid, child, escaped], SOON, || e.proc.output());
    assert!(pids_with_cmdline(&format!("--port {port}")).is_empty());
}

/// The fields of /proc/PID/stat after the command name (field 3, the state, is index 0).
fn stat_fields(pid: i32) -> Vec<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = s.rsplit_once(')').unwrap();
    rest.split_whitespace().map(str::to_string).collect()
}

/// The sentinel holds nothing of the shim (no emperor channel, no other descriptor, not the
/// shim's command line or process group), and when the shim is SIGKILLed it kills what is left
/// of the program and removes the shim's private directory.
#[test]
fn sentinel_holds_only_its_pipe_and_cleans_up_after_a_sigkill() {
    let base = tempfile::tempdir().unwrap();
    let port = free_port();
    let prog = py_exec(&format!("--port {port} --children"));
    let mut e = FakeEmperor::start(&shim_args(&[], &prog), false, |c| {
        c.env("XDG_RUNTIME_DIR", base.path());
    });
    e.expect(READY);
    let escaped = pid_in(&e.proc.wait_for_line("escaped=", SOON), "escaped=");
    let pid = pid_in(&e.proc.wait_for_line("listening on port", SOON), "pid=");
    let shim_pid = e.proc.pid() as i32;
    let children =
        std::fs::read_to_string(format!("/proc/{shim_pid}/task/{shim_pid}/children")).unwrap();
    let sentinels: Vec<(i32, String)> = children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .filter_map(|c| {
            let cmd = std::fs::read(format!("/proc/{c}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.starts_with("vassal-shim-sentinel").then_some((c, cmd))
        })
        .collect();
    assert_eq!(sentinels.len(), 1, "one sentinel among {children:?}");
    let (sentinel, cmdline) = sentinels[0].clone();
    assert!(
        !cmdline.contains("--port"),
        "the sentinel does not look like the shim: {cmdline:?}"
    );
    let pgid = |p: i32| stat_fields(p)[2].parse::<i32>().unwrap();
    assert_eq!(pgid(sentinel), sentinel, "the sentinel has its own group");
    assert_ne!(pgid(sentinel), pgid(shim_pid));
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{sentinel}/fd"))
        .unwrap()
        .filter_map(|d| d.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    assert_eq!(
        fds,
        vec![0, 1, 2],
        "the sentinel holds no descriptor of the shim"
    );
    let rundir = std::fs::read_dir(base.path())
        .unwrap()
        .filter_map(|d| d.ok())
        .map(|d| d.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("vassal-shim.{shim_pid}.")))
        })
        .expect("the shim's private directory");

    e.proc.signal(libc::SIGKILL);
    e.proc.wait_exit(SOON);
    // Whatever the shim sent before it died, then EOF: nobody else holds its end.
    while e.read_byte(SOON).is_some() {}
    wait_all_gone(&[pid, escaped, sentinel], SOON);
    assert!(
        !rundir.exists(),
        "the sentinel removed {}",
        rundir.display()
    );
    e.proc
        .wait_for_line("vassal-shim sentinel: the shim died abruptly", SOON);
}

#[test]
fn never_ready_program_is_given_up_after_ready_timeout() {
    let prog = sleeper();
    let mut e = start_plain(&["--ready", "notify", "--ready-timeout", "0.3"], &prog);
    let pid = pid_in(&e.proc.wait_for_line("started program", SOON), "program ");
    assert_eq!(e.read_byte(SOON), None, "nothing sent, then EOF");
    assert_eq!(e.proc.wait_exit(SOON).code(), Some(1));
    e.proc.wait_for_line("not ready after", SOON);
    wait_all_gone(&[pid], SOON);
}

#[test]
fn dead_shims_private_dirs_are_swept_by_the_first_start_of_a_minute() {
    let base = tempfile::tempdir().unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = |n: u32| {
        let d = base.path().join(format!("vassal-shim.{dead}.left{n}"));
        std::fs::create_dir(&d).unwrap();
        d
    };
    let prog = sleeper();
    let start = || {
        FakeEmperor::start(&shim_args(&["--ready", "immediate"], &prog), false, |c| {
            c.env("XDG_RUNTIME_DIR", base.path());
        })
    };
    let first = stale(1);
    let mut a = start();
    a.expect(READY);
    assert!(
        !first.exists(),
        "the first shim removes a dead shim's directory"
    );
    // A burst of starts must not each read the whole directory: the next sweep is a minute
    // later, so this one stays for now.
    let second = stale(2);
    let mut b = start();
    b.expect(READY);
    assert!(
        second.exists(),
        "a start within the minute does not sweep again"
    );
    for e in [&mut a, &mut b] {
        e.send(0);
        assert_eq!(e.proc.wait_exit(SOON).code(), Some(0));
    }
}
