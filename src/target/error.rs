//! The daemon's errors and the gRPC code each one maps to.

use nix::errno::Errno;
use tonic::{Code, Status};

use super::configfs::FsError;
use super::uri::UriError;

/// Every message names the value the caller got wrong (or the configfs path that failed).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
    /// The request's `grpc-timeout` passed; what it had made was rolled back.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A configfs operation failed; `context` says what the daemon was doing.
    #[error("{context}: {source}")]
    Configfs { context: String, source: FsError },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Internal(_) => Code::Internal,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Configfs { source, .. } => configfs_code(source),
        }
    }
}

/// The kernel's errno says whose fault it is: EEXIST is a name clash, EINVAL means the daemon
/// wrote something nvmet refused (a bug here), and the rest are conditions of the machine
/// (device gone, address in use or not local, nvmet not loaded).
fn configfs_code(err: &FsError) -> Code {
    match err.errno().map(Errno::from_raw) {
        Some(Errno::EEXIST) => Code::AlreadyExists,
        Some(Errno::EINVAL) | None => Code::Internal,
        Some(_) => Code::FailedPrecondition,
    }
}

impl From<UriError> for Error {
    fn from(err: UriError) -> Self {
        Error::InvalidArgument(err.0)
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        Status::new(err.code(), err.to_string())
    }
}

/// Attaches what the daemon was doing to a configfs failure.
pub trait ConfigfsContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> ConfigfsContext<T> for std::result::Result<T, FsError> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Configfs { context: what(), source })
    }
}
