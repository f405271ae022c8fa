//! Just enough ZMTP 3.0 (NULL mechanism, PUSH socket) to feed uWSGI's `emperor_zeromq`
//! monitor, whose PULL socket takes multipart messages `[command, name, config]`.

use std::io::{Read, Write};
use std::net::TcpStream;

/// Connects to a ZMQ PULL socket at 127.0.0.1:`port` and sends one multipart message.
pub fn push(port: u16, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(super::SOON))?;
    // Greeting: signature, version 3.0, mechanism NULL, as-server 0, filler.
    let mut greeting = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    let mut mech = [0u8; 20];
    mech[..4].copy_from_slice(b"NULL");
    greeting.extend_from_slice(&mech);
    greeting.push(0);
    greeting.extend_from_slice(&[0u8; 31]);
    s.write_all(&greeting)?;
    // READY command with Socket-Type = PUSH.
    let mut ready = vec![5];
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&4u32.to_be_bytes());
    ready.extend_from_slice(b"PUSH");
    s.write_all(&[0x04, ready.len() as u8])?;
    s.write_all(&ready)?;
    // The peer's greeting proves it speaks ZMTP 3.
    let mut peer = [0u8; 64];
    s.read_exact(&mut peer)?;
    assert_eq!(
        (peer[0], peer[9], peer[10]),
        (0xff, 0x7f, 3),
        "not a ZMTP 3 peer"
    );
    for (i, p) in parts.iter().enumerate() {
        let more = u8::from(i + 1 < parts.len());
        if p.len() < 256 {
            s.write_all(&[more, p.len() as u8])?;
        } else {
            s.write_all(&[more | 0x02])?;
            s.write_all(&(p.len() as u64).to_be_bytes())?;
        }
        s.write_all(p)?;
    }
    s.flush()?;
    // Half-close and wait for the peer to close too: it has then read every frame.
    s.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok(())
}
