//! The command line of `cargo xtask`, parsed by hand (std only).

/// What `cargo xtask` was asked to do.
#[derive(Debug, PartialEq)]
pub enum Task {
    /// Provide everything, then `cargo test --release --locked <extra>`.
    Test(Vec<String>),
    /// Provide the packages and a broker, then the narrated demo with `<extra>`.
    Demo(Vec<String>),
    /// Formatting, clippy and the fuzz targets' build, as CI checks them.
    Lint,
    /// Print the usage.
    Help,
}

/// The arguments did not name a task; the usage says what would.
#[derive(Debug, PartialEq)]
pub struct Misuse(pub String);

/// A short usage text.
pub const USAGE: &str = "\
usage: cargo xtask <task> [-- extra arguments]

tasks:
  test   install what the tests need, start RabbitMQ if none answers, then
         cargo test --release --locked [extra cargo test arguments]
  demo   install what the demo needs, start RabbitMQ if none answers, then
         the narrated demo (keyseal demo [extra arguments])
  lint   cargo fmt --check, cargo clippy -D warnings, build the fuzz targets

Missing Debian packages are installed when run as root; otherwise xtask
prints the command that installs them.";

/// The task named by `args` (without the program name). Whatever follows
/// `test` or `demo` is passed on; a leading `--` is dropped, so both
/// `cargo xtask test --test docs` and `cargo xtask test -- --test docs` work.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Task, Misuse> {
    let mut args = args.into_iter();
    let Some(task) = args.next() else { return Err(Misuse("no task given".into())) };
    let mut rest: Vec<String> = args.collect();
    if rest.first().is_some_and(|first| first == "--") {
        rest.remove(0);
    }
    match task.as_str() {
        "test" => Ok(Task::Test(rest)),
        "demo" => Ok(Task::Demo(rest)),
        "lint" if rest.is_empty() => Ok(Task::Lint),
        "lint" => Err(Misuse(format!("lint takes no arguments (got {})", rest.join(" ")))),
        "help" | "-h" | "--help" => Ok(Task::Help),
        other => Err(Misuse(format!("unknown task `{other}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Task, Misuse> {
        parse(args.iter().map(|arg| arg.to_string()))
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn tasks_take_what_follows_with_or_without_a_separator() {
        assert_eq!(parsed(&["test"]), Ok(Task::Test(vec![])));
        assert_eq!(parsed(&["test", "--test", "docs"]), Ok(Task::Test(strings(&["--test", "docs"]))));
        assert_eq!(parsed(&["test", "--", "--test", "docs"]), Ok(Task::Test(strings(&["--test", "docs"]))));
        // Only the first separator is ours; a second goes on to the test binaries.
        assert_eq!(
            parsed(&["test", "--", "docs", "--", "--nocapture"]),
            Ok(Task::Test(strings(&["docs", "--", "--nocapture"])))
        );
        assert_eq!(
            parsed(&["demo", "--", "--amqp-url", "amqp://h"]),
            Ok(Task::Demo(strings(&["--amqp-url", "amqp://h"])))
        );
        assert_eq!(parsed(&["lint"]), Ok(Task::Lint));
        assert_eq!(parsed(&["lint", "--"]), Ok(Task::Lint));
    }

    #[test]
    fn help_is_asked_for_and_nothing_or_an_unknown_task_is_a_misuse() {
        for help in ["help", "-h", "--help"] {
            assert_eq!(parsed(&[help]), Ok(Task::Help));
        }
        assert_eq!(parsed(&[]), Err(Misuse("no task given".into())));
        assert_eq!(parsed(&["tset"]), Err(Misuse("unknown task `tset`".into())));
        assert_eq!(parsed(&["lint", "--fix"]), Err(Misuse("lint takes no arguments (got --fix)".into())));
    }
}
