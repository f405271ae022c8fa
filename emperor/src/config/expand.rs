//! Expanding ini values: uWSGI's magic variables (`%d %p %s %n %%`) and `%(name)` placeholders,
//! bounded in length.

use std::path::Path;

/// Longest value an ini key may expand to.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Most `%(name)` references followed to expand one value (nested ones included).
pub(super) const MAX_LOOKUPS: usize = 4096;

/// uWSGI's config magic variables for the file at `path`: %d (its directory, with a trailing
/// slash), %p (its absolute path), %s (its file name), %n (file name without extension), %%.
/// `%(name)` is left as it is. `None` when the result would exceed [`MAX_VALUE_LEN`].
pub fn expand_magic(value: &str, path: &Path) -> Option<String> {
    let keep = |name: &str| Ok::<_, ()>(format!("%({name})"));
    expand_value(value, path, &mut { keep }, &mut || ()).ok()
}

/// One left-to-right pass over `value`: the magic variables of `path`, and `%(name)` through
/// `lookup`. Anything else after a `%` (and a `%(` without its `)`) stays literal. A result
/// longer than [`MAX_VALUE_LEN`] is the error `too_long` makes.
pub(super) fn expand_value<E>(
    value: &str,
    path: &Path,
    lookup: &mut dyn FnMut(&str) -> Result<String, E>,
    too_long: &mut dyn FnMut() -> E,
) -> Result<String, E> {
    if value.len() > MAX_VALUE_LEN {
        return Err(too_long());
    }
    if !value.contains('%') {
        return Ok(value.to_string());
    }
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = abs
        .parent()
        .map(|d| format!("{}/", d.display()))
        .unwrap_or_default();
    let file = abs
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = abs
        .file_stem()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        let Some(c) = chars.next() else {
            out.push('%');
            rest = "";
            break;
        };
        rest = chars.as_str();
        match c {
            'd' => out.push_str(&dir),
            'p' => out.push_str(&abs.display().to_string()),
            's' => out.push_str(&file),
            'n' => out.push_str(&stem),
            '%' => out.push('%'),
            '(' => match rest.find(')') {
                Some(end) => {
                    out.push_str(&lookup(rest[..end].trim())?);
                    rest = &rest[end + 1..];
                }
                None => out.push_str("%("),
            },
            other => {
                out.push('%');
                out.push(other);
            }
        }
        if out.len() > MAX_VALUE_LEN {
            return Err(too_long());
        }
    }
    out.push_str(rest);
    if out.len() > MAX_VALUE_LEN {
        return Err(too_long());
    }
    Ok(out)
}
