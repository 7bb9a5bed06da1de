//! Why a task could not run, in one line that says what to do.

use std::fmt;
use std::path::PathBuf;

/// Why a task could not run.
#[derive(Debug)]
pub enum Error {
    /// Debian packages are missing and we are not root: the command installs them.
    MissingPackages {
        /// The packages.
        packages: Vec<&'static str>,
        /// The command that installs them.
        command: String,
    },
    /// Still missing after `apt-get install`, or no `apt-get` to install them with.
    NotInstalled {
        /// The packages.
        packages: Vec<&'static str>,
        /// Why.
        why: String,
    },
    /// A command could not be started.
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// A provisioning command failed.
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
    },
    /// A file operation failed.
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// `KEYSEAL_AMQP_URL` is not an AMQP URL.
    BadUrl(String),
    /// Nothing answers at the configured broker, and it is not this machine.
    RemoteBrokerDown {
        /// Its host.
        host: String,
        /// Its port.
        port: u16,
    },
    /// A private node could not be started.
    Broker(private_broker::Error),
    /// No RocksDB library to link the fuzz targets with.
    NoRocksdb(PathBuf),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::MissingPackages { packages, command } => {
                write!(
                    f,
                    "missing Debian packages: {}; run as root, or install them with:\n  {command}",
                    packages.join(" ")
                )
            }
            Error::NotInstalled { packages, why } => write!(f, "cannot install {}: {why}", packages.join(" ")),
            Error::Spawn { command, source } => write!(f, "cannot run `{command}`: {source}"),
            Error::Failed { command, status } => write!(f, "`{command}` failed ({status})"),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::BadUrl(why) => write!(f, "KEYSEAL_AMQP_URL: {why}"),
            Error::RemoteBrokerDown { host, port } => write!(
                f,
                "no RabbitMQ answers at {host}:{port} (KEYSEAL_AMQP_URL), and that is not this machine; start it, or unset KEYSEAL_AMQP_URL"
            ),
            Error::Broker(e) => write!(f, "starting a private RabbitMQ node: {e}"),
            Error::NoRocksdb(dir) => write!(
                f,
                "no librocksdb.a under {}: the fuzz targets link the one the release build compiles",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn { source, .. } | Error::Io { source, .. } => Some(source),
            Error::Broker(e) => Some(e),
            _ => None,
        }
    }
}

impl From<private_broker::Error> for Error {
    fn from(e: private_broker::Error) -> Self {
        Error::Broker(e)
    }
}

impl Error {
    /// An [`Error::Io`] for `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
