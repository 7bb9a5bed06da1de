//! `cargo xtask`: the project's tasks, by the Rust convention for them
//! (an `xtask` crate and an alias in `.cargo/config.toml`). Two commands
//! with nothing before them: `cargo xtask demo` and `cargo xtask test`
//! check what they need and provide it (Debian packages, the tests' Python
//! packages in a venv under the target dir, a private RabbitMQ node when
//! none answers), then run the demo or the README's test command.
//! `cargo xtask lint` is the rest of what CI checks. std only, so it builds
//! in seconds before anything else.

mod apt;
mod args;
mod broker;
mod context;
mod error;
mod python;
mod tasks;

use std::process::ExitCode;

use args::{Misuse, Task, USAGE};
use context::Context;

fn main() -> ExitCode {
    let task = match args::parse(std::env::args().skip(1)) {
        Ok(Task::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(task) => task,
        Err(Misuse(why)) => {
            eprintln!("xtask: {why}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match tasks::run_task(&Context::from_env(), task) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
