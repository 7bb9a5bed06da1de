//! The image: a multi-stage `Dockerfile` that builds keyseal locked and
//! runs it unprivileged with a health check it can run, and a
//! `.dockerignore` that keeps build output and state out of the context.

use std::collections::BTreeSet;

use crate::files::read;

/// One `FROM` stage of the Dockerfile: the checks are per stage (the
/// builder compiles, the runtime stage is what ships).
struct Stage {
    image: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

impl Stage {
    /// The arguments of every `instruction` (e.g. each `RUN`) of the stage, in
    /// order, for checks that any of them does something.
    fn all(&self, instruction: &str) -> impl Iterator<Item = &str> {
        self.instructions.iter().filter(move |(i, _)| i == instruction).map(|(_, a)| a.as_str())
    }

    /// The arguments of the last `instruction` of the stage: the one that
    /// counts for `USER`, `ENTRYPOINT`, `CMD` and `HEALTHCHECK`.
    fn last(&self, instruction: &str) -> Option<&str> {
        self.all(instruction).last()
    }

    /// Packages `apt-get install` adds in this stage: the build tools the
    /// builder needs and the tools a runtime health check may call.
    fn apt_packages(&self) -> BTreeSet<String> {
        let mut packages = BTreeSet::new();
        for run in self.all("RUN") {
            for command in run.split("&&").flat_map(|c| c.split(';')) {
                let words: Vec<&str> = command.split_whitespace().collect();
                if let Some(at) = words.windows(2).position(|w| w == ["apt-get", "install"]) {
                    packages.extend(words[at + 2..].iter().filter(|w| !w.starts_with('-')).map(|w| (*w).to_owned()));
                }
            }
        }
        packages
    }
}

/// The Dockerfile's stages, instructions with line continuations joined
/// and comments dropped: a small parser, since no Docker is at hand.
fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Comment and blank lines are dropped, also inside a continued line.
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(current.trim().is_empty(), "the Dockerfile ends inside a continued line");
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical.into_iter().filter(|l| !l.trim().is_empty()) {
        let (instruction, arguments) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = instruction.to_ascii_uppercase();
        let arguments = arguments.trim().to_owned();
        if instruction == "FROM" {
            let words: Vec<&str> = arguments.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => None,
            };
            stages.push(Stage {
                image: words.first().expect("FROM names an image").to_string(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((instruction, arguments));
        } else {
            assert_eq!(instruction, "ARG", "only ARG may come before the first FROM");
        }
    }
    stages
}

/// An exec-form (JSON array) argument list: `ENTRYPOINT` and `CMD` must be
/// in that form so keyseal is PID 1 and gets the stop signal.
fn exec_form(arguments: &str) -> Vec<String> {
    serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{arguments} is not exec (JSON) form: {e}"))
}

#[test]
fn dockerfile_is_multi_stage_builds_locked_and_runs_unprivileged() {
    let stages = dockerfile_stages(&read("Dockerfile"));
    assert!(stages.len() >= 2, "multi-stage: {} stage(s)", stages.len());

    let builder = stages.iter().find(|s| s.name.as_deref() == Some("builder")).expect("a stage named builder");
    assert_eq!(builder.image, "rust:1-bookworm");
    let build_packages = builder.apt_packages();
    for package in ["clang", "libclang-dev"] {
        assert!(build_packages.contains(package), "the builder installs {package}: {build_packages:?}");
    }
    let build = builder.all("RUN").find(|r| r.contains("cargo build")).expect("the builder runs cargo build");
    let words: Vec<&str> = build.split_whitespace().collect();
    for flag in ["--release", "--locked"] {
        assert!(words.contains(&flag), "cargo build {flag}: {build}");
    }
    assert!(words.windows(2).any(|w| w == ["--bin", "keyseal"]), "builds the keyseal binary: {build}");

    let runtime = stages.last().unwrap();
    assert_eq!(runtime.image, "debian:bookworm-slim", "the runtime stage");
    assert!(
        runtime.all("COPY").any(|c| c.contains("--from=builder") && c.contains("keyseal")),
        "the runtime copies keyseal from the builder"
    );
    let runtime_packages = runtime.apt_packages();
    assert!(runtime_packages.contains("ca-certificates"), "{runtime_packages:?}");

    // Non-root: the last USER is neither root nor uid 0, and is created here.
    let user = runtime.last("USER").expect("the runtime sets USER");
    let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
    for id in [uid, gid] {
        assert!(!matches!(id, "root" | "0"), "runs as non-root, not {user}");
    }
    let creates_user = runtime.all("RUN").any(|r| {
        r.contains("useradd")
            && r.split_whitespace().any(|w| w == "keyseal")
            && (uid == "keyseal" || r.contains(&format!("--uid {uid}")))
    });
    assert!(creates_user, "the runtime creates user keyseal with uid {uid}");
    // USER must come after the steps that need root.
    let user_at = runtime.instructions.iter().rposition(|(i, _)| i == "USER").unwrap();
    let last_run = runtime.instructions.iter().rposition(|(i, _)| i == "RUN").unwrap();
    assert!(last_run < user_at, "USER is set after the last RUN");

    assert_eq!(exec_form(runtime.last("ENTRYPOINT").expect("ENTRYPOINT")), ["keyseal"]);
    assert_eq!(exec_form(runtime.last("CMD").expect("CMD")), ["run"]);
    assert!(
        runtime.all("EXPOSE").flat_map(str::split_whitespace).any(|p| p.split('/').next() == Some("8080")),
        "EXPOSE 8080"
    );
    assert!(runtime.all("VOLUME").any(|v| v.contains("/var/lib/keyseal")), "VOLUME /var/lib/keyseal");

    // A health check must not call a tool the image lacks.
    let check = runtime.last("HEALTHCHECK").expect("a HEALTHCHECK");
    let command = check.split_once("CMD").expect("HEALTHCHECK ... CMD").1.trim();
    let command = if command.starts_with('[') { exec_form(command).join(" ") } else { command.to_owned() };
    assert!(command.contains("/healthz"), "{command}");
    for tool in ["curl", "wget"] {
        if command.split_whitespace().any(|w| w == tool) {
            assert!(runtime_packages.contains(tool), "the health check uses {tool}, which the image must install");
        }
    }
}

#[test]
fn dockerignore_keeps_build_output_and_state_out_of_the_context() {
    let ignore = read(".dockerignore");
    let patterns: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for needed in ["target", ".git", "keyseal-data"] {
        assert!(patterns.contains(needed), ".dockerignore lists {needed}: {patterns:?}");
    }
    // What the build needs must not be ignored.
    for kept in ["src", "proto", "Cargo.toml", "Cargo.lock", "build.rs", "benches", "keyvault-emulator", ".cargo"] {
        assert!(!patterns.contains(kept), ".dockerignore must keep {kept}");
    }
}
