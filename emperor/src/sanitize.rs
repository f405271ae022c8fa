//! Escaping strings that come from outside (file names, paths, config values) before they are
//! logged, so a name such as `a\nb.ini` cannot forge a log line or carry terminal escapes.
//!
//! [`esc`] and [`esc_path`] wrap a string in a `Display` that writes it unchanged except for
//! control characters (C0, DEL, C1), Unicode line and paragraph separators and bidirectional
//! overrides, which become `\n`, `\r`, `\t` or `\u{..}`. Ordinary text, non-ASCII letters
//! included, is shown as it is.

use std::fmt;
use std::path::Path;

/// A string shown with its control characters escaped; see the module docs.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(&'a str);

/// `s`, shown with its control characters escaped.
pub fn esc(s: &str) -> Escaped<'_> {
    Escaped(s)
}

/// A path shown with its control characters escaped (bytes that are not UTF-8 as U+FFFD).
pub struct EscapedPath(String);

/// `p`, shown with its control characters escaped.
pub fn esc_path(p: &Path) -> EscapedPath {
    EscapedPath(p.to_string_lossy().into_owned())
}

/// True for a character that must not reach a log line as it is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// True when `s` has a character [`esc`] would escape.
pub fn has_control(s: &str) -> bool {
    s.chars().any(needs_escape)
}

fn write_escaped(s: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut rest = s;
    while let Some((at, c)) = rest.char_indices().find(|&(_, c)| needs_escape(c)) {
        f.write_str(&rest[..at])?;
        match c {
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c => write!(f, "\\u{{{:x}}}", c as u32)?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    f.write_str(rest)
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(self.0, f)
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for EscapedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(&self.0, f)
    }
}

impl fmt::Debug for EscapedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_text_is_not() {
        assert_eq!(esc("app.ini").to_string(), "app.ini");
        assert_eq!(esc("é-日本.ini").to_string(), "é-日本.ini");
        assert_eq!(
            esc("a\nINFO forged\r\t\x1b[31m\x7f\u{85}\u{2028}\u{202e}.ini").to_string(),
            "a\\nINFO forged\\r\\t\\u{1b}[31m\\u{7f}\\u{85}\\u{2028}\\u{202e}.ini"
        );
        assert_eq!(
            esc_path(Path::new("/v/x\ny.ini")).to_string(),
            "/v/x\\ny.ini"
        );
        assert_eq!(format!("{:?}", esc("a\nb")), "a\\nb");
        assert!(has_control("a\nb.ini") && has_control("\u{202e}x") && !has_control("é.ini"));
    }
}
