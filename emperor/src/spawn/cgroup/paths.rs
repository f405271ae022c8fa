//! The pure parsing of the cgroup and proc files: where cgroup v2 is mounted, the emperor's
//! cgroup, whether a cgroup is populated, and a safe directory name for a vassal.

use std::path::PathBuf;

/// The mount point of the cgroup v2 file system in a `/proc/self/mountinfo` text, when its
/// root is the hierarchy's root (a bind mount of a sub-tree would make paths ambiguous).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let mut f = pre.split_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(unescape_mount(point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path (`0::PATH`) in a `/proc/PID/cgroup` text.
pub fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end())
        .filter(|p| p.starts_with('/'))
}

/// `populated` of a `cgroup.events` text (`None` when absent).
pub fn populated(events: &str) -> Option<bool> {
    events
        .lines()
        .find_map(|l| l.strip_prefix("populated "))
        .map(|v| v.trim() == "1")
}

/// A directory name for vassal `name`: bytes outside `[A-Za-z0-9._:@+=,-]` become `_`, a
/// leading dot or a name of the cgroup interface's own (`cgroup.*`) gets a `_` prefix, and it
/// is cut to 200 bytes.
pub fn dir_name(name: &str) -> String {
    let mut s: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._:@+=,-".contains(&b) {
                b as char
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    if s.is_empty() || s.starts_with('.') || s.starts_with("cgroup.") {
        s.insert(0, '_');
    }
    s
}
