//! A small, forgiving ini reader in the uWSGI style: `[section]` headers, `key = value`
//! lines, repeated keys kept in order, `;` and `#` comment lines. Values are taken verbatim
//! (trimmed), so `env = A=1` and `exec = sh -c "x; y"` work as written. Lines without `=`
//! and entries before the first section are ignored. Never panics.
//!
//! Hand-written rather than `rust-ini` (which the emperor uses for its own `[uwsgi]` files):
//! the shim reads whatever file an emperor hands its wrapper, uWSGI apps' files included, and
//! must find its section in all of them. `rust-ini` joins a line without `=` to the next
//! line's key (so `nonsense` followed by `[vassal-shim]` swallows the section header), fails
//! the whole file on a trailing line without `=` or an unclosed `[`, and also splits on `:` and
//! continues values over a trailing `\`.

/// One section: its entries in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    entries: Vec<(String, String)>,
}

impl Section {
    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All entries in file order.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }
}

/// A parsed file: sections in order (a name may repeat; [`Ini::section`] merges them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ini {
    sections: Vec<(String, Section)>,
}

impl Ini {
    /// Parses `text`.
    pub fn parse(text: &str) -> Ini {
        let mut ini = Ini::default();
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                if let Some(name) = rest.strip_suffix(']') {
                    ini.sections
                        .push((name.trim().to_string(), Section::default()));
                }
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            if let Some((_, s)) = ini.sections.last_mut() {
                s.entries.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        ini
    }

    /// The section named `name` (all occurrences merged), if present.
    pub fn section(&self, name: &str) -> Option<Section> {
        let mut found = None::<Section>;
        for (n, s) in &self.sections {
            if n == name {
                found
                    .get_or_insert_with(Section::default)
                    .entries
                    .extend(s.entries.iter().cloned());
            }
        }
        found
    }

    /// Whether a section named `name` exists.
    pub fn has_section(&self, name: &str) -> bool {
        self.sections.iter().any(|(n, _)| n == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sections_repeated_keys_and_verbatim_values() {
        let ini = Ini::parse(
            "ignored = 1\n[uwsgi]\nsocket = x\n\n; c\n# c\n[vassal-shim]\nexec = sh -c \"a; b\"\n\
             env = A=1\nenv = B=2=3\n  heartbeat =  5 \nnonsense\n[vassal-shim]\nready = immediate\n",
        );
        assert!(ini.has_section("uwsgi"));
        let s = ini.section("vassal-shim").unwrap();
        assert_eq!(s.get("exec"), Some("sh -c \"a; b\""));
        assert_eq!(s.get_all("env").collect::<Vec<_>>(), vec!["A=1", "B=2=3"]);
        assert_eq!(s.get("heartbeat"), Some("5"));
        assert_eq!(s.get("ready"), Some("immediate"));
        assert_eq!(s.get("nonsense"), None);
        assert!(ini.section("nope").is_none());
    }

    proptest! {
        #[test]
        fn never_panics(s in "(?s).{0,300}") {
            let _ = Ini::parse(&s);
        }
    }
}
