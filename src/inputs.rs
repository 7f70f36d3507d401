//! Which image files a command's inputs name: files, folders (their images, sorted) and globs
//! (`*` and `?` in the file name), each refused with the path where it names nothing.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::glob::glob_match;

/// File extensions taken from folders and globs.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "webp", "tif"];

/// Expands files, folders (their images, sorted) and globs (`*` and `?` in the file name).
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let p = Path::new(input);
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.contains('*') || name.contains('?') {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let mut found: Vec<PathBuf> =
                read_dir_sorted(dir)?.into_iter().filter(|f| glob_match(&name, &file_name(f))).collect();
            if found.is_empty() {
                return Err(Error::bad_file(p, "the pattern matches no file"));
            }
            out.append(&mut found);
        } else if p.is_dir() {
            let mut found: Vec<PathBuf> = read_dir_sorted(p)?
                .into_iter()
                .filter(|f| {
                    f.extension()
                        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str()))
                })
                .collect();
            if found.is_empty() {
                return Err(Error::bad_file(
                    p,
                    format!("expected images ({}) in this folder, found none", IMAGE_EXTENSIONS.join(", ")),
                ));
            }
            out.append(&mut found);
        } else if p.is_file() {
            out.push(p.to_path_buf());
        } else {
            return Err(Error::bad_file(p, "no such file or folder"));
        }
    }
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    Ok(v)
}
