//! nginx configuration files from the file system, for the pure parser:
//! reading a file, and expanding an `include` glob as glob(3) does (each
//! wildcard component matched against its directory's entries; sorted;
//! no match is no file).

use std::io;
use std::path::{Component, Path, PathBuf};

use timewait_nginx::Loader;
use timewait_nginx::parse::glob_match;

/// The file system as the nginx parser's [`Loader`].
pub struct NginxFiles;

fn magic(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl Loader for NginxFiles {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>> {
        let mut found = vec![PathBuf::new()];
        for c in pattern.components() {
            let part = c.as_os_str().to_string_lossy();
            if !matches!(c, Component::Normal(_)) || !magic(&part) {
                for p in &mut found {
                    p.push(c.as_os_str());
                }
                continue;
            }
            let mut next = Vec::new();
            for dir in &found {
                // A directory that cannot be listed has no matches.
                let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                }) else {
                    continue;
                };
                for e in entries.flatten() {
                    let name = e.file_name();
                    if glob_match(part.as_bytes(), name.to_string_lossy().as_bytes()) {
                        next.push(dir.join(name));
                    }
                }
            }
            found = next;
        }
        found.retain(|p| p.is_file());
        found.sort();
        Ok(found)
    }
}
