//! Reading `--ini` files as uWSGI does: sections, includes, placeholders and magic variables,
//! turned into command-line arguments.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, CommandFactory};

use super::error::{IniNote, IniNoteKind, IniProblem, OptionsError};
use super::expand::{expand_value, MAX_LOOKUPS};
use super::ignored::IGNORED_KEYS;
use super::options::Options;

/// What `--ini` files amount to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IniArgs {
    /// Command-line arguments for the keys that are options (`--key=value`, `--flag`).
    pub args: Vec<OsString>,
    /// Ignored and unknown keys, once per file and key, in file order.
    pub notes: Vec<IniNote>,
}

/// The `[uwsgi]` section(s) of one ini file as command-line arguments; see [`read_ini_files`].
pub fn ini_args(path: &Path) -> Result<IniArgs, OptionsError> {
    read_ini_files(std::slice::from_ref(&path.to_path_buf()))
}

/// Reads ini files as uWSGI does: `FILE:SECTION` reads another section than `[uwsgi]`, an
/// `ini = OTHER` key includes another file (up to 8 levels). Every key of every file is
/// collected first, then values are expanded: the magic `%d %p %s %n %%` of the file the key is
/// in, and `%(name)` with the value of the first `name` key of any of the files (an undefined
/// one is an error naming the file and the key). Keys that are options become arguments, the
/// others become [`IniNote`]s.
pub fn read_ini_files(files: &[PathBuf]) -> Result<IniArgs, OptionsError> {
    let mut table = IniTable::default();
    for f in files {
        table.read(f, 0)?;
    }
    let cmd = Options::command();
    let mut out = IniArgs::default();
    for entry in &table.entries {
        let key = entry.key.as_str();
        let value = table.expand(entry)?;
        let arg = cmd.get_arguments().find(|a| {
            a.get_long() == Some(key) || a.get_all_aliases().is_some_and(|al| al.contains(&key))
        });
        let arg = arg.filter(|_| !IGNORED_KEYS.contains(&key));
        let Some(arg) = arg else {
            let kind = if IGNORED_KEYS.contains(&key) {
                IniNoteKind::Ignored
            } else {
                IniNoteKind::Placeholder
            };
            let note = IniNote {
                path: entry.file.clone(),
                key: key.to_string(),
                kind,
            };
            if !out.notes.contains(&note) {
                out.notes.push(note);
            }
            continue;
        };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value.to_ascii_lowercase().as_str() {
                "" | "1" | "true" | "yes" | "on" => out.args.push(format!("--{key}").into()),
                "0" | "false" | "no" | "off" => {}
                other => {
                    return Err(OptionsError::Ini {
                        path: entry.file.clone(),
                        problem: IniProblem::NotBool {
                            key: key.to_string(),
                            value: other.to_string(),
                        },
                    })
                }
            }
        } else {
            out.args.push(format!("--{key}={value}").into());
        }
    }
    Ok(out)
}

/// One `key = value` line, unexpanded, with the file it came from (for its magic variables).
#[derive(Debug)]
struct IniEntry {
    key: String,
    raw: String,
    file: PathBuf,
}

/// Every key of the ini files read so far, in order.
#[derive(Debug, Default)]
struct IniTable {
    entries: Vec<IniEntry>,
}

impl IniTable {
    fn read(&mut self, spec: &Path, depth: usize) -> Result<(), OptionsError> {
        let (path, section) = match spec.to_str().and_then(|s| s.rsplit_once(':')) {
            Some((p, sect)) if !spec.exists() && !sect.contains('/') => (Path::new(p), sect),
            _ => (spec, "uwsgi"),
        };
        let err = |problem| OptionsError::Ini {
            path: spec.to_path_buf(),
            problem,
        };
        if depth > 8 {
            return Err(err(IniProblem::TooDeep));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(IniProblem::Read(e)))?;
        let opt = ini::ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            ..Default::default()
        };
        let parsed =
            ini::Ini::load_from_str_opt(&text, opt).map_err(|e| err(IniProblem::Parse(e)))?;
        let mut found = false;
        for props in parsed.section_all(Some(section)) {
            found = true;
            for (key, value) in props.iter() {
                let entry = IniEntry {
                    key: key.trim().to_string(),
                    raw: value.trim().to_string(),
                    file: path.to_path_buf(),
                };
                if entry.key == "ini" {
                    // An include is read where it stands, so its path can only use keys
                    // defined before it.
                    let other = self.expand(&entry)?;
                    self.read(Path::new(&other), depth + 1)?;
                } else {
                    self.entries.push(entry);
                }
            }
        }
        if !found {
            return Err(err(IniProblem::NoSection {
                section: section.to_string(),
            }));
        }
        Ok(())
    }

    /// The value of `entry` with its magic variables and placeholders expanded.
    fn expand(&self, entry: &IniEntry) -> Result<String, OptionsError> {
        self.expand_in(entry, &mut Vec::new(), &mut 0)
    }

    /// `stack`: the keys being expanded (cycle check); `lookups`: `%(name)` references
    /// followed so far for this value (bounded: keys that refer to each other several times
    /// per value multiply the work at every level).
    fn expand_in<'a>(
        &'a self,
        entry: &'a IniEntry,
        stack: &mut Vec<&'a str>,
        lookups: &mut usize,
    ) -> Result<String, OptionsError> {
        let err = |problem| OptionsError::Ini {
            path: entry.file.clone(),
            problem,
        };
        let key = || entry.key.clone();
        let too_long = || err(IniProblem::TooLong { key: key() });
        let mut lookup = |name: &str| -> Result<String, OptionsError> {
            *lookups += 1;
            if *lookups > MAX_LOOKUPS {
                return Err(too_long());
            }
            let Some(def) = self.entries.iter().find(|e| e.key == name) else {
                return Err(err(IniProblem::Undefined {
                    key: key(),
                    name: name.to_string(),
                }));
            };
            if stack.contains(&def.key.as_str()) {
                return Err(err(IniProblem::Cycle {
                    key: key(),
                    name: name.to_string(),
                    chain: stack.iter().map(|k| k.to_string()).collect(),
                }));
            }
            stack.push(def.key.as_str());
            let v = self.expand_in(def, stack, lookups);
            stack.pop();
            v
        };
        expand_value(&entry.raw, &entry.file, &mut lookup, &mut || too_long())
    }
}
