//! The documentation kept honest (issue 27): the README is short and the
//! rest lives in `docs/`, split by reader, so links between the files are
//! many and easy to break, and settings are easy to add without a word in
//! the docs. Two checks, no network and no broker:
//!
//! 1. every relative link in `README.md` and `docs/*.md` that stays in the
//!    repository leads to a file that exists, and a `#fragment` to a
//!    heading of the target (GitHub's anchor rules: lowercase, spaces to
//!    `-`, other punctuation dropped);
//! 2. every flag that `keyseal run --help` prints is in `docs/operating.md`,
//!    written as `` `--flag` `` (the settings table).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `README.md` and every `docs/*.md`.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("reading docs/")
        .map(|entry| entry.expect("reading docs/").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The lines outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (at, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fenced = !fenced;
        } else if !fenced {
            lines.push((at + 1, line));
        }
    }
    lines
}

/// A line without its inline code spans, so `[x](y)` inside backticks is
/// not taken for a link.
fn without_code_spans(line: &str) -> String {
    line.split('`').step_by(2).collect()
}

/// GitHub's anchor for a heading: lowercase, letters, digits, `-` and `_`
/// kept, each space a `-`, everything else dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a markdown file's headings; a repeated heading gets
/// `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        if !line.starts_with('#') {
            continue;
        }
        let Some(heading) = line.trim_start_matches('#').strip_prefix(' ') else { continue };
        let base = slug(heading);
        let mut anchor = base.clone();
        let mut n = 0;
        while !found.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
    }
    found
}

/// The targets of `[text](target)` links, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    for (number, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(open) = rest.find("](") {
            rest = &rest[open + 2..];
            let Some(close) = rest.find(')') else { break };
            // A title (`[t](path "title")`) follows the target after a space.
            let target = rest[..close].split_whitespace().next().unwrap_or("");
            links.push((number, target.trim_matches(['<', '>']).to_owned()));
            rest = &rest[close + 1..];
        }
    }
    links
}

#[test]
fn relative_links_resolve() {
    let mut broken = Vec::new();
    for file in documents() {
        let text = read(&file);
        let shown = file.strip_prefix(repo()).unwrap_or(file.as_path()).display().to_string();
        for (line, target) in links(&text) {
            if target.is_empty() || ["http://", "https://", "mailto:"].iter().any(|s| target.starts_with(*s)) {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let resolved = if path.is_empty() { file.clone() } else { lexical(&file.parent().unwrap().join(path)) };
            // Outside the checkout (the team's shared DESIGN.md beside it):
            // not this repository's to keep.
            if !resolved.starts_with(repo()) {
                continue;
            }
            if !resolved.exists() {
                broken.push(format!("{shown}:{line}: {target}: no such file"));
                continue;
            }
            let is_markdown = resolved.extension().is_some_and(|ext| ext == "md");
            if !fragment.is_empty() && is_markdown && !anchors(&read(&resolved)).contains(fragment) {
                broken.push(format!("{shown}:{line}: {target}: no heading with anchor #{fragment}"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links in the docs:\n{}", broken.join("\n"));
}

/// `path` with its `.` and `..` components resolved without the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut resolved = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                resolved.pop();
            }
            other => resolved.push(other),
        }
    }
    resolved
}

/// The long flags a help text names: tokens that start with `--` and a
/// lowercase letter, cut at the first character a flag cannot hold
/// (`--x=<X>`, `--x,`, `--x]`).
fn long_flags(help: &str) -> BTreeSet<String> {
    help.split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']' | '(' | ')'))
        .filter_map(|token| token.strip_prefix("--"))
        .filter(|name| name.starts_with(|c: char| c.is_ascii_lowercase()))
        .map(|name| name.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')).next().unwrap())
        .map(|name| format!("--{}", name.trim_end_matches('-')))
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect()
}

#[test]
fn every_run_flag_is_in_operating_md() {
    let out = Command::new(env!("CARGO_BIN_EXE_keyseal"))
        .args(["run", "--help"])
        .env_clear()
        .output()
        .expect("running keyseal run --help");
    assert!(out.status.success(), "keyseal run --help: {}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8(out.stdout).expect("help is UTF-8");
    let flags = long_flags(&help);
    assert!(flags.len() > 10, "found too few flags in keyseal run --help, is the parsing wrong?\n{help}");

    let operating = read(&repo().join("docs/operating.md"));
    let missing: Vec<&String> = flags.iter().filter(|flag| !operating.contains(&format!("`{flag}`"))).collect();
    assert!(
        missing.is_empty(),
        "docs/operating.md does not document these flags of keyseal run (add a row to its settings table): {}",
        missing.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
    );
}
