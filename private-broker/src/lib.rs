//! A RabbitMQ broker for tests and demos, found or started.
//!
//! [`answers`] tells whether an AMQP 0-9-1 broker answers at an address;
//! when none does and RabbitMQ is [`installed`], [`PrivateNode::start`]
//! starts a node of one's own beside whatever else runs on the machine: its
//! own node name, AMQP port, Erlang distribution port and data directory,
//! no plugins, and it is stopped again when the [`PrivateNode`] is dropped,
//! or when the process that started it dies.
//!
//! `cargo xtask` uses it to provide the broker the tests need, and
//! `keyseal demo` can use it the same way. std only, Unix only (it runs
//! RabbitMQ's own start scripts).

mod layout;
mod node;
mod probe;
mod process;

use std::fmt;
use std::path::PathBuf;

pub use node::PrivateNode;
pub use probe::answers;

/// Whether RabbitMQ's server is installed here: `rabbitmq-server` on
/// `PATH`, or where Debian's package puts it.
pub fn installed() -> bool {
    layout::Scripts::find().is_some()
}

/// What went wrong starting or stopping a [`PrivateNode`], in one line.
#[derive(Debug)]
pub enum Error {
    /// No `rabbitmq-server` was found ([`installed`] is false).
    NotInstalled,
    /// Something else listens on the port the node should take.
    PortInUse(u16),
    /// A file or process operation failed; `what` says which.
    Io {
        /// What was being done, e.g. "creating /x/mnesia".
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The server exited while booting.
    Exited {
        /// The node's name.
        node: String,
        /// How it exited.
        status: String,
        /// Its console output.
        log: PathBuf,
    },
    /// The server did not answer within the time allowed.
    Timeout {
        /// The node's name.
        node: String,
        /// The time allowed, in seconds.
        secs: u64,
        /// Its console output.
        log: PathBuf,
    },
    /// A `rabbitmqctl` call for the node failed or hung.
    Control {
        /// The command line, e.g. "rabbitmqctl -n n@localhost stop".
        command: String,
        /// Why: its last line of output, or that it timed out.
        detail: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotInstalled => {
                write!(f, "rabbitmq-server is not installed (not on PATH, nor in /usr/sbin or /usr/lib/rabbitmq/bin)")
            }
            Error::PortInUse(port) => {
                write!(f, "port {port} on 127.0.0.1 is already in use by something that is not this node")
            }
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Exited { node, status, log } => {
                write!(
                    f,
                    "rabbitmq-server for {node} exited while starting ({status}); its output is in {}",
                    log.display()
                )
            }
            Error::Timeout { node, secs, log } => {
                write!(
                    f,
                    "rabbitmq-server for {node} did not start within {secs} s; its output is in {}",
                    log.display()
                )
            }
            Error::Control { command, detail } => write!(f, "`{command}` failed: {detail}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    /// An [`Error::Io`] for `what`.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_one_line_naming_what_failed() {
        let errors = [
            Error::NotInstalled,
            Error::PortInUse(5672),
            Error::io("creating /x/mnesia")(std::io::Error::other("denied")),
            Error::Exited { node: "n@localhost".into(), status: "exit status: 1".into(), log: "/x/console.log".into() },
            Error::Timeout { node: "n@localhost".into(), secs: 60, log: "/x/console.log".into() },
            Error::Control { command: "rabbitmqctl -n n@localhost stop".into(), detail: "nodedown".into() },
        ];
        for error in &errors {
            let shown = error.to_string();
            assert!(!shown.contains('\n') && !shown.is_empty(), "{shown:?}");
        }
        assert_eq!(
            errors[1].to_string(),
            "port 5672 on 127.0.0.1 is already in use by something that is not this node"
        );
        assert_eq!(errors[2].to_string(), "creating /x/mnesia: denied");
        assert_eq!(
            errors[4].to_string(),
            "rabbitmq-server for n@localhost did not start within 60 s; its output is in /x/console.log"
        );
    }
}
