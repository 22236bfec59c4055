//! The one error type of the SDK. Its kind travels over the wire as the HTTP status, its message as
//! `{"Err": "..."}`, so a caller on the other side of a socket sees the same error the plugin returned.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request or its properties are wrong; retrying the same thing will not help.
    Invalid,
    /// The named thing (instance, group, method, sub-type) does not exist.
    NotFound,
    /// The request conflicts with the current state (e.g. another process owns the socket).
    Conflict,
    /// The plugin cannot be reached or is not ready; retrying later may help.
    Unavailable,
    /// The two sides speak different interface versions.
    Incompatible,
    /// Anything else that went wrong inside the plugin.
    Internal,
    /// The plugin does not offer this optional method (e.g. `Instance.Changes`); the caller falls
    /// back to what every plugin offers (polling).
    Unsupported,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Incompatible => 400,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
            ErrorKind::Unsupported => 501,
        }
    }

    pub fn from_status(status: u16) -> ErrorKind {
        match status {
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            501 => ErrorKind::Unsupported,
            502..=504 => ErrorKind::Unavailable,
            400..=499 => ErrorKind::Invalid,
            _ => ErrorKind::Internal,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, message)
    }
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Conflict, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unsupported, message)
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// Prefixes the message with where it happened, keeping the kind.
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                ErrorKind::Invalid
            }
            _ => ErrorKind::Internal,
        };
        Error::new(kind, e.to_string())
    }
}
