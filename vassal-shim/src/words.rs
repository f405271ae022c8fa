//! Shell-style word splitting for the `exec` option (no expansion, no globbing).
//!
//! Words are separated by unquoted whitespace. `'...'` keeps everything literally, `"..."`
//! keeps everything except that `\"`, `\\`, `\$` and `` \` `` lose their backslash, and an
//! unquoted backslash escapes the next character (a backslash-newline is removed).
//!
//! Hand-written rather than `shlex::split`: that one starts a comment at a word beginning with
//! `#` (`exec = app --color #fff` would lose `#fff`), separates words on ASCII blanks only, and
//! reports a failure without saying which quote is open. The behaviour here is what users'
//! `exec =` lines already rely on.

use std::fmt;

/// Why a command line cannot be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordsError {
    /// A quote is not closed.
    UnclosedQuote(char),
    /// The text ends with a lone backslash.
    TrailingBackslash,
}

impl fmt::Display for WordsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WordsError::UnclosedQuote(q) => write!(f, "unclosed {q} quote"),
            WordsError::TrailingBackslash => write!(f, "trailing backslash"),
        }
    }
}

impl std::error::Error for WordsError {}

/// Splits `s` into words.
pub fn split(s: &str) -> Result<Vec<String>, WordsError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(WordsError::UnclosedQuote('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(WordsError::UnclosedQuote('"')),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(WordsError::UnclosedQuote('"')),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    cur.push(c);
                }
                None => return Err(WordsError::TrailingBackslash),
            },
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
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
        assert_eq!(split("'a"), Err(WordsError::UnclosedQuote('\'')));
        assert_eq!(split("\"a"), Err(WordsError::UnclosedQuote('"')));
        assert_eq!(split("a\\"), Err(WordsError::TrailingBackslash));
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
