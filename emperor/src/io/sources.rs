//! The loop's sources and launchers, built from the options: one struct, so the loop itself
//! has a handful of fields whatever the features.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tracing::info;

use super::channels::Channels;
use super::error::RunError;
use super::executor::Executor;
use super::monitors::Monitors;
use super::notify::Notifier;
use super::parent::Parent;
use super::signals::Signals;
use super::source::Cx;
use super::stats::StatsServer;
use crate::config::options::Options;
use crate::core::CoreConfig;
use crate::monitor::{parse_monitor, Scanner};
use crate::spawn::plan::Settings;
use crate::spawn::{vassal_env, ArgvConfig, Spawner};
use crate::stats::ProcessInfo;

/// Everything the loop reads and writes, besides the poll, the tokens and the core.
#[derive(Debug)]
pub struct Sources {
    /// The emperor's working directory.
    pub cwd: PathBuf,
    /// What the stats document says about the emperor process.
    pub info: ProcessInfo,
    /// The last `/metrics` exposition (rendered at most once a second).
    pub metrics: crate::metrics::Cache,
    /// Signals.
    pub signals: Signals,
    /// The config monitors.
    pub monitors: Monitors,
    /// The vassal channels.
    pub channels: Channels,
    /// The stats server.
    pub stats: Option<StatsServer>,
    /// Our own emperor's channel (sub-emperor mode).
    pub parent: Option<Parent>,
    /// systemd's notification socket.
    pub notify: Option<Notifier>,
    /// The command socket.
    pub command: Option<crate::io::command::CommandSocket>,
    /// On-demand listeners.
    pub ondemand: crate::io::ondemand::OnDemand,
    /// The spawn executor and its launchers.
    pub exec: Executor,
    /// A child may have exited: reap at the end of the turn.
    pub reap_needed: bool,
    /// `--pidfile`, removed at exit.
    pub pidfile: Option<PathBuf>,
}

/// The core's settings from the options.
pub fn core_config(opts: &Options) -> CoreConfig {
    CoreConfig {
        freq: Duration::from_secs(opts.freq.max(1)),
        required_heartbeat: Duration::from_secs(opts.required_heartbeat),
        curse_tolerance: Duration::from_secs(opts.curse_tolerance),
        throttle_ms: opts.throttle,
        max_throttle_ms: opts.max_throttle,
        no_blacklist: opts.no_blacklist,
        graceful_shutdown: opts.graceful_shutdown,
        reload_mercy: Duration::from_secs(opts.reload_mercy),
        seed: seed(),
        tyrant: opts.tyrant,
        activation: crate::io::ondemand::activation_config(opts),
        start_hook: opts.vassals_start_hook.is_some(),
    }
}

impl Sources {
    /// Sets every source up (monitors, signals, sockets, pidfile) without scanning yet.
    pub fn new(opts: &Options, cx: &mut Cx<'_>) -> Result<Sources, RunError> {
        let cwd = std::env::current_dir().map_err(RunError::Cwd)?;
        let monitors = opts.all_monitors();
        if monitors.is_empty() {
            return Err(RunError::NoMonitor);
        }
        let mut scanners = Vec::new();
        for m in &monitors {
            let spec = parse_monitor(m, &cwd)?;
            let mut s = Scanner::new(spec, opts.extra_extension.clone(), opts.nofollow);
            s.set_owner_nofollow(opts.tyrant_nofollow);
            scanners.push(s);
        }
        let signals = Signals::new(cx).map_err(RunError::lp("install signal handlers"))?;
        let freq = Duration::from_secs(opts.freq.max(1));
        let monitors_src =
            Monitors::new(scanners, freq, cx).map_err(RunError::lp("initialise inotify"))?;
        let stats = match &opts.stats {
            Some(addr) => {
                let s = StatsServer::bind(addr, &cwd, opts.stats_http, cx)?;
                info!("stats server enabled on {addr}");
                Some(s)
            }
            None => None,
        };
        let command = match &opts.command_socket {
            Some(addr) => Some(crate::io::command::CommandSocket::bind(
                addr,
                &cwd,
                opts.command_allow_udp,
                cx,
            )?),
            None => None,
        };
        let exec = executor(opts, &cwd)?;
        let pid = std::process::id();
        if let Some(p) = &opts.pidfile {
            std::fs::write(p, format!("{pid}\n")).map_err(|err| RunError::Pidfile {
                path: p.clone(),
                err,
            })?;
        }
        if let Some(name) = &opts.procname {
            set_procname(name);
        }
        let info = ProcessInfo {
            pid,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            cwd: cwd.display().to_string(),
            monitors,
            process_tree: exec.tree.label(),
            cgroups: HashMap::new(),
        };
        Ok(Sources {
            cwd,
            info,
            metrics: crate::metrics::Cache::default(),
            signals,
            monitors: monitors_src,
            channels: Channels::new(),
            stats,
            parent: None,
            notify: Notifier::from_env(),
            command,
            ondemand: crate::io::ondemand::OnDemand::new(opts),
            exec,
            reap_needed: false,
            pidfile: opts.pidfile.clone(),
        })
    }

    /// The emperor's uid and gid.
    pub fn me(&self) -> (u32, u32) {
        (self.info.uid, self.info.gid)
    }

    /// At exit: kills what the vassals left, removes cgroups, sockets and the pidfile.
    pub fn cleanup(&mut self) {
        // Every vassal is reaped by now: kill what they left and remove the cgroups.
        self.exec.tree.shutdown();
        self.ondemand.cleanup();
        if let Some(c) = &self.command {
            c.cleanup();
        }
        if let Some(s) = &self.stats {
            s.cleanup();
        }
        if let Some(p) = &self.pidfile {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The executor: spawn settings, isolation, process tree (the emperor moves into its own leaf
/// cgroup before anything is spawned), fork server, hooks.
fn executor(opts: &Options, cwd: &std::path::Path) -> Result<Executor, RunError> {
    // Relative wrapper and template paths mean what they mean under uWSGI: relative to the
    // vassal's working directory (its monitor directory for dir monitors).
    let argv = ArgvConfig {
        wrapper: opts.wrapper.clone(),
        overrides: opts.wrapper_override.clone(),
        fallbacks: opts.wrapper_fallback.clone(),
        magic_exec: opts.magic_exec,
        extra_ext: opts.extra_extension.clone(),
        inherit_before: opts.vassals_inherit_before.clone(),
        include_before: opts.vassals_include_before.clone(),
        set: opts.vassals_set.clone(),
        inherit: opts.vassals_inherit.clone(),
        include: opts.vassals_include.clone(),
    };
    let isolation = crate::spawn::isolation::Isolation::new(
        opts.emperor_use_clone.as_deref(),
        opts.emperor_cap.as_deref(),
    )?;
    let mode: crate::spawn::cgroup::Mode = opts.process_tree.parse()?;
    let tree = crate::spawn::cgroup::Tree::setup(mode)?;
    let fork = crate::io::forkserver::ForkClient::setup(opts, cwd)?;
    let hooks = crate::io::hooks::Hooks::new(crate::io::hooks::HookConfig {
        start: opts.vassals_start_hook.clone(),
        stop: opts.vassals_stop_hook.clone(),
        exec_as_vassal: opts.exec_as_vassal.clone(),
        exec_as_emperor: opts.exec_as_emperor.clone(),
    });
    Ok(Executor {
        spawner: Spawner::new().map_err(RunError::lp("open /dev/null"))?,
        settings: Settings {
            argv,
            env: vassal_env(std::env::vars_os()),
            path: std::env::var_os("PATH"),
            exe: std::env::current_exe().ok(),
            exec_as_vassal: opts.exec_as_vassal.clone(),
            isolation,
            fork_bases: fork.as_ref().map(|_| opts.vassal_fork_base.clone()),
        },
        initgroups: opts.tyrant_initgroups,
        tree,
        fork,
        hooks,
    })
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t ^ (u64::from(std::process::id()) << 32)
}

fn set_procname(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|b| *b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from a valid pointer.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}
