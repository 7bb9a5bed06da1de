//! Settings from flags, the environment and a TOML file: the file is
//! applied by turning its keys into flags placed before the real ones, so
//! clap stays the single parser and validator, and embedders parse flag
//! groups without a command line ([`parse_flags`]).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser};

/// Parses a flag group (such as `config::Settings` or the emulator's settings)
/// from `flags` alone, without a program name, applying their environment
/// variables and defaults exactly as the command line would. It exists so
/// embedders (`keyseal demo`, the tests) build settings without repeating
/// any default.
pub fn parse_flags<T, I, F>(flags: I) -> Result<T, clap::Error>
where
    T: Args,
    I: IntoIterator<Item = F>,
    F: Into<OsString> + Clone,
{
    FlagsOnly::<T>::try_parse_from(flags).map(|parsed| parsed.flags)
}

#[derive(Parser)]
#[command(no_binary_name = true, args_override_self = true)]
struct FlagsOnly<T: Args> {
    #[command(flatten)]
    flags: T,
}

/// Errors reading the `--config` file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a value of an unsupported type.
    #[error("config file {path}: {reason}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Returns `args` with the settings of the `--config` file (or
/// `KEYSEAL_CONFIG`) inserted as flags right after `subcommand`, skipping
/// keys whose environment variable is set, so flags beat the environment
/// and the environment beats the file.
pub fn with_config_file(args: Vec<OsString>, subcommand: &str) -> Result<Vec<OsString>, ConfigError> {
    let Some(at) = args.iter().position(|a| a == subcommand) else {
        return Ok(args);
    };
    let path = config_path(&args[at + 1..]).or_else(|| std::env::var_os("KEYSEAL_CONFIG").map(PathBuf::from));
    let Some(path) = path else {
        return Ok(args);
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
    let invalid = |reason: String| ConfigError::Invalid { path: shown.clone(), reason };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| invalid(e.to_string()))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let env = format!("KEYSEAL_{}", key.to_uppercase().replace('-', "_"));
        if std::env::var_os(&env).is_some() {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items,
            single => vec![single],
        };
        for value in values {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => return Err(invalid(format!("`{key}`: unsupported value {other}"))),
            };
            flags.push(OsString::from(format!("--{key}={text}")));
        }
    }
    let mut out = args;
    out.splice(at + 1..at + 1, flags);
    Ok(out)
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_settings_go_before_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keyseal.toml");
        std::fs::write(&file, "seal-after = \"2h\"\nprefetch = 50\n").unwrap();
        let args: Vec<OsString> = ["keyseal", "run", "--config", file.to_str().unwrap(), "--prefetch", "7"]
            .iter()
            .map(OsString::from)
            .collect();
        let out = with_config_file(args, "run").unwrap();
        let shown: Vec<_> = out.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let seal = shown.iter().position(|a| a == "--seal-after=2h").unwrap();
        let file_prefetch = shown.iter().position(|a| a == "--prefetch=50").unwrap();
        let flag_prefetch = shown.iter().position(|a| a == "--prefetch").unwrap();
        assert_eq!(seal.min(file_prefetch), 2, "file flags come right after the subcommand");
        assert!(file_prefetch < flag_prefetch, "real flags come later and win");
    }

    #[test]
    fn unreadable_file_is_a_clear_error() {
        let args: Vec<OsString> =
            ["keyseal", "run", "--config=/nonexistent/k.toml"].iter().map(OsString::from).collect();
        let err = with_config_file(args, "run").unwrap_err().to_string();
        assert!(err.contains("/nonexistent/k.toml"), "{err}");
    }
}
