//! The emperor channel: every message is exactly one byte, no framing.

/// A byte sent by the emperor to a vassal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmperorMsg {
    /// 0: stop now (file removed, command, shutdown).
    Stop,
    /// 1: reload (config changed, SIGHUP to the emperor).
    Reload,
    /// 2: stop gracefully (emperor run with `--emperor-graceful-shutdown`).
    GracefulStop,
    /// Any other byte; uWSGI logs and ignores it.
    Unknown(u8),
}

impl EmperorMsg {
    /// Decodes one byte. Never fails: unknown bytes are kept as they are.
    pub const fn from_byte(b: u8) -> Self {
        match b {
            0 => EmperorMsg::Stop,
            1 => EmperorMsg::Reload,
            2 => EmperorMsg::GracefulStop,
            other => EmperorMsg::Unknown(other),
        }
    }

    /// The wire byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            EmperorMsg::Stop => 0,
            EmperorMsg::Reload => 1,
            EmperorMsg::GracefulStop => 2,
            EmperorMsg::Unknown(b) => b,
        }
    }
}

impl From<u8> for EmperorMsg {
    fn from(b: u8) -> Self {
        Self::from_byte(b)
    }
}

impl From<EmperorMsg> for u8 {
    fn from(m: EmperorMsg) -> u8 {
        m.to_byte()
    }
}

/// A byte sent by a vassal to its emperor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VassalMsg {
    /// 1: initialised (uWSGI sends it once, not again after a reload re-exec).
    Ready,
    /// 2: push my config again (sent just before a reload re-exec).
    ConfigRequest,
    /// 5: a worker is accepting requests.
    Accepting,
    /// 17: served a request (or is a sub-emperor): lifts the blacklist.
    Loyal,
    /// 22: idle, stop me (back to on-demand for socket-activated vassals).
    StopMe,
    /// 26: heartbeat; once seen, silence is supervised.
    Heartbeat,
    /// 30: SOS, all workers busy: broodlord asks for a zerg.
    Sos,
    /// Any other byte; counted and ignored.
    Unknown(u8),
}

impl VassalMsg {
    /// Decodes one byte. Never fails: unknown bytes are kept as they are.
    pub const fn from_byte(b: u8) -> Self {
        match b {
            1 => VassalMsg::Ready,
            2 => VassalMsg::ConfigRequest,
            5 => VassalMsg::Accepting,
            17 => VassalMsg::Loyal,
            22 => VassalMsg::StopMe,
            26 => VassalMsg::Heartbeat,
            30 => VassalMsg::Sos,
            other => VassalMsg::Unknown(other),
        }
    }

    /// The wire byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            VassalMsg::Ready => 1,
            VassalMsg::ConfigRequest => 2,
            VassalMsg::Accepting => 5,
            VassalMsg::Loyal => 17,
            VassalMsg::StopMe => 22,
            VassalMsg::Heartbeat => 26,
            VassalMsg::Sos => 30,
            VassalMsg::Unknown(b) => b,
        }
    }

    /// A short name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            VassalMsg::Ready => "ready",
            VassalMsg::ConfigRequest => "config-request",
            VassalMsg::Accepting => "accepting",
            VassalMsg::Loyal => "loyal",
            VassalMsg::StopMe => "stop-me",
            VassalMsg::Heartbeat => "heartbeat",
            VassalMsg::Sos => "sos",
            VassalMsg::Unknown(_) => "unknown",
        }
    }
}

impl From<u8> for VassalMsg {
    fn from(b: u8) -> Self {
        Self::from_byte(b)
    }
}

impl From<VassalMsg> for u8 {
    fn from(m: VassalMsg) -> u8 {
        m.to_byte()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips_both_ways() {
        for b in 0..=255u8 {
            assert_eq!(EmperorMsg::from_byte(b).to_byte(), b);
            assert_eq!(VassalMsg::from_byte(b).to_byte(), b);
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(EmperorMsg::from_byte(0), EmperorMsg::Stop);
        assert_eq!(EmperorMsg::from_byte(1), EmperorMsg::Reload);
        assert_eq!(EmperorMsg::from_byte(2), EmperorMsg::GracefulStop);
        assert_eq!(EmperorMsg::from_byte(3), EmperorMsg::Unknown(3));
        let known = [
            (1, VassalMsg::Ready),
            (2, VassalMsg::ConfigRequest),
            (5, VassalMsg::Accepting),
            (0x11, VassalMsg::Loyal),
            (22, VassalMsg::StopMe),
            (0x1a, VassalMsg::Heartbeat),
            (30, VassalMsg::Sos),
        ];
        for (b, m) in known {
            assert_eq!(VassalMsg::from_byte(b), m);
        }
        assert_eq!(VassalMsg::from_byte(0), VassalMsg::Unknown(0));
    }
}
