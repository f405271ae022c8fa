//! Shell-style word splitting for the `exec` option, as a POSIX shell splits a command line
//! (the `shlex` crate), without expansion or globbing.
//!
//! Words are separated by unquoted blanks (space, tab, newline). `'...'` keeps everything
//! literally, `"..."` keeps everything except that `\"`, `\\`, `\$` and `` \` `` lose their
//! backslash, an unquoted backslash escapes the next character (a backslash-newline is
//! removed), and a word that starts with `#` begins a comment that runs to the end of the line.

/// Why a command line cannot be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unclosed quote or trailing backslash (close the quote, or write \\\\ for a backslash)")]
pub struct WordsError;

/// Splits `s` into words.
pub fn split(s: &str) -> Result<Vec<String>, WordsError> {
    shlex::split(s).ok_or(WordsError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> Vec<String> {
        split(s).unwrap()
    }

    #[test]
    fn splitting() {
        assert_eq!(ok("  a  b\tc \n"), vec!["a", "b", "c"]);
        assert_eq!(
            ok(r#"python3 -c 'print("hi there")'"#),
            vec!["python3", "-c", r#"print("hi there")"#]
        );
        assert_eq!(
            ok(r#"a "b \"c\" \n" d\ e"#),
            vec!["a", r#"b "c" \n"#, "d e"]
        );
        assert_eq!(ok("''"), vec![""]);
        assert_eq!(ok("a'b'\"c\""), vec!["abc"]);
        assert_eq!(ok(""), Vec::<String>::new());
        assert_eq!(ok("a\\\nb"), vec!["ab"]);
        assert_eq!(ok("a b#c #d e"), vec!["a", "b#c"]);
        assert_eq!(split("'a"), Err(WordsError));
        assert_eq!(split("\"a"), Err(WordsError));
        assert_eq!(split("a\\"), Err(WordsError));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = split(&s);
        }

        #[test]
        fn single_quoting_round_trips(words in proptest::collection::vec("[^']{0,20}", 0..8)) {
            let line: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
            prop_assert_eq!(split(&line.join(" ")).unwrap(), words);
        }
    }
}
