//! Which scripts run RabbitMQ, where a private node keeps its files, whose
//! Erlang cookie it shares and the environment it runs with: the node's
//! set-up as plain values and lookups, so it is testable without starting
//! a node.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// Debian's real scripts. `/usr/sbin/rabbitmq-server` is a wrapper that
/// sends the server's output to `/var/log/rabbitmq/startup_log` and, run
/// as root, re-runs itself as the `rabbitmq` user, who cannot reach a data
/// dir under a private home such as `/root`.
const DEBIAN_SCRIPTS: &str = "/usr/lib/rabbitmq/bin";
/// Where Debian's wrappers are, in case `PATH` lacks it.
const SBIN: &str = "/usr/sbin";

/// The server and control scripts of one RabbitMQ installation.
#[derive(Debug, PartialEq)]
pub(crate) struct Scripts {
    /// `rabbitmq-server`.
    pub server: PathBuf,
    /// `rabbitmqctl`, beside it.
    pub ctl: PathBuf,
}

impl Scripts {
    /// The installation found first in Debian's script dir, `PATH`, then `/usr/sbin`.
    pub fn find() -> Option<Scripts> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(PathBuf::from(DEBIAN_SCRIPTS))
            .chain(std::env::split_paths(&path))
            .chain(std::iter::once(PathBuf::from(SBIN)));
        Self::first_in(dirs)
    }

    /// The first of `dirs` that holds an executable `rabbitmq-server`.
    pub fn first_in(dirs: impl IntoIterator<Item = PathBuf>) -> Option<Scripts> {
        dirs.into_iter().map(|dir| dir.join("rabbitmq-server")).find(|server| executable(server)).map(|server| {
            let ctl = server.with_file_name("rabbitmqctl");
            Scripts { server, ctl }
        })
    }
}

fn executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Where a private node keeps everything: one directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout under `dir`, made absolute (the node runs elsewhere).
    pub fn new(dir: &Path) -> Result<Layout, Error> {
        let dir = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir().map_err(Error::io("finding the current directory"))?.join(dir)
        };
        Ok(Layout { dir })
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's database.
    pub fn mnesia(&self) -> PathBuf {
        self.dir.join("mnesia")
    }

    /// The node's log files.
    pub fn log(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// The server's standard output and error.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The output of this crate's `rabbitmqctl` calls.
    pub fn ctl_log(&self) -> PathBuf {
        self.dir.join("rabbitmqctl.log")
    }

    /// Where the Erlang VM writes its OS pid.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// The enabled plugins: none.
    pub fn plugins_file(&self) -> PathBuf {
        self.dir.join("enabled_plugins")
    }

    /// Fresh state: the directory, an empty database and log dir, no plugins.
    pub fn prepare(&self) -> Result<(), Error> {
        for old in [self.mnesia(), self.log()] {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(Error::io(format!("removing {}", old.display())))?;
            }
        }
        for dir in [self.mnesia(), self.log()] {
            std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        let plugins = self.plugins_file();
        std::fs::write(&plugins, "[].\n").map_err(Error::io(format!("writing {}", plugins.display())))
    }
}

/// The node's environment, and nothing else from the caller's: no stray
/// `RABBITMQ_*` or `ERL_*` leaks in. The three config paths name files that
/// do not exist, deliberately: the system's `/etc/rabbitmq/rabbitmq.conf`
/// (which may set a listener on 5672) is not read, and with no config file
/// at all RabbitMQ skips its schema translation, about 2 s of CPU per boot
/// (learned in `tests/cluster/cluster.sh`). Defaults are what the node
/// needs; the listener and distribution port come from here.
pub(crate) fn node_env(
    layout: &Layout,
    node: &str,
    amqp_port: u16,
    dist_port: u16,
    home: &Path,
    path: &OsStr,
) -> Vec<(&'static str, OsString)> {
    let at = |name: &str| layout.dir().join(name).into_os_string();
    let mut env = ctl_env(home, path);
    env.extend([
        ("RABBITMQ_NODENAME", node.into()),
        ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
        ("RABBITMQ_NODE_PORT", amqp_port.to_string().into()),
        ("RABBITMQ_DIST_PORT", dist_port.to_string().into()),
        ("RABBITMQ_CONFIG_FILE", at("rabbitmq.conf")),
        ("RABBITMQ_ADVANCED_CONFIG_FILE", at("advanced.config")),
        ("RABBITMQ_CONFIG_FILES", at("conf.d/*.conf")),
        ("RABBITMQ_ENABLED_PLUGINS_FILE", layout.plugins_file().into_os_string()),
        ("RABBITMQ_MNESIA_BASE", layout.mnesia().into_os_string()),
        ("RABBITMQ_LOG_BASE", layout.log().into_os_string()),
        ("RABBITMQ_PID_FILE", layout.pid_file().into_os_string()),
    ]);
    env
}

/// The environment of this crate's `rabbitmqctl` calls: `HOME` for the
/// cookie, nothing that would change the CLI's own ports.
pub(crate) fn ctl_env(home: &Path, path: &OsStr) -> Vec<(&'static str, OsString)> {
    vec![
        ("PATH", path.to_os_string()),
        ("HOME", home.as_os_str().to_os_string()),
        ("LANG", "C.UTF-8".into()),
        ("LC_ALL", "C.UTF-8".into()),
    ]
}

/// A user account, as far as the node needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Account {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// A line of `/etc/passwd` (`name:x:uid:gid:gecos:home:shell`).
pub(crate) fn parse_passwd_line(line: &str) -> Option<Account> {
    let fields: Vec<&str> = line.trim_end().split(':').collect();
    match fields[..] {
        [_, _, uid, gid, _, home, ..] if !home.is_empty() => {
            Some(Account { uid: uid.parse().ok()?, gid: gid.parse().ok()?, home: home.into() })
        }
        _ => None,
    }
}

/// The `rabbitmq` user that Debian's package creates, if there is one.
pub(crate) fn rabbitmq_account() -> Option<Account> {
    match Command::new("getent").args(["passwd", "rabbitmq"]).output() {
        Ok(out) if out.status.success() => parse_passwd_line(&String::from_utf8_lossy(&out.stdout)),
        _ => {
            let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
            passwd.lines().find(|line| line.starts_with("rabbitmq:")).and_then(parse_passwd_line)
        }
    }
}

/// The effective user id, from `id -u`.
pub(crate) fn current_uid() -> Option<u32> {
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The `HOME` the node and its `rabbitmqctl` calls run with, which decides
/// the Erlang cookie they use; and the account that should own a cookie
/// created there. As root with a `rabbitmq` user (Debian), it is that
/// user's home: Debian's `rabbitmqctl` wrapper, run as root, re-runs itself
/// as `rabbitmq`, so the tests' plain `rabbitmqctl` calls use that cookie
/// and reach the node. The node itself runs as root, so its data dir may
/// be anywhere root can write. Otherwise the caller's own home.
pub(crate) fn cookie_home(
    uid: Option<u32>,
    rabbitmq: Option<Account>,
    caller_home: Option<PathBuf>,
    dir: &Path,
) -> (PathBuf, Option<Account>) {
    match rabbitmq {
        Some(account) if uid == Some(0) && account.home.is_dir() => (account.home.clone(), Some(account)),
        _ => (caller_home.unwrap_or_else(|| dir.to_path_buf()), None),
    }
}

/// Creates `home/.erlang.cookie` for `owner` when it is missing, so that
/// a node run as root never creates one that `owner` cannot read.
pub(crate) fn ensure_cookie(home: &Path, owner: &Account) -> Result<(), Error> {
    let cookie = home.join(".erlang.cookie");
    if cookie.exists() {
        return Ok(());
    }
    let what = format!("creating the Erlang cookie {}", cookie.display());
    let mut random = [0u8; 20];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random)).map_err(Error::io(&what))?;
    let text: String = random.iter().map(|b| char::from(b'A' + b % 26)).collect();
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(&cookie)?;
        file.write_all(text.as_bytes())?;
        std::os::unix::fs::chown(&cookie, Some(owner.uid), Some(owner.gid))
    };
    write().map_err(Error::io(what))
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub(crate) fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(Error::io("finding a free port"))?;
    listener.local_addr().map(|addr| addr.port()).map_err(Error::io("finding a free port"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("private-broker-layout-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn script(dir: &Path, name: &str, mode: u32) {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_first_dir_with_an_executable_server_wins_and_its_ctl_is_beside_it() {
        let root = scratch("scripts");
        let (none, not_exec, good, later) = (root.join("a"), root.join("b"), root.join("c"), root.join("d"));
        for dir in [&none, &not_exec, &good, &later] {
            std::fs::create_dir_all(dir).unwrap();
        }
        script(&not_exec, "rabbitmq-server", 0o644);
        script(&good, "rabbitmq-server", 0o755);
        script(&later, "rabbitmq-server", 0o755);
        let found = Scripts::first_in([none.clone(), not_exec, good.clone(), later]).unwrap();
        assert_eq!(found, Scripts { server: good.join("rabbitmq-server"), ctl: good.join("rabbitmqctl") });
        assert_eq!(Scripts::first_in([none]), None);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_node_env_puts_every_file_under_its_dir_and_names_its_own_ports() {
        let layout = Layout::new(Path::new("/data/rmq")).unwrap();
        let env = node_env(&layout, "n@localhost", 5673, 40001, Path::new("/var/lib/rabbitmq"), OsStr::new("/bin"));
        let env: HashMap<&str, String> = env.into_iter().map(|(k, v)| (k, v.to_string_lossy().into_owned())).collect();
        assert_eq!(env["RABBITMQ_NODENAME"], "n@localhost");
        assert_eq!(env["RABBITMQ_NODE_IP_ADDRESS"], "127.0.0.1");
        assert_eq!(env["RABBITMQ_NODE_PORT"], "5673");
        assert_eq!(env["RABBITMQ_DIST_PORT"], "40001");
        assert_eq!(env["RABBITMQ_MNESIA_BASE"], "/data/rmq/mnesia");
        assert_eq!(env["RABBITMQ_LOG_BASE"], "/data/rmq/log");
        assert_eq!(env["RABBITMQ_PID_FILE"], "/data/rmq/pid");
        assert_eq!(env["RABBITMQ_ENABLED_PLUGINS_FILE"], "/data/rmq/enabled_plugins");
        for config in ["RABBITMQ_CONFIG_FILE", "RABBITMQ_ADVANCED_CONFIG_FILE", "RABBITMQ_CONFIG_FILES"] {
            assert!(env[config].starts_with("/data/rmq/"), "{config} = {}", env[config]);
        }
        assert_eq!(env["HOME"], "/var/lib/rabbitmq");
        assert_eq!(env["PATH"], "/bin");
        let ctl = ctl_env(Path::new("/h"), OsStr::new("/bin"));
        assert!(ctl.iter().all(|(name, _)| !name.starts_with("RABBITMQ_")), "the CLI picks its own ports: {ctl:?}");
    }

    #[test]
    fn a_relative_dir_is_made_absolute() {
        let layout = Layout::new(Path::new("rel/dir")).unwrap();
        assert_eq!(layout.dir(), std::env::current_dir().unwrap().join("rel/dir"));
    }

    #[test]
    fn prepare_leaves_a_fresh_database_and_no_plugins() {
        let dir = scratch("prepare");
        let layout = Layout::new(&dir).unwrap();
        std::fs::create_dir_all(layout.mnesia().join("old-node")).unwrap();
        layout.prepare().unwrap();
        assert_eq!(std::fs::read_dir(layout.mnesia()).unwrap().count(), 0);
        assert!(layout.log().is_dir());
        assert_eq!(std::fs::read_to_string(layout.plugins_file()).unwrap(), "[].\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn passwd_lines_parse_to_uid_gid_and_home() {
        let line = "rabbitmq:x:106:109:RabbitMQ messaging server,,,:/var/lib/rabbitmq:/usr/sbin/nologin\n";
        assert_eq!(parse_passwd_line(line), Some(Account { uid: 106, gid: 109, home: "/var/lib/rabbitmq".into() }));
        assert_eq!(parse_passwd_line("rabbitmq:x:abc:109::/h:/bin/sh"), None);
        assert_eq!(parse_passwd_line("rabbitmq:x:1:2::"), None);
        assert_eq!(parse_passwd_line(""), None);
    }

    #[test]
    fn root_shares_the_rabbitmq_users_cookie_everyone_else_their_own() {
        let home = scratch("home");
        let rabbitmq = Account { uid: 106, gid: 109, home: home.clone() };
        let dir = Path::new("/data");
        let caller = Some(PathBuf::from("/home/me"));
        assert_eq!(
            cookie_home(Some(0), Some(rabbitmq.clone()), caller.clone(), dir),
            (home.clone(), Some(rabbitmq.clone()))
        );
        assert_eq!(cookie_home(Some(1000), Some(rabbitmq.clone()), caller.clone(), dir), ("/home/me".into(), None));
        assert_eq!(cookie_home(Some(0), None, caller, dir), ("/home/me".into(), None));
        assert_eq!(cookie_home(None, None, None, dir), (dir.to_path_buf(), None));
        let gone = Account { home: home.join("missing"), ..rabbitmq };
        assert_eq!(cookie_home(Some(0), Some(gone), None, dir).1, None);
        std::fs::remove_dir_all(home).unwrap();
    }

    #[test]
    fn a_missing_cookie_is_created_readable_by_its_owner_only_and_an_existing_one_kept() {
        let home = scratch("cookie");
        let me = Account { uid: current_uid().unwrap(), gid: 0, home: home.clone() };
        let me =
            Account { gid: std::fs::metadata(&home).map(|m| std::os::unix::fs::MetadataExt::gid(&m)).unwrap(), ..me };
        ensure_cookie(&home, &me).unwrap();
        let cookie = home.join(".erlang.cookie");
        let text = std::fs::read_to_string(&cookie).unwrap();
        assert!(text.len() == 20 && text.bytes().all(|b| b.is_ascii_uppercase()), "{text}");
        assert_eq!(std::fs::metadata(&cookie).unwrap().permissions().mode() & 0o777, 0o400);
        ensure_cookie(&home, &me).unwrap();
        assert_eq!(std::fs::read_to_string(&cookie).unwrap(), text, "kept");
        std::fs::remove_dir_all(home).unwrap();
    }

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_port().unwrap();
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
