//! A small tmpfs, mounted for one test (the tests run as root): a disk that fills up.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    _parent: tempfile::TempDir,
    dir: PathBuf,
}

impl Tmpfs {
    /// A fresh tmpfs of `size` (`"1m"`), or a panic saying why it could not be mounted.
    pub fn mount(size: &str) -> Tmpfs {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("mount must be installed");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (the tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            _parent: parent,
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: archway may still hold a file there while the test ends.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
