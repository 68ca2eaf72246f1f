//! The README and docs/ are what a newcomer reads first: every relative link
//! in README.md and docs/*.md must lead somewhere (the file exists; a
//! `#fragment` into a markdown file names one of its headings, as GitHub
//! spells heading anchors), and CI must run the test command the README
//! gives.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Lines outside fenced code blocks, with their 1-based line numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut in_fence = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            out.push((i + 1, line));
        }
    }
    out
}

/// `line` without its inline code spans (a `](x)` inside backticks is no link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The targets of inline links and images (`[text](target)`), by line.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((n, target.to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, only letters, digits, `-`,
/// `_` and spaces kept, spaces turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every heading anchor of a markdown text (repeated headings get `-1`,
/// `-2`, … as on GitHub).
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let count = seen.entry(base.clone()).or_insert(0);
        out.push(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    out
}

/// Every broken relative link of the markdown file `file`, as
/// `file:line: target (reason)`.
fn broken_links(file: &Path) -> Vec<String> {
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return vec![format!("{}: cannot read: {e}", file.display())],
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut broken = Vec::new();
    for (line, target) in link_targets(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, fragment) = match target.split_once('#') {
            Some((p, f)) => (p, Some(f)),
            None => (target.as_str(), None),
        };
        let resolved = if path.is_empty() {
            file.to_path_buf()
        } else {
            dir.join(path)
        };
        let here = format!("{}:{line}: {target}", file.display());
        if path.is_empty() && fragment.is_none() {
            broken.push(format!("{here} (empty link)"));
            continue;
        }
        if !resolved.exists() {
            broken.push(format!("{here} (no such file: {})", resolved.display()));
            continue;
        }
        let Some(fragment) = fragment else { continue };
        if resolved.extension().is_some_and(|e| e == "md") {
            let target_text = fs::read_to_string(&resolved).unwrap_or_default();
            if !anchors(&target_text).iter().any(|a| a == fragment) {
                broken.push(format!(
                    "{here} (no heading with anchor #{fragment} in {})",
                    resolved.display()
                ));
            }
        }
    }
    broken
}

/// README.md and every markdown file in docs/.
fn documentation_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let docs = fs::read_dir(root.join("docs")).expect("read docs/");
    let mut pages: Vec<PathBuf> = docs
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    assert!(!pages.is_empty(), "docs/ has no markdown pages");
    files.extend(pages);
    files
}

#[test]
fn every_relative_link_in_readme_and_docs_resolves() {
    let root = repo_root();
    let files = documentation_files(&root);
    let mut checked = 0;
    let mut broken = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("read a documentation file");
        checked += link_targets(&text)
            .iter()
            .filter(|(_, t)| !t.contains("://"))
            .count();
        broken.extend(broken_links(file));
    }
    // The README links into docs/ and docs/ links back: a parser that finds
    // nothing would pass vacuously.
    assert!(
        checked > 50,
        "only {checked} relative links found in {} files",
        files.len()
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_finds_a_broken_link_and_passes_a_good_one() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let docs = dir.path().join("docs");
    fs::create_dir(&docs).expect("create docs/");
    fs::write(
        docs.join("page.md"),
        "# A page\n\n## Its section (`code`)\n\nBack to [the top](../README.md#the-top).\n",
    )
    .expect("write page");
    let readme = dir.path().join("README.md");
    let good = "# The top\n\n[page](docs/page.md) and [section](docs/page.md#its-section-code)\n\
                ```\n[not a link](nowhere.md)\n```\n`[code](nowhere.md)` [web](https://example.com/x)\n";
    fs::write(&readme, good).expect("write README");
    assert_eq!(broken_links(&readme), Vec::<String>::new());
    assert_eq!(broken_links(&docs.join("page.md")), Vec::<String>::new());

    let bad = format!(
        "{good}[gone](docs/gone.md) [no section](docs/page.md#nothing-here) [](#the-top)\n"
    );
    fs::write(&readme, bad).expect("write README");
    let found = broken_links(&readme);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("docs/gone.md (no such file"), "{found:?}");
    assert!(
        found[1].contains("#nothing-here (no heading with anchor"),
        "{found:?}"
    );
}

#[test]
fn repeated_headings_get_numbered_anchors() {
    let text = "# Twill\n## Tests\n## Tests\n```\n# not a heading\n```\n#nospace\n";
    assert_eq!(anchors(text), ["twill", "tests", "tests-1"]);
}

/// CI's entry point runs exactly the test command the README gives.
#[test]
fn ci_runs_the_readme_test_command() {
    let root = repo_root();
    let readme = fs::read_to_string(root.join("README.md")).expect("read README.md");
    let section = readme
        .split("\n## The two commands\n")
        .nth(1)
        .expect("README has a section \"The two commands\"");
    let command = section
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| l.ends_with("/test.sh"))
        .expect("\"The two commands\" names a test.sh command");
    let script = root.join(command);
    assert!(script.is_file(), "{command} does not exist");
    let ci = fs::read_to_string(root.join(".ci/run")).expect("read .ci/run");
    let runs: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert!(
        runs.contains(&format!("exec {command}").as_str()),
        ".ci/run does not exec the README's test command {command}:\n{ci}"
    );
}
