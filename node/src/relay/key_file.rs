//! The relay's key file: its device key (the seed, 64 hex digits) kept
//! apart from its data directory, so that a relay rebuilt on a new disk
//! keeps its identity (its peer id, its addresses, and the author key that
//! rooms of members list). See [`RelayConfig::key_file`].
//!
//! [`RelayConfig::key_file`]: super::RelayConfig::key_file

use std::path::Path;

use super::RelayError;

/// The seed in a key file, or `None` if there is no such file.
pub(super) fn read_key_file(path: &Path) -> Result<Option<[u8; 32]>, RelayError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RelayError::Io(format!("{}: {e}", path.display()))),
    };
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.trim().as_bytes())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .map(Some)
        .ok_or_else(|| {
            RelayError::Config(format!("key_file {}: not a key (64 hex digits)", path.display()))
        })
}

/// Writes a key file readable by its owner only: to a temporary file
/// beside it, flushed, then renamed into place, so a crash leaves either
/// no key file or a whole one.
pub(super) fn write_key_file(path: &Path, seed: &[u8; 32]) -> Result<(), RelayError> {
    use std::io::Write as _;
    let io = |e: std::io::Error| RelayError::Io(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let partial = path.with_extension("partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&partial).map_err(io)?;
    writeln!(file, "{}", data_encoding::HEXLOWER.encode(seed)).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_written_key_file_reads_back_and_only_its_owner_may_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("relay.key");
        assert_eq!(read_key_file(&path).unwrap(), None, "no file yet");
        let seed = [0x5Cu8; 32];
        write_key_file(&path, &seed).unwrap();
        assert_eq!(read_key_file(&path).unwrap(), Some(seed));
        assert!(!path.with_extension("partial").exists(), "the temporary file was renamed");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        }
    }

    #[test]
    fn test_a_key_file_that_is_not_64_hex_digits_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.key");
        for bad in ["", "zz", &"ab".repeat(31), &"ab".repeat(33)] {
            std::fs::write(&path, bad).unwrap();
            let err = read_key_file(&path).unwrap_err();
            assert!(matches!(err, RelayError::Config(_)), "{bad:?}: {err:?}");
        }
        // Upper case and a trailing newline are fine: people edit these.
        std::fs::write(&path, format!("{}\n", "AB".repeat(32))).unwrap();
        assert_eq!(read_key_file(&path).unwrap(), Some([0xAB; 32]));
    }
}
