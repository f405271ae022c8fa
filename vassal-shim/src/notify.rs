//! systemd-style notification datagrams (`sd_notify`), as understood by the shim.
//!
//! A datagram is newline-separated `KEY=VALUE` assignments. Standard keys the shim acts on:
//! `READY=1`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`, `WATCHDOG=trigger`, `STATUS=...`,
//! `MAINPID=...`, `ERRNO=...`. Extension keys (prefixed `X_` as systemd recommends for
//! non-standard variables) map to emperor bytes:
//!
//! | key | meaning | emperor byte |
//! |---|---|---|
//! | `X_VASSAL_IDLE=1` | idle, stop me (back to on-demand when socket-activated) | 22 |
//! | `X_VASSAL_SOS=1` | overloaded, ask a broodlord emperor for a zerg | 30 |
//! | `X_VASSAL_LOYAL=1` | declare loyalty now instead of after `loyal-after` | 17 |
//!
//! Anything else is reported as [`Notification::Other`] and ignored by the shim.
//!
//! This is the receiving side of the protocol (the shim bridges its program's
//! `NOTIFY_SOCKET`), which `sd-notify` and the other notify crates, all senders, do not cover.

/// One understood assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// `READY=1`: started up (or finished reloading).
    Ready,
    /// `RELOADING=1`: reloading its configuration; not ready until the next `READY=1`.
    Reloading,
    /// `STOPPING=1`: shutting down.
    Stopping,
    /// `WATCHDOG=1`: alive and healthy.
    Watchdog,
    /// `WATCHDOG=trigger`: declare itself unhealthy.
    WatchdogTrigger,
    /// `STATUS=...`: free-form status text.
    Status(String),
    /// `MAINPID=...`: the main process is another pid.
    MainPid(u32),
    /// `ERRNO=...`: the failure reason as an errno.
    Errno(i32),
    /// `X_VASSAL_IDLE=1`: extension, idle: stop me.
    Idle,
    /// `X_VASSAL_SOS=1`: extension, overloaded: SOS.
    Sos,
    /// `X_VASSAL_LOYAL=1`: extension, loyal now.
    Loyal,
    /// Any other assignment (kept for logging).
    Other(String),
}

/// Parses one datagram. Never panics; lines that are not `KEY=VALUE` and known keys with
/// unexpected values come out as [`Notification::Other`]; empty lines are skipped.
pub fn parse(datagram: &[u8]) -> Vec<Notification> {
    items(datagram).collect()
}

/// Like [`parse`], one assignment at a time, without collecting them. Nothing is allocated
/// for the assignments without text (`READY=1`, `WATCHDOG=1`, ...) when the datagram is valid
/// UTF-8 (invalid bytes are replaced by U+FFFD in a copy of that line).
pub fn items(datagram: &[u8]) -> impl Iterator<Item = Notification> + '_ {
    datagram
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| parse_line(&String::from_utf8_lossy(l)))
}

fn parse_line(line: &str) -> Notification {
    let Some((key, value)) = line.split_once('=') else {
        return Notification::Other(line.to_string());
    };
    match (key, value) {
        ("READY", "1") => Notification::Ready,
        ("RELOADING", "1") => Notification::Reloading,
        ("STOPPING", "1") => Notification::Stopping,
        ("WATCHDOG", "1") => Notification::Watchdog,
        ("WATCHDOG", "trigger") => Notification::WatchdogTrigger,
        ("STATUS", v) => Notification::Status(v.to_string()),
        ("MAINPID", v) => match v.parse() {
            Ok(p) => Notification::MainPid(p),
            Err(_) => Notification::Other(line.to_string()),
        },
        ("ERRNO", v) => match v.parse() {
            Ok(e) => Notification::Errno(e),
            Err(_) => Notification::Other(line.to_string()),
        },
        ("X_VASSAL_IDLE", "1") => Notification::Idle,
        ("X_VASSAL_SOS", "1") => Notification::Sos,
        ("X_VASSAL_LOYAL", "1") => Notification::Loyal,
        _ => Notification::Other(line.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn standard_and_extension_keys() {
        let got = parse(
            b"READY=1\nSTATUS=serving on :8080\nWATCHDOG=1\nMAINPID=42\n\nX_VASSAL_IDLE=1\n\
              X_VASSAL_SOS=1\nX_VASSAL_LOYAL=1\nRELOADING=1\nSTOPPING=1\nWATCHDOG=trigger\nERRNO=2\nFOO=bar\njunk",
        );
        assert_eq!(
            got,
            vec![
                Notification::Ready,
                Notification::Status("serving on :8080".into()),
                Notification::Watchdog,
                Notification::MainPid(42),
                Notification::Idle,
                Notification::Sos,
                Notification::Loyal,
                Notification::Reloading,
                Notification::Stopping,
                Notification::WatchdogTrigger,
                Notification::Errno(2),
                Notification::Other("FOO=bar".into()),
                Notification::Other("junk".into()),
            ]
        );
    }

    #[test]
    fn wrong_values_are_not_misread() {
        assert_eq!(
            parse(b"READY=0"),
            vec![Notification::Other("READY=0".into())]
        );
        assert_eq!(
            parse(b"MAINPID=x"),
            vec![Notification::Other("MAINPID=x".into())]
        );
    }

    #[test]
    fn invalid_utf8_stays_on_its_line() {
        assert_eq!(
            parse(b"STATUS=caf\xe9\nREADY=1"),
            vec![
                Notification::Status("caf\u{fffd}".into()),
                Notification::Ready
            ]
        );
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&data);
        }

        #[test]
        fn lines_are_parsed_alike_as_bytes_or_text(lines in proptest::collection::vec("[A-Z_=a-z0-9 ]{0,12}", 0..6)) {
            let text = lines.join("\n");
            let whole: Vec<Notification> = text.split('\n').filter(|l| !l.is_empty()).map(parse_line).collect();
            proptest::prop_assert_eq!(parse(text.as_bytes()), whole);
        }
    }
}
