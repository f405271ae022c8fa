//! Where an adopted process stands: its ancestry relative to the emperor, its owner, and the
//! argv the fork server is sent.

use std::io;
use std::path::Path;

/// Longest parent chain walked by [`classify`].
const MAX_DEPTH: usize = 256;

/// Where an adopted pid stands relative to the emperor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Its parent is the emperor.
    Ours,
    /// Its parent chain reaches the emperor (e.g. the base's intermediate child has not exited
    /// yet), or could not be read completely because an ancestor just exited: check again.
    InTransit {
        /// Its current parent.
        parent: i32,
    },
    /// Its parent chain reaches init without meeting the emperor.
    Foreign {
        /// Its current parent.
        parent: i32,
    },
    /// No such process (and we did not reap it).
    Gone,
}

/// Classifies `pid` for an emperor whose pid is `me`; `parent_of` reads a process's parent.
pub fn classify(pid: i32, me: i32, parent_of: impl Fn(i32) -> io::Result<i32>) -> Topology {
    let parent = match parent_of(pid) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Topology::Gone,
        Err(_) => return Topology::InTransit { parent: 0 },
    };
    let mut x = parent;
    for _ in 0..MAX_DEPTH {
        if x == me {
            return if x == parent {
                Topology::Ours
            } else {
                Topology::InTransit { parent }
            };
        }
        if x <= 1 {
            return Topology::Foreign { parent };
        }
        match parent_of(x) {
            Ok(p) => x = p,
            // An ancestor exited while we walked: the chain is changing, look again later.
            Err(_) => return Topology::InTransit { parent },
        }
    }
    Topology::InTransit { parent }
}

/// The uid and gid a process runs as (the owner of `/proc/<pid>`): an adopted vassal has the
/// base's, not the emperor's.
pub fn owner_of(pid: i32) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}")).ok()?;
    Some((m.uid(), m.gid()))
}

/// The argv sent to the fork server: `plan_argv` with the config name made absolute (the
/// adopted vassal runs in the base's cwd, not in its monitor's directory). A pushed config
/// (`emperor://NAME`) and an already absolute name are left alone.
pub fn adoption_argv(plan_argv: &[String], name: &str, key: &str) -> Vec<String> {
    let mut argv = plan_argv.to_vec();
    if Path::new(name).is_absolute() || !Path::new(key).is_absolute() {
        return argv;
    }
    let exec = format!("exec://{name}");
    let pos = (1..argv.len())
        .find(|&i| argv[i - 1].starts_with("--") && (argv[i] == name || argv[i] == exec));
    if let Some(i) = pos {
        argv[i] = if argv[i] == exec {
            format!("exec://{key}")
        } else {
            key.to_string()
        };
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_gets_the_absolute_config_path() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            adoption_argv(&a(&["uwsgi", "--ini", "app.ini"]), "app.ini", "/v/app.ini"),
            a(&["uwsgi", "--ini", "/v/app.ini"])
        );
        // Templates that happen to carry the same text are left alone; only the config slot.
        assert_eq!(
            adoption_argv(
                &a(&[
                    "uwsgi",
                    "--set",
                    "x=1",
                    "--ini",
                    "app.ini",
                    "--inherit",
                    "t.ini"
                ]),
                "app.ini",
                "/v/app.ini"
            ),
            a(&[
                "uwsgi",
                "--set",
                "x=1",
                "--ini",
                "/v/app.ini",
                "--inherit",
                "t.ini"
            ])
        );
        assert_eq!(
            adoption_argv(&a(&["u", "--ini", "exec://g.ini"]), "g.ini", "/v/g.ini"),
            a(&["u", "--ini", "exec:///v/g.ini"])
        );
        // Pushed configs and glob names (already absolute) are unchanged.
        let pushed = a(&["u", "--ini", "emperor://p.ini"]);
        assert_eq!(adoption_argv(&pushed, "p.ini", "/v/p.ini"), pushed);
        let glob = a(&["u", "--ini", "/g/x.ini"]);
        assert_eq!(adoption_argv(&glob, "/g/x.ini", "/g/x.ini"), glob);
    }

    #[test]
    fn owner_of_a_process_is_its_uid_and_gid() {
        let me = std::process::id() as i32;
        assert_eq!(
            owner_of(me),
            Some((
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw()
            ))
        );
        assert_eq!(owner_of(i32::MAX), None);
    }

    fn tree(edges: &[(i32, i32)]) -> impl Fn(i32) -> io::Result<i32> + '_ {
        move |pid| {
            edges
                .iter()
                .find(|(c, _)| *c == pid)
                .map(|(_, p)| *p)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
    }

    #[test]
    fn topology_of_an_adopted_pid() {
        // 100 = emperor (child of 50, child of 1); 200 = base; 300 = intermediate; 400 = vassal.
        let us = [(100, 50), (50, 1), (200, 100), (300, 200)];
        let with = |extra: (i32, i32)| {
            let mut v = us.to_vec();
            v.push(extra);
            v
        };
        let reparented = with((400, 100));
        assert_eq!(classify(400, 100, tree(&reparented)), Topology::Ours);
        let in_transit = with((400, 300));
        assert_eq!(
            classify(400, 100, tree(&in_transit)),
            Topology::InTransit { parent: 300 }
        );
        // A stand-alone fork server (child of 50): its orphans go to init (or another
        // subreaper that is not below us).
        let foreign = with((400, 1));
        assert_eq!(
            classify(400, 100, tree(&foreign)),
            Topology::Foreign { parent: 1 }
        );
        let elsewhere = [(100, 50), (50, 1), (400, 60), (60, 50)];
        assert_eq!(
            classify(400, 100, tree(&elsewhere)),
            Topology::Foreign { parent: 60 }
        );
        assert_eq!(classify(400, 100, tree(&us)), Topology::Gone);
        // The intermediate child exits while we walk: look again later.
        let racing = [(400, 300)];
        assert_eq!(
            classify(400, 100, tree(&racing)),
            Topology::InTransit { parent: 300 }
        );
        // An emperor running as pid 1 owns everything.
        assert_eq!(classify(400, 1, tree(&[(400, 1)])), Topology::Ours);
        // A cycle (never on Linux) does not loop forever.
        assert_eq!(
            classify(400, 100, tree(&[(400, 7), (7, 8), (8, 7)])),
            Topology::InTransit { parent: 7 }
        );
    }
}
