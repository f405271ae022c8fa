//! --vassals-start-hook, --vassals-stop-hook, --exec-as-vassal and --exec-as-emperor end to
//! end, with shell-script vassals that speak the channel protocol (no uWSGI needed).

mod common;

use std::path::Path;

use common::*;

fn script(path: &Path, body: &str) {
    write_executable(path, &format!("#!/bin/bash\n{body}\n"));
}

/// A vassal (argv: wrapper --ini NAME) that reports ready + loyal, logs the first byte the
/// emperor sends it, and exits.
fn vassal_script(work: &Path) -> std::path::PathBuf {
    let p = work.join("vassal.sh");
    script(
        &p,
        "fd=$UWSGI_EMPEROR_FD\nprintf '\\001\\021' >&$fd\n\
         b=$(dd bs=1 count=1 <&$fd 2>/dev/null | od -An -tu1 | tr -d ' ')\n\
         echo \"fake vassal $2 received byte ${b:-none}\" >&2\nexit 0",
    );
    p
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn start_and_stop_hooks_run_once_each_never_block_the_loop_and_shutdown_still_stops_everyone() {
    let (work, dir) = work_dir();
    let wrapper = vassal_script(work.path());
    let gate = work.path().join("gate");
    let start_log = work.path().join("start.log");
    let stop_log = work.path().join("stop.log");
    // The start hook of slow.ini waits for the gate file (bounded): meanwhile the emperor must
    // keep governing fast.ini and answering stats.
    script(
        &work.path().join("start.sh"),
        &format!(
            "echo \"$1\" >> {sl}\necho \"start $1 dir=$UWSGI_VASSALS_DIR\"\n\
             if [ \"$1\" = slow.ini ]; then for i in $(seq 600); do [ -e {gate} ] && break; sleep 0.1; done; fi\n\
             echo \"start $1 done\" >&2",
            sl = start_log.display(),
            gate = gate.display()
        ),
    );
    script(
        &work.path().join("stop.sh"),
        &format!(
            "echo \"$1\" >> {sl}\necho \"stop $1 dir=$UWSGI_VASSALS_DIR\"",
            sl = stop_log.display()
        ),
    );
    std::fs::write(dir.join("slow.ini"), "[uwsgi]\n").unwrap();
    std::fs::write(dir.join("fast.ini"), "[uwsgi]\n").unwrap();
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-wrapper",
            wrapper.to_str().unwrap(),
            "--vassals-start-hook",
            work.path().join("start.sh").to_str().unwrap(),
            "--vassals-stop-hook",
            work.path().join("stop.sh").to_str().unwrap(),
            "--reload-mercy",
            "20",
        ],
    );
    let real_dir = std::fs::canonicalize(&dir).unwrap();
    emp.wait_for_line(
        &format!(
            "vassals-start-hook for vassal fast.ini: start fast.ini dir={}",
            real_dir.display()
        ),
        T,
    );
    let fast = wait_vassal(&mut emp, &st, "fast.ini", T, "loyal", |v| v["loyal"] == 1);
    let fast_pid = fast["pid"].as_i64().unwrap() as i32;
    // slow.ini is still waiting for its hook: no process yet, and the loop is alive.
    let slow = vassal(&stats(&st), "slow.ini").unwrap();
    assert_eq!(slow["state"], "starting", "{slow}");
    assert!(!emp.output().contains("started vassal slow.ini"));
    std::fs::write(&gate, "").unwrap();
    emp.wait_for_line(
        "vassals-start-hook for vassal slow.ini: start slow.ini done",
        T,
    );
    let slow = wait_vassal(&mut emp, &st, "slow.ini", T, "loyal", |v| v["loyal"] == 1);
    let slow_pid = slow["pid"].as_i64().unwrap() as i32;

    // Removing a file: stop byte, then exactly one stop hook after the process is gone.
    std::fs::remove_file(dir.join("fast.ini")).unwrap();
    emp.wait_for_line("fake vassal fast.ini received byte 0", T);
    emp.wait_for_line(
        &format!(
            "vassals-stop-hook for vassal fast.ini: stop fast.ini dir={}",
            real_dir.display()
        ),
        T,
    );
    assert!(!exists(fast_pid));

    // Shutdown (uWSGI's §9.9 bug): every vassal still gets its stop byte, each stop hook runs
    // once, and the emperor waits for them.
    emp.signal(libc::SIGTERM);
    emp.wait_for_line("fake vassal slow.ini received byte 0", T);
    emp.wait_for_line("vassals-stop-hook for vassal slow.ini: stop slow.ini", T);
    assert!(emp.wait_exit(T).success());
    let out = emp.output();
    assert!(!out.contains("reload-mercy expired"), "{out}");
    wait_gone(slow_pid, T);
    let mut started = lines(&start_log);
    started.sort();
    let mut stopped = lines(&stop_log);
    stopped.sort();
    assert_eq!(started, ["fast.ini", "slow.ini"]);
    assert_eq!(stopped, ["fast.ini", "slow.ini"]);
    assert_eq!(
        out.matches("vassals-stop-hook for vassal slow.ini (pid")
            .count(),
        1,
        "{out}"
    );
}

#[test]
fn exec_as_vassal_gates_the_start_and_exec_as_emperor_sees_the_vassal() {
    let (work, dir) = work_dir();
    let wrapper = vassal_script(work.path());
    let allow = work.path().join("allow");
    let ppid = work.path().join("ppid");
    let gate_cmd = format!(
        "test -e {} && echo $PPID > {}",
        allow.display(),
        ppid.display()
    );
    let app = dir.join("app.ini");
    std::fs::write(&app, "[uwsgi]\n").unwrap();
    let (mut emp, st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-wrapper",
            wrapper.to_str().unwrap(),
            "--exec-as-vassal",
            &gate_cmd,
            "--exec-as-emperor",
            "echo \"cfg=$UWSGI_VASSAL_CONFIG pid=$UWSGI_VASSAL_PID uid=$UWSGI_VASSAL_UID gid=$UWSGI_VASSAL_GID\"",
            "--emperor-throttle",
            "100",
        ],
    );
    // Failing command: the start is aborted with a line naming the command and the vassal.
    emp.wait_for_line(
        &format!("exec-as-vassal command `{gate_cmd}` failed for vassal app.ini (exit status 1): not starting it"),
        T,
    );
    emp.wait_for_line("vassal app.ini (pid:", T);
    emp.wait_for_line("died before being loyal (exit status 1)", T);
    // Allowed: the next attempt passes the gate and the vassal runs.
    std::fs::write(&allow, "").unwrap();
    let v = wait_vassal(&mut emp, &st, "app.ini", T, "loyal", |v| v["loyal"] == 1);
    let pid = v["pid"].as_i64().unwrap() as i32;
    // The command ran inside the vassal process (its parent), before the exec.
    assert_eq!(
        std::fs::read_to_string(&ppid).unwrap().trim(),
        pid.to_string()
    );
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    emp.wait_for_line(
        &format!("exec-as-emperor for vassal app.ini: cfg=app.ini pid={pid} uid={uid} gid={gid}"),
        T,
    );
    emp.wait_for_line("exec-as-emperor for vassal app.ini (pid", T);
}

#[test]
fn a_hung_start_hook_does_not_hold_the_shutdown() {
    let (work, dir) = work_dir();
    let wrapper = vassal_script(work.path());
    let hook = work.path().join("hang.sh");
    script(&hook, "echo hanging\nexec sleep 600");
    std::fs::write(dir.join("stuck.ini"), "[uwsgi]\n").unwrap();
    let (mut emp, _st) = start_emperor(
        work.path(),
        &dir,
        &[
            "--emperor-wrapper",
            wrapper.to_str().unwrap(),
            "--vassals-start-hook",
            hook.to_str().unwrap(),
        ],
    );
    emp.wait_for_line("vassals-start-hook for vassal stuck.ini: hanging", T);
    emp.signal(libc::SIGTERM);
    emp.wait_for_line("killing the start hook of vassal stuck.ini", T);
    emp.wait_for_line(
        "not started after its start hook: the emperor is shutting down",
        T,
    );
    emp.wait_for_line("The Emperor is buried.", T);
    assert!(emp.wait_exit(T).success());
    assert!(!emp.output().contains("started vassal stuck.ini"));
}
