//! The object store: one file per object under `DIR/osd.I/`, written to a temporary name,
//! optionally fsynced, then renamed into place, so a killed OSD keeps every write it
//! acknowledged (a SIGKILL loses nothing already written to the page cache; `--fsync` also
//! covers a machine crash) and never shows a half-written object.
//!
//! File format: `cwobj001`, the version (u64 LE), the length (u64 LE), the bytes.
//! Writes are idempotent by (object, version): a version at or below the stored one is
//! acknowledged without writing (it is a resend of a write already applied).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"cwobj001";
const HEADER: usize = 24;
const TMP_PREFIX: &str = ".tmp.";

/// What [`Store::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Written,
    /// The store already had this version (or a newer one).
    AlreadyHad,
}

/// One OSD's objects, with an in-memory index of their versions (rebuilt from the files at
/// start, so a restarted OSD knows what it holds).
pub struct Store {
    dir: PathBuf,
    fsync: bool,
    versions: HashMap<String, u64>,
    pub written: u64,
    pub already_had: u64,
}

/// The directory of OSD `id` under the cluster directory.
pub fn osd_dir(dir: &Path, id: usize) -> PathBuf {
    dir.join(format!("osd.{id}"))
}

impl Store {
    /// Open (creating) `dir`: index the objects there, remove leftover temporary files.
    pub fn open(dir: &Path, fsync: bool) -> io::Result<Store> {
        fs::create_dir_all(dir)?;
        let mut versions = HashMap::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                fs::remove_file(e.path())?;
                continue;
            }
            let (version, _) = read_object(&e.path())?;
            versions.insert(name, version);
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            fsync,
            versions,
            written: 0,
            already_had: 0,
        })
    }

    /// Objects held.
    pub fn objects(&self) -> usize {
        self.versions.len()
    }

    /// Store `version` of `object` unless this version (or a newer one) is already there.
    pub fn apply(&mut self, object: &str, version: u64, data: &[u8]) -> io::Result<Applied> {
        if !valid_name(object) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad object name {object:?}"),
            ));
        }
        if self.versions.get(object).is_some_and(|&v| v >= version) {
            self.already_had += 1;
            return Ok(Applied::AlreadyHad);
        }
        let tmp = self.dir.join(format!("{TMP_PREFIX}{object}"));
        let mut f = fs::File::create(&tmp)?;
        let mut head = [0u8; HEADER];
        head[..8].copy_from_slice(MAGIC);
        head[8..16].copy_from_slice(&version.to_le_bytes());
        head[16..].copy_from_slice(&(data.len() as u64).to_le_bytes());
        f.write_all(&head)?;
        f.write_all(data)?;
        if self.fsync {
            f.sync_data()?;
        }
        drop(f);
        fs::rename(&tmp, self.dir.join(object))?;
        self.versions.insert(object.to_string(), version);
        self.written += 1;
        Ok(Applied::Written)
    }
}

/// Object names are plain file names (no path, no temporary prefix).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Read an object file: its version and bytes.
pub fn read_object(path: &Path) -> io::Result<(u64, Vec<u8>)> {
    let mut b = fs::read(path)?;
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    if b.len() < HEADER || &b[..8] != MAGIC {
        return Err(bad(format!("{}: not an object file", path.display())));
    }
    let version = u64::from_le_bytes(b[8..16].try_into().unwrap());
    let len = u64::from_le_bytes(b[16..24].try_into().unwrap());
    if len != (b.len() - HEADER) as u64 {
        return Err(bad(format!(
            "{}: {} data bytes where the header says {len}",
            path.display(),
            b.len() - HEADER
        )));
    }
    b.drain(..HEADER);
    Ok((version, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_is_idempotent_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("osd-store-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = Store::open(&dir, false).unwrap();
        assert_eq!(s.apply("obj-1", 1, b"one").unwrap(), Applied::Written);
        assert_eq!(s.apply("obj-1", 1, b"one").unwrap(), Applied::AlreadyHad);
        assert_eq!(s.apply("obj-1", 2, b"two").unwrap(), Applied::Written);
        assert_eq!(s.apply("obj-1", 1, b"one").unwrap(), Applied::AlreadyHad);
        assert!(s.apply("../x", 1, b"").is_err());
        fs::write(dir.join(".tmp.obj-9"), b"partial").unwrap();
        let s = Store::open(&dir, false).unwrap();
        assert_eq!(s.objects(), 1);
        assert!(!dir.join(".tmp.obj-9").exists());
        assert_eq!(
            read_object(&dir.join("obj-1")).unwrap(),
            (2, b"two".to_vec())
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
