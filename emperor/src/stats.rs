//! The stats document: uWSGI's emperor keys (same names, order and meanings, valid escaped
//! JSON) plus fields that help operators (`state`, `last_exit`, `restarts`, per-vassal
//! `throttle_level`/`attempt`, `channel_unknown_bytes`, `sos`).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::core::{Core, ExitKind, State, Vassal};

/// Process facts shown at the top of the document.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    /// Emperor pid.
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// Its cwd.
    pub cwd: String,
    /// Monitor arguments as given.
    pub monitors: Vec<String>,
    /// How vassals' process trees are owned: `cgroup2:/PATH` or `pgroup`.
    pub process_tree: String,
    /// The cgroup (path in the hierarchy) of each running incarnation that has one.
    pub cgroups: std::collections::HashMap<crate::core::Inc, String>,
}

#[derive(Serialize, Debug)]
struct Doc<'a> {
    version: &'static str,
    pid: u32,
    uid: u32,
    gid: u32,
    cwd: &'a str,
    emperor: &'a [String],
    emperor_tyrant: u8,
    /// The largest current backoff in ms (uWSGI 2.0 always says 0 here).
    throttle_level: u64,
    /// `cgroup2:/PATH` (each vassal in `PATH/vassals/NAME`) or `pgroup`.
    process_tree: &'a str,
    vassals: Vec<VassalDoc<'a>>,
    blacklist: Vec<BlacklistDoc<'a>>,
}

#[derive(Serialize, Debug)]
struct VassalDoc<'a> {
    id: &'a str,
    pid: i64,
    born: i64,
    last_mod: i64,
    last_heartbeat: i64,
    loyal: u8,
    ready: u8,
    accepting: u8,
    last_loyal: i64,
    last_ready: i64,
    last_accepting: i64,
    first_run: i64,
    last_run: i64,
    cursed: i64,
    zerg: u8,
    on_demand: &'a str,
    /// 1 while waiting for a spawn command (uWSGI 2.1's key).
    suspended: u8,
    /// 1 when the process was adopted from a fork server (uWSGI 2.1's key).
    adopted: u8,
    uid: u32,
    gid: u32,
    monitor: &'a str,
    respawns: u64,
    // Additions.
    state: &'static str,
    config: &'a str,
    restarts: u64,
    last_exit: Option<String>,
    throttle_level: u64,
    attempt: u32,
    next_attempt_in_ms: Option<u64>,
    sos: u64,
    channel_unknown_bytes: u64,
    /// The cgroup of the running process (path in the hierarchy), `null` without one.
    cgroup: Option<&'a str>,
}

#[derive(Serialize, Debug)]
struct BlacklistDoc<'a> {
    id: &'a str,
    throttle_level: u64,
    attempt: u32,
    first_attempt: i64,
    last_attempt: i64,
}

/// Converts monotonic instants to Unix seconds around one (now, wall) pair.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Monotonic now.
    pub now: Instant,
    /// Wall-clock now.
    pub wall: SystemTime,
}

impl Clock {
    /// Unix seconds of `t` (0 for `None`, as uWSGI prints unset times).
    pub fn unix(&self, t: Option<Instant>) -> i64 {
        let Some(t) = t else { return 0 };
        let wall = if t <= self.now {
            self.wall.checked_sub(self.now - t)
        } else {
            self.wall.checked_add(t - self.now)
        };
        wall.and_then(|w| w.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

fn exit_text(e: ExitKind) -> String {
    match e {
        ExitKind::Code(c) => format!("exit {c}"),
        ExitKind::Signal(s) => format!("signal {s}"),
    }
}

/// The stats JSON (pretty-printed, like uWSGI without `--stats-minified`).
pub fn render(core: &Core, info: &ProcessInfo, clock: Clock) -> String {
    let mut vs: Vec<&Vassal> = core.vassals().collect();
    vs.sort_by(|a, b| a.name.cmp(&b.name).then(a.key.cmp(&b.key)));
    let vassals = vs
        .iter()
        .map(|v| {
            let ch = core.channel(v);
            let cursed = match v.state {
                State::Stopping(s) => clock.unix(Some(s.since)),
                _ => 0,
            };
            let next = match v.state {
                State::Waiting(w) => {
                    Some(w.at.saturating_duration_since(clock.now).as_millis() as u64)
                }
                _ => None,
            };
            VassalDoc {
                id: &v.name,
                pid: v.state.pid().map(i64::from).unwrap_or(-1),
                born: clock.unix(Some(v.born)),
                last_mod: v.stamp.mtime_secs(),
                last_heartbeat: clock.unix(ch.last_heartbeat),
                loyal: u8::from(ch.loyal),
                ready: u8::from(ch.ready),
                accepting: u8::from(ch.accepting),
                last_loyal: clock.unix(ch.last_loyal),
                last_ready: clock.unix(ch.last_ready),
                last_accepting: clock.unix(ch.last_accepting),
                first_run: clock.unix(v.first_run),
                last_run: clock.unix(v.last_run),
                cursed,
                zerg: u8::from(v.zerg.is_some()),
                on_demand: v.on_demand().unwrap_or(""),
                suspended: u8::from(v.suspended()),
                adopted: u8::from(v.adopted()),
                uid: v.uid,
                gid: v.gid,
                monitor: info
                    .monitors
                    .get(v.monitor)
                    .map(String::as_str)
                    .unwrap_or(""),
                respawns: v.respawns,
                state: v.state.name(),
                config: &v.key,
                restarts: v.restarts,
                last_exit: v.last_exit.map(exit_text),
                throttle_level: v.backoff.level_ms,
                attempt: v.backoff.attempt,
                next_attempt_in_ms: next,
                sos: v.sos,
                channel_unknown_bytes: v.unknown_bytes,
                cgroup: v
                    .state
                    .process()
                    .and_then(|p| info.cgroups.get(&p.inc).map(String::as_str)),
            }
        })
        .collect();
    let blacklist: Vec<BlacklistDoc<'_>> = vs
        .iter()
        .filter(|v| v.backoff.attempt > 0)
        .map(|v| BlacklistDoc {
            id: &v.name,
            throttle_level: v.backoff.level_ms,
            attempt: v.backoff.attempt,
            first_attempt: clock.unix(v.backoff.first),
            last_attempt: clock.unix(v.backoff.last),
        })
        .collect();
    let doc = Doc {
        version: crate::STATS_VERSION,
        pid: info.pid,
        uid: info.uid,
        gid: info.gid,
        cwd: &info.cwd,
        emperor: &info.monitors,
        emperor_tyrant: u8::from(core.tyrant()),
        throttle_level: blacklist
            .iter()
            .map(|b| b.throttle_level)
            .max()
            .unwrap_or(0),
        process_tree: &info.process_tree,
        vassals,
        blacklist,
    };
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// Wraps `body` as uWSGI's `--stats-http` answer.
pub fn http_response(body: &str) -> String {
    format!(
        "HTTP/1.0 200 OK\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CoreConfig, Entry, Event, FileStamp};

    #[test]
    fn document_is_valid_escaped_json_with_uwsgi_keys() {
        let mut core = Core::new(CoreConfig::default());
        let now = Instant::now();
        core.handle(
            now,
            Event::Scanned {
                monitor: 0,
                entries: vec![Entry {
                    key: "/v/we\"ird\n.ini".into(),
                    name: "we\"ird\n.ini".into(),
                    stamp: FileStamp::default(),
                    content: None,
                    uid: 1,
                    gid: 2,
                }],
            },
        );
        let info = ProcessInfo {
            pid: 1,
            uid: 0,
            gid: 0,
            cwd: "/".into(),
            monitors: vec!["/v".into()],
            process_tree: "pgroup".into(),
            cgroups: Default::default(),
        };
        let s = render(
            &core,
            &info,
            Clock {
                now,
                wall: SystemTime::now(),
            },
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        for k in [
            "version",
            "pid",
            "uid",
            "gid",
            "cwd",
            "emperor",
            "emperor_tyrant",
            "throttle_level",
            "process_tree",
            "vassals",
            "blacklist",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        let vassal = &v["vassals"][0];
        assert_eq!(vassal["id"], "we\"ird\n.ini");
        for k in [
            "pid",
            "born",
            "last_mod",
            "last_heartbeat",
            "loyal",
            "ready",
            "accepting",
            "last_loyal",
            "last_ready",
            "last_accepting",
            "first_run",
            "last_run",
            "cursed",
            "zerg",
            "on_demand",
            "suspended",
            "adopted",
            "uid",
            "gid",
            "monitor",
            "respawns",
            "state",
            "restarts",
            "last_exit",
        ] {
            assert!(vassal.get(k).is_some(), "{k}");
        }
        assert_eq!(vassal["monitor"], "/v");
        assert!(http_response(&s).starts_with("HTTP/1.0 200 OK\r\n"));
    }
}
