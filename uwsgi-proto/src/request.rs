//! A CGI-style request packet for a uWSGI server, and a small reader for the raw HTTP response
//! a uWSGI worker writes back.
//!
//! This is what a web server (nginx's `uwsgi_pass`) sends: a modifier1 0 packet whose vars are
//! the CGI variables, followed by the request body.

use std::fmt;

use crate::header::EncodeError;
use crate::modifier;
use crate::vars::VarsBuilder;

/// A request to encode. Header names are turned into `HTTP_*` vars.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Request URI: path with an optional `?query`.
    pub uri: &'a str,
    /// Value of the Host header and SERVER_NAME.
    pub host: &'a str,
    /// SERVER_PORT.
    pub port: u16,
    /// REMOTE_ADDR.
    pub remote_addr: &'a str,
    /// Extra HTTP headers as (name, value).
    pub headers: &'a [(&'a str, &'a str)],
    /// Length of the body that follows the packet.
    pub content_length: usize,
    /// modifier1 of the packet (0 for WSGI).
    pub modifier1: u8,
}

impl<'a> Request<'a> {
    /// A GET request for `uri`.
    pub fn get(uri: &'a str) -> Self {
        Request {
            method: "GET",
            uri,
            host: "localhost",
            port: 80,
            remote_addr: "127.0.0.1",
            headers: &[],
            content_length: 0,
            modifier1: modifier::WSGI,
        }
    }

    /// The packet: header and CGI vars.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let (path, query) = match self.uri.split_once('?') {
            Some((p, q)) => (p, q),
            None => (self.uri, ""),
        };
        let mut b = VarsBuilder::with_capacity(512);
        b.push("REQUEST_METHOD", self.method)?
            .push("REQUEST_URI", self.uri)?
            .push("PATH_INFO", path)?
            .push("QUERY_STRING", query)?
            .push("SCRIPT_NAME", "")?
            .push("SERVER_PROTOCOL", "HTTP/1.1")?
            .push("REQUEST_SCHEME", "http")?
            .push("SERVER_NAME", self.host)?
            .push_num("SERVER_PORT", i64::from(self.port))?
            .push("REMOTE_ADDR", self.remote_addr)?
            .push("HTTP_HOST", self.host)?;
        if self.content_length > 0 {
            b.push_num("CONTENT_LENGTH", self.content_length as i64)?;
        }
        let mut name = String::new();
        for (k, v) in self.headers {
            name.clear();
            let cgi_plain =
                k.eq_ignore_ascii_case("content-type") || k.eq_ignore_ascii_case("content-length");
            if !cgi_plain {
                name.push_str("HTTP_");
            }
            name.extend(k.chars().map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_uppercase()
                }
            }));
            b.push(&name, v)?;
        }
        Ok(b.into_packet(self.modifier1, 0))
    }
}

/// Why a response cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// No blank line ends the head.
    IncompleteHead,
    /// The status line is not `HTTP/x.y NNN reason` (or CGI-style `Status: NNN`).
    BadStatusLine,
    /// A header line without a colon.
    BadHeader,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResponseError::IncompleteHead => "response head is not terminated by a blank line",
            ResponseError::BadStatusLine => "malformed response status line",
            ResponseError::BadHeader => "malformed response header line",
        })
    }
}

impl std::error::Error for ResponseError {}

/// A response borrowed from the bytes read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: &'a [u8],
    head: &'a [u8],
    /// Everything after the blank line.
    pub body: &'a [u8],
}

impl<'a> Response<'a> {
    /// Reads the head of `buf`; the body is whatever follows it.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ResponseError> {
        let end = find(buf, b"\r\n\r\n").ok_or(ResponseError::IncompleteHead)?;
        let head = &buf[..end];
        let body = &buf[end + 4..];
        let (status_line, rest) = match find(head, b"\r\n") {
            Some(i) => (&head[..i], &head[i + 2..]),
            None => (head, &head[head.len()..]),
        };
        let mut parts = status_line.splitn(3, |&c| c == b' ');
        let proto = parts.next().unwrap_or_default();
        if !proto.starts_with(b"HTTP/") {
            return Err(ResponseError::BadStatusLine);
        }
        let code = parts.next().ok_or(ResponseError::BadStatusLine)?;
        let status = parse_status(code).ok_or(ResponseError::BadStatusLine)?;
        let reason = parts.next().unwrap_or_default();
        let resp = Response {
            status,
            reason,
            head: rest,
            body,
        };
        for line in resp.lines() {
            if !line.contains(&b':') {
                return Err(ResponseError::BadHeader);
            }
        }
        Ok(resp)
    }

    fn lines(&self) -> impl Iterator<Item = &'a [u8]> {
        let head = self.head;
        head.split(|&c| c == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
    }

    /// Headers as (name, value) with surrounding blanks trimmed.
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.lines().filter_map(|l| {
            let i = l.iter().position(|&c| c == b':')?;
            Some((l[..i].trim_ascii(), l[i + 1..].trim_ascii()))
        })
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

fn parse_status(code: &[u8]) -> Option<u16> {
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{Packet, Status};
    use crate::vars;

    #[test]
    fn request_has_cgi_vars() {
        let headers = [("User-Agent", "t"), ("Content-Type", "text/plain")];
        let req = Request {
            headers: &headers,
            ..Request::get("/hello?x=1")
        };
        let pkt = req.encode().unwrap();
        let Status::Complete((p, used)) = Packet::decode(&pkt) else {
            panic!("incomplete")
        };
        assert_eq!(used, pkt.len());
        assert_eq!(p.header.modifier1, 0);
        assert_eq!(
            vars::get(p.body, b"PATH_INFO").unwrap(),
            Some(&b"/hello"[..])
        );
        assert_eq!(
            vars::get(p.body, b"QUERY_STRING").unwrap(),
            Some(&b"x=1"[..])
        );
        assert_eq!(
            vars::get(p.body, b"HTTP_USER_AGENT").unwrap(),
            Some(&b"t"[..])
        );
        assert_eq!(
            vars::get(p.body, b"CONTENT_TYPE").unwrap(),
            Some(&b"text/plain"[..])
        );
        assert_eq!(vars::get(p.body, b"SERVER_PORT").unwrap(), Some(&b"80"[..]));
    }

    #[test]
    fn response_parse() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A:  b \r\n\r\nhello";
        let r = Response::parse(raw).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, b"OK");
        assert_eq!(r.header("content-type"), Some(&b"text/plain"[..]));
        assert_eq!(r.header("x-a"), Some(&b"b"[..]));
        assert_eq!(r.body, b"hello");
        assert_eq!(
            Response::parse(b"HTTP/1.1 200 OK\r\n"),
            Err(ResponseError::IncompleteHead)
        );
        assert_eq!(
            Response::parse(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(ResponseError::BadStatusLine)
        );
        assert_eq!(
            Response::parse(b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n"),
            Err(ResponseError::BadHeader)
        );
    }
}
