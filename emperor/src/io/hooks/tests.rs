//! The hooks source: the stop-hook ledger against the real core, start hooks gating their
//! start, output logged through the loop, `--exec-as-emperor`.

use std::path::{Path, PathBuf};

use super::*;
use crate::io::source::Output;
use crate::io::test_loop::TestLoop;

#[test]
fn one_stop_hook_per_started_process() {
    let mut l = Ledger::default();
    l.started(Inc(1), "a.ini", Path::new("/v"));
    // A spawn that failed was never started: no stop hook.
    assert_eq!(l.released(Inc(2)), None);
    assert_eq!(
        l.released(Inc(1)),
        Some(("a.ini".to_string(), PathBuf::from("/v")))
    );
    // Released twice (e.g. reaped during a shutdown): still once.
    assert_eq!(l.released(Inc(1)), None);
}

/// uWSGI's §9.9 bug, against the real core with a fake clock: a shutdown sends every
/// vassal its stop byte, and the ledger yields exactly one stop hook per started process,
/// whatever releases it (reaped after the stop byte, after SIGKILL at mercy, twice).
#[test]
fn shutdown_sends_every_stop_byte_and_one_stop_hook_per_process() {
    use crate::core::{Action, Control, Core, CoreConfig, Entry, Event, ExitKind, FileStamp};
    use std::time::{Duration, Instant};
    use uwsgi_proto::EmperorMsg;
    let mut core = Core::new(CoreConfig::default());
    let mut ledger = Ledger::default();
    let now = Instant::now();
    let entries: Vec<Entry> = (0..5)
        .map(|i| Entry {
            key: format!("/v/{i}.ini"),
            name: format!("{i}.ini"),
            stamp: FileStamp::default(),
            content: None,
            uid: 1000,
            gid: 1000,
        })
        .collect();
    core.handle(
        now,
        Event::Scanned {
            monitor: 0,
            entries,
        },
    );
    let spawns: Vec<_> = std::iter::from_fn(|| core.poll_action())
        .filter_map(|a| match a {
            Action::Spawn(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(spawns.len(), 5);
    for (i, r) in spawns.iter().enumerate() {
        core.handle(
            now,
            Event::Spawned {
                inc: r.inc,
                pid: 100 + i as i32,
            },
        );
        ledger.started(r.inc, &r.name, Path::new("/v"));
    }
    std::iter::from_fn(|| core.poll_action()).for_each(drop);
    core.handle(now, Event::Control(Control::Shutdown));
    let stops: Vec<_> = std::iter::from_fn(|| core.poll_action())
        .filter(|a| {
            matches!(
                a,
                Action::Send {
                    msg: EmperorMsg::Stop,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(stops.len(), 5, "every vassal gets its stop byte");
    let mut hooks = Vec::new();
    // Four exit on the stop byte; the fifth ignores it and is killed at reload-mercy.
    for pid in 100..104 {
        core.handle(
            now,
            Event::Reaped {
                pid,
                exit: ExitKind::Code(0),
            },
        );
    }
    let later = now + Duration::from_secs(31);
    core.handle_timeout(later);
    core.handle(
        later,
        Event::Reaped {
            pid: 104,
            exit: ExitKind::Signal(9),
        },
    );
    let actions: Vec<_> = std::iter::from_fn(|| core.poll_action()).collect();
    assert!(actions.contains(&Action::Exit));
    for a in &actions {
        if let Action::Release { inc } = a {
            // The core's release, and a second one: still one hook.
            hooks.extend(ledger.released(*inc));
            hooks.extend(ledger.released(*inc));
        }
    }
    let mut names: Vec<String> = hooks.into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, ["0.ini", "1.ini", "2.ini", "3.ini", "4.ini"]);
}

#[test]
fn options_from_the_command_line_and_ini() {
    let d = tempfile::tempdir().unwrap();
    let ini = d.path().join("e.ini");
    std::fs::write(
        &ini,
        "[uwsgi]\nemperor = /v\nemperor-tyrant = true\nvassals-cap = chown\n\
         exec-as-vassal = true\nexec-as-vassal = echo 2\nemperor-use-clone = net,pid\n",
    )
    .unwrap();
    let o = crate::config::options::Options::parse_from_args([
        "emperor".as_ref(),
        "--ini".as_ref(),
        ini.as_os_str(),
        "--vassals-start-hook".as_ref(),
        "/bin/s".as_ref(),
        "--exec-as-emperor".as_ref(),
        "echo".as_ref(),
    ])
    .unwrap();
    assert!(o.tyrant && !o.tyrant_nofollow && !o.tyrant_initgroups);
    assert_eq!(o.emperor_cap.as_deref(), Some("chown"));
    assert_eq!(o.exec_as_vassal, ["true", "echo 2"]);
    assert_eq!(o.emperor_use_clone.as_deref(), Some("net,pid"));
    assert_eq!(o.vassals_start_hook.as_deref(), Some("/bin/s"));
    assert_eq!(o.exec_as_emperor, ["echo"]);
    use clap::CommandFactory;
    let help = crate::config::options::Options::command()
        .render_long_help()
        .to_string();
    for opt in [
        "--emperor-tyrant",
        "--emperor-tyrant-nofollow",
        "--emperor-tyrant-initgroups",
        "--vassals-start-hook",
        "--vassals-stop-hook",
        "--exec-as-vassal",
        "--exec-as-emperor",
        "--emperor-cap",
        "--emperor-use-clone",
    ] {
        assert!(help.contains(opt), "{opt} missing from --help");
    }
}

fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn req(inc: u64, name: &str) -> SpawnRequest {
    SpawnRequest {
        inc: Inc(inc),
        name: name.into(),
        run_start_hook: true,
        ..SpawnRequest::default()
    }
}

/// Waits for every hook child, tells the hooks, and reads their pipes to EOF; the outputs.
fn finish_all(h: &mut Hooks, lp: &mut TestLoop) -> Vec<Output> {
    use nix::sys::wait::{waitpid, WaitStatus};
    let pids: Vec<i32> = h.pids.keys().copied().collect();
    for pid in pids {
        let exit = match waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap() {
            WaitStatus::Exited(_, c) => ExitKind::Code(c),
            WaitStatus::Signaled(_, s, _) => ExitKind::Signal(s as i32),
            other => panic!("{other:?}"),
        };
        assert!(h.reaped(&mut lp.cx(), pid, exit));
    }
    let keys: Vec<u64> = h.runs.keys().copied().collect();
    for k in keys {
        h.ready(&mut lp.cx(), k);
    }
    assert!(!h.busy() && h.runs.is_empty(), "{:?}", h.runs);
    assert!(lp.tokens.is_empty(), "every pipe is deregistered");
    lp.take()
}

fn hook_done(out: &[Output]) -> Vec<Inc> {
    out.iter()
        .map(|o| match o {
            Output::Core(Event::StartHookDone { inc }) => *inc,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_start_hook_answers_when_it_is_reaped() {
    let d = tempfile::tempdir().unwrap();
    let seen = d.path().join("seen");
    let hook = d.path().join("hook");
    script(
        &hook,
        &format!(
            "echo \"$1 $UWSGI_VASSALS_DIR\" > {}; echo to the log",
            seen.display()
        ),
    );
    let mut h = Hooks::new(HookConfig {
        start: Some(hook.display().to_string()),
        ..HookConfig::default()
    });
    let mut lp = TestLoop::new();
    h.start_hook(&mut lp.cx(), &req(7, "a.ini"), d.path());
    assert!(lp.take().is_empty(), "the start waits for the hook");
    assert!(h.busy());
    assert_eq!(lp.tokens.len(), 1, "its output pipe is watched");
    assert_eq!(hook_done(&finish_all(&mut h, &mut lp)), [Inc(7)]);
    let dir = std::fs::canonicalize(d.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        format!("a.ini {}\n", dir.display())
    );
    // Not a hook's pid: the vassal's.
    assert!(!h.reaped(&mut lp.cx(), 1, ExitKind::Code(0)));
}

#[test]
fn as_a_launcher_it_answers_later_and_without_a_runnable_hook_at_once() {
    let job = Job {
        req: req(3, "b.ini"),
        plan: crate::spawn::Plan {
            programs: vec![],
            argv: vec![],
            env: vec![],
            cwd: "/".into(),
            with_config: false,
            stdin: None,
        },
        setup: crate::spawn::isolation::ChildSetup::default(),
    };
    let mut lp = TestLoop::new();
    let mut h = Hooks::new(HookConfig {
        start: Some("true".into()),
        ..HookConfig::default()
    });
    assert!(matches!(
        h.launch(&job, &mut lp.cx()),
        Ok(Launched::Pending)
    ));
    assert_eq!(hook_done(&finish_all(&mut h, &mut lp)), [Inc(3)]);
    for start in [None, Some("/nonexistent/hook".to_string())] {
        let mut h = Hooks::new(HookConfig {
            start,
            ..HookConfig::default()
        });
        assert!(matches!(
            h.launch(&job, &mut lp.cx()),
            Ok(Launched::Pending)
        ));
        assert_eq!(hook_done(&lp.take()), [Inc(3)]);
        assert!(!h.busy());
    }
}

#[test]
fn a_cancelled_start_hook_is_killed_once() {
    let mut h = Hooks::new(HookConfig {
        start: Some("sleep".into()),
        ..HookConfig::default()
    });
    let mut lp = TestLoop::new();
    // `sleep NAME` with NAME = 30.
    h.start_hook(&mut lp.cx(), &req(1, "30"), Path::new("/"));
    h.cancel_starts();
    h.cancel_starts();
    let out = finish_all(&mut h, &mut lp);
    assert_eq!(
        hook_done(&out),
        [Inc(1)],
        "the core decides the start is off"
    );
}

#[test]
fn exec_as_emperor_sees_the_vassal_and_one_stop_hook_follows_its_release() {
    let d = tempfile::tempdir().unwrap();
    let seen = d.path().join("seen");
    let stop = d.path().join("stop");
    script(&stop, &format!("echo \"stop $1\" >> {}", seen.display()));
    let mut h = Hooks::new(HookConfig {
        stop: Some(stop.display().to_string()),
        exec_as_emperor: vec![format!(
            "echo \"$UWSGI_VASSAL_CONFIG $UWSGI_VASSAL_PID $UWSGI_VASSAL_UID $UWSGI_VASSAL_GID\" >> {}",
            seen.display()
        )],
        ..HookConfig::default()
    });
    let mut lp = TestLoop::new();
    h.after_start(&mut lp.cx(), Inc(9), "c.ini", d.path(), 4242, (1000, 1001));
    assert!(finish_all(&mut h, &mut lp).is_empty());
    h.released(&mut lp.cx(), Inc(9));
    h.released(&mut lp.cx(), Inc(9));
    assert!(finish_all(&mut h, &mut lp).is_empty());
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "c.ini 4242 1000 1001\nstop c.ini\n"
    );
    // Never started: no stop hook.
    h.released(&mut lp.cx(), Inc(10));
    assert!(h.pids.is_empty());
}
