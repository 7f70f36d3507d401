//! The library's typed error: what went wrong, with the file it concerns.

use std::path::{Path, PathBuf};

/// Every failure the library reports. Bad input from the user (a file, a flag) is kept apart
/// from failures of the environment, so the CLI can exit 2 for the former.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the user gave is unreadable, malformed or not what was expected.
    #[error("{}: {problem}", path.display())]
    BadFile { path: PathBuf, problem: String },
    /// A command-line value is out of range or inconsistent.
    #[error("{0}")]
    BadArgument(String),
    /// Reading or writing a file failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// onnxruntime could not be found, loaded or run.
    #[error("onnxruntime: {0}")]
    Runtime(String),
    /// A check the user asked for did not pass (e.g. parity above tolerance).
    #[error("{0}")]
    CheckFailed(String),
}

impl Error {
    pub fn bad_file(path: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        Error::BadFile { path: path.as_ref().to_path_buf(), problem: problem.into() }
    }

    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// Exit status for the CLI: 2 for bad input, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadFile { .. } | Error::BadArgument(_) => 2,
            Error::Io { .. } | Error::Runtime(_) | Error::CheckFailed(_) => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
