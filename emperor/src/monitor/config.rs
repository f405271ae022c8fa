//! Reading a vassal config without ever blocking on it, and never more than [`MAX_CONFIG`]
//! bytes of it.

use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Most bytes of a vassal config the emperor reads (a pushed config may not be larger either).
pub const MAX_CONFIG: usize = 64 * 1024;

/// Why a vassal config could not be read. The messages name no path: callers put the file's
/// name in front.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `stat` or `open` failed (missing, permissions, symlink loop).
    #[error("cannot read it: {0}")]
    Open(io::Error),
    /// It (or what its symlink points to) is not a regular file; what it is.
    #[error(
        "it is {0}, not a regular file: the emperor reads vassal configs only from \
             regular files (replace it, or what its symlink points to, with one)"
    )]
    NotRegular(&'static str),
    /// `fstat` or `read` failed.
    #[error("cannot read it: {0}")]
    Read(io::Error),
}

/// What a file type is, for messages.
pub(super) fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
    }
}

/// Opens a vassal config for reading without ever blocking on it: `stat` first (a FIFO or a
/// device is never opened), then `open` with `O_NONBLOCK | O_NOCTTY | O_CLOEXEC`, then `fstat`
/// of the descriptor (the file may have been swapped in between): regular files only.
pub fn open_config(path: &Path) -> Result<(std::fs::File, std::fs::Metadata), ConfigError> {
    let m = std::fs::metadata(path).map_err(ConfigError::Open)?;
    if !m.file_type().is_file() {
        return Err(ConfigError::NotRegular(kind_of(m.file_type())));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(ConfigError::Open)?;
    let m = f.metadata().map_err(ConfigError::Read)?;
    if !m.file_type().is_file() {
        return Err(ConfigError::NotRegular(kind_of(m.file_type())));
    }
    Ok((f, m))
}

/// The first [`MAX_CONFIG`] bytes of a vassal config (opened with [`open_config`]), and
/// whether the file is longer than that.
pub fn read_config_head(path: &Path) -> Result<(Vec<u8>, bool), ConfigError> {
    use std::io::Read;
    let (f, m) = open_config(path)?;
    let mut buf = Vec::with_capacity(m.size().min(MAX_CONFIG as u64 + 1) as usize);
    f.take(MAX_CONFIG as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(ConfigError::Read)?;
    let longer = buf.len() > MAX_CONFIG;
    buf.truncate(MAX_CONFIG);
    Ok((buf, longer))
}
