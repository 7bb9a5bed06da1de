//! The broker's nodes, as `--amqp-url` names them: one AMQP URL, or a
//! comma-separated list of the nodes of one RabbitMQ cluster. A worker
//! connects to one node, starting at an offset of its own so that workers
//! spread over the nodes, and on a connection loss goes on to the next.
//! Every node must name the same vhost and credentials: they are one
//! deployment reached by several doors, and a list that disagrees is
//! refused at start with one line saying how.

use std::fmt;
use std::str::FromStr;

use lapin::uri::AMQPUri;

/// The nodes of the broker, in the order given. Its `Debug` and `Display`
/// hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerNodes {
    urls: Vec<String>,
    parsed: Vec<AMQPUri>,
}

/// Why a `--amqp-url` list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodesError {
    /// An entry between commas is empty.
    #[error("--amqp-url: entry {0} of the list is empty; give one AMQP URL per node, separated by commas")]
    EmptyEntry(usize),
    /// An entry does not parse as an AMQP URL.
    #[error("--amqp-url: entry {index} ({shown}) is not an AMQP URL: {reason}")]
    Unparsable {
        /// Its position, from 1.
        index: usize,
        /// The entry with any password hidden.
        shown: String,
        /// What the parser said.
        reason: String,
    },
    /// Two nodes name different vhosts.
    #[error(
        "--amqp-url: the nodes name different vhosts ({first:?} and {other:?}); the list names the nodes of one deployment"
    )]
    VhostsDiffer {
        /// The first node's vhost.
        first: String,
        /// The one that differs.
        other: String,
    },
    /// Two nodes name different users or passwords.
    #[error(
        "--amqp-url: the nodes name different users or passwords ({first} and {other}); the list names the nodes of one deployment"
    )]
    CredentialsDiffer {
        /// The first node's user.
        first: String,
        /// The user of the one that differs.
        other: String,
    },
}

impl BrokerNodes {
    /// Parses one URL or a comma-separated list of them.
    pub fn parse(list: &str) -> Result<Self, NodesError> {
        let mut urls = Vec::new();
        let mut parsed: Vec<AMQPUri> = Vec::new();
        for (index, entry) in list.split(',').enumerate().map(|(i, e)| (i + 1, e.trim())) {
            if entry.is_empty() {
                return Err(NodesError::EmptyEntry(index));
            }
            let uri: AMQPUri = entry.parse().map_err(|reason: String| NodesError::Unparsable {
                index,
                shown: hide_password(entry),
                reason: reason.replace(entry, &hide_password(entry)),
            })?;
            if let Some(first) = parsed.first() {
                if first.vhost != uri.vhost {
                    return Err(NodesError::VhostsDiffer { first: first.vhost.clone(), other: uri.vhost.clone() });
                }
                if first.authority.userinfo != uri.authority.userinfo {
                    return Err(NodesError::CredentialsDiffer {
                        first: first.authority.userinfo.username.clone(),
                        other: uri.authority.userinfo.username.clone(),
                    });
                }
            }
            urls.push(entry.to_owned());
            parsed.push(uri);
        }
        Ok(Self { urls, parsed })
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Never: a list has at least one node.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Node `i` (counted round the list) as given.
    pub fn url(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    /// Node `i` (counted round the list), parsed.
    pub fn uri(&self, i: usize) -> &AMQPUri {
        &self.parsed[i % self.parsed.len()]
    }

    /// Node `i` as logs and errors show it: host and port only.
    pub fn shown(&self, i: usize) -> String {
        let uri = self.uri(i);
        format!("{}:{}", uri.authority.host, uri.authority.port)
    }

    /// The vhost every node names.
    pub fn vhost(&self) -> &str {
        &self.parsed[0].vhost
    }
}

/// How a worker reaches the broker: the nodes of its cluster, and the one
/// it tries first (an offset of its own, so workers spread over the nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// The cluster's nodes.
    pub nodes: BrokerNodes,
    /// The index of the node tried first.
    pub first: usize,
    /// Replicas of each quorum queue keyseal declares
    /// (`x-quorum-initial-group-size`); `None` leaves it to the broker
    /// (`quorum_cluster_size`, 3 unless configured).
    pub quorum_size: Option<u32>,
}

impl Broker {
    /// The broker of `nodes`, reached first through the node `key` hashes
    /// to (a worker's name: workers of one deployment spread over nodes).
    pub fn new(nodes: BrokerNodes, key: &str) -> Self {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let first = (hash % nodes.len() as u64) as usize;
        Self { nodes, first, quorum_size: None }
    }

    /// The broker of `list` (one URL or a cluster's nodes), reached first
    /// through its first node: a tool's, or a test's.
    pub fn from_list(list: &str) -> Result<Self, NodesError> {
        Ok(Self { nodes: BrokerNodes::parse(list)?, first: 0, quorum_size: None })
    }
}

impl FromStr for BrokerNodes {
    type Err = NodesError;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        Self::parse(list)
    }
}

impl fmt::Debug for BrokerNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.urls.iter().map(|url| hide_password(url))).finish()
    }
}

impl fmt::Display for BrokerNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.urls.iter().map(|url| hide_password(url)).collect();
        f.write_str(&shown.join(","))
    }
}

/// `url` with the password of its user info replaced by `***`: how a URL
/// is printed anywhere. A comma-separated node list is masked entry by
/// entry; in each, the user info ends at the last `@` (a password may hold
/// `@`, `/`, `?` or `#` unencoded).
pub fn hide_password(url: &str) -> String {
    url.split(',').map(hide_one).collect::<Vec<_>>().join(",")
}

fn hide_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_a_list_of_one_deployments_nodes() {
        let one = BrokerNodes::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!((one.len(), one.vhost()), (1, "/"));
        let three = BrokerNodes::parse(
            "amqp://u:p@10.0.0.1:5672/prod, amqp://u:p@10.0.0.2:5672/prod,amqp://u:p@10.0.0.3:5673/prod",
        )
        .unwrap();
        assert_eq!(three.len(), 3);
        assert_eq!(three.shown(2), "10.0.0.3:5673");
        assert_eq!(three.url(4), "amqp://u:p@10.0.0.2:5672/prod", "counted round the list");
    }

    #[test]
    fn a_malformed_list_is_refused_with_what_is_wrong() {
        let refused = |list: &str| BrokerNodes::parse(list).unwrap_err();
        assert_eq!(refused("amqp://h:5672/v,,amqp://h2/v"), NodesError::EmptyEntry(2));
        assert_eq!(refused(""), NodesError::EmptyEntry(1));
        assert!(matches!(refused("amqp://u:secret@h/v,http://x"), NodesError::Unparsable { index: 2, .. }));
        assert!(matches!(refused("amqp://u:p@h1/a,amqp://u:p@h2/b"), NodesError::VhostsDiffer { .. }));
        let credentials = refused("amqp://u:p@h1/a,amqp://u:q@h2/a");
        assert!(matches!(credentials, NodesError::CredentialsDiffer { .. }));
        assert!(!credentials.to_string().contains(":q@"), "{credentials}");
    }

    #[test]
    fn a_password_is_masked_and_nothing_else_changes() {
        assert_eq!(hide_password("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(hide_password("amqp://u:p@ss@h/v"), "amqp://u:***@h/v");
        assert_eq!(hide_password("amqp://127.0.0.1:5672/%2f"), "amqp://127.0.0.1:5672/%2f");
        assert_eq!(hide_password("amqp://user@h/v"), "amqp://user@h/v");
        assert_eq!(hide_password("not a url"), "not a url");
        assert_eq!(hide_password("amqp://ks:pw@a/v,amqp://ks:pw@b/v"), "amqp://ks:***@a/v,amqp://ks:***@b/v");
        assert_eq!(hide_password("amqp://ks:p/w?x#y@h:5672/v"), "amqp://ks:***@h:5672/v");
    }

    #[test]
    fn passwords_are_never_shown() {
        let nodes = BrokerNodes::parse("amqp://keyseal:s3cret@h1:5672/v,amqp://keyseal:s3cret@h2:5672/v").unwrap();
        for shown in [format!("{nodes:?}"), nodes.to_string()] {
            assert!(!shown.contains("s3cret") && shown.contains("keyseal:***@h2:5672/v"), "{shown}");
        }
        let refused = BrokerNodes::parse("amqp://keyseal:s3cret@h1:5672/v,amqps://keyseal:s3cret@h2:port/v");
        assert!(!refused.unwrap_err().to_string().contains("s3cret"));
    }
}
