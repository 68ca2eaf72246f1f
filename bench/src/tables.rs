//! Regenerates the tables of `docs/benchmarks.md` from `bench/results/`.
//!
//! The page holds marker pairs
//! `<!-- bench-results NAME begin -->` … `<!-- bench-results NAME end -->`;
//! everything between a pair is replaced by `bench/results/NAME.md` (the
//! tables the benchmark `NAME` wrote in its last run), headed by where it
//! comes from and when it was recorded (`recorded` / `machine` of
//! `NAME.json`). A result that does not exist yet (a benchmark changed and
//! not run since) gives a block that says so and how to produce it. Text
//! outside the markers is left alone, so the prose may explain but every
//! published number sits in a generated block. Pure: the caller reads and
//! writes the files (`bench/src/bin/tables.rs`).
//!
//! The README quotes parts of results the same way: a marker
//! `<!-- bench-results NAME from "A" to "B" begin -->` takes the lines of
//! `NAME.md` from the first one starting with `A` through the first one
//! after it starting with `B` ([`render_quotes`]); a quote whose lines are
//! gone is an error, so a README that quotes a changed result goes stale
//! loudly.

use std::collections::BTreeMap;

/// A result the page needs, as read from `bench/results/`.
#[derive(Debug, Clone, Default)]
pub struct ResultFiles {
    /// `NAME.md`, the benchmark's own markdown.
    pub markdown: String,
    /// `NAME.json`, when the benchmark wrote one.
    pub json: Option<serde_json::Value>,
}

/// Why the page cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TablesError {
    /// A begin marker without its end marker.
    Unclosed(String),
    /// The page has no marker at all.
    NoMarkers,
    /// A quote's first or last line is not in the result.
    QuoteNotFound { name: String, line: String },
}

impl std::fmt::Display for TablesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TablesError::Unclosed(n) => write!(f, "marker for {n:?} opens but never closes"),
            TablesError::NoMarkers => write!(f, "no <!-- bench-results NAME begin --> markers"),
            TablesError::QuoteNotFound { name, line } => write!(
                f,
                "bench/results/{name}.md has no line starting with {line:?} (the quote's bounds)"
            ),
        }
    }
}

impl std::error::Error for TablesError {}

fn begin(name: &str) -> String {
    format!("<!-- bench-results {name} begin -->")
}

fn end(name: &str) -> String {
    format!("<!-- bench-results {name} end -->")
}

/// A marker's content: the result's name and, for a quote, its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    key: String,
    name: String,
    quote: Option<(String, String)>,
}

fn markers(page: &str) -> Vec<Marker> {
    page.lines()
        .filter_map(|l| {
            let key = l
                .trim()
                .strip_prefix("<!-- bench-results ")?
                .strip_suffix(" begin -->")?;
            let (name, rest) = key.split_once(' ').unwrap_or((key, ""));
            let quote = rest
                .strip_prefix("from \"")
                .and_then(|r| r.strip_suffix('"'))
                .and_then(|r| r.split_once("\" to \""))
                .map(|(a, b)| (a.to_string(), b.to_string()));
            Some(Marker {
                key: key.to_string(),
                name: name.to_string(),
                quote,
            })
        })
        .collect()
}

/// The result names the page's markers ask for, in order.
pub fn wanted(page: &str) -> Vec<String> {
    markers(page).into_iter().map(|m| m.name).collect()
}

/// The lines of `markdown` from the first starting with `from` through the
/// first after it starting with `to`.
fn quote(name: &str, markdown: &str, from: &str, to: &str) -> Result<String, TablesError> {
    let missing = |line: &str| TablesError::QuoteNotFound {
        name: name.to_string(),
        line: line.to_string(),
    };
    let lines: Vec<&str> = markdown.lines().collect();
    let a = lines
        .iter()
        .position(|l| l.starts_with(from))
        .ok_or_else(|| missing(from))?;
    let b = lines[a..]
        .iter()
        .position(|l| l.starts_with(to))
        .ok_or_else(|| missing(to))?;
    Ok(lines[a..=a + b].join("\n") + "\n")
}

/// The block that stands between a result's markers.
pub fn block(name: &str, r: &ResultFiles) -> String {
    block_at(name, r, "../")
}

/// [`block`] for a page at `link_prefix` from the repository root.
fn block_at(name: &str, r: &ResultFiles, link_prefix: &str) -> String {
    let field = |k: &str| {
        r.json
            .as_ref()
            .and_then(|j| j.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let mut s = format!(
        "_Generated from [`bench/results/{name}.md`]({link_prefix}bench/results/{name}.md)"
    );
    match (field("recorded"), field("machine")) {
        (Some(at), Some(m)) => s.push_str(&format!(", recorded {at} on {m}")),
        (Some(at), None) => s.push_str(&format!(", recorded {at}")),
        _ => {}
    }
    if let Some(b) = field("build") {
        s.push_str(&format!(", {b} build"));
    }
    s.push_str("; do not edit by hand: `scripts/bench-tables.sh`._\n\n");
    for line in r.markdown.trim().lines() {
        // The page's own headings structure it; a result's headings become
        // bold lines so they do not add anchors or change the outline.
        match line.trim_start_matches('#') {
            rest if rest.len() < line.len() && rest.starts_with(' ') => {
                s.push_str(&format!("**{}**\n", rest.trim()));
            }
            _ => {
                s.push_str(line.trim_end());
                s.push('\n');
            }
        }
    }
    s
}

/// The page with every marked block regenerated from `results`.
pub fn render(page: &str, results: &BTreeMap<String, ResultFiles>) -> Result<String, TablesError> {
    if markers(page).is_empty() {
        return Err(TablesError::NoMarkers);
    }
    render_at(page, results, "../")
}

/// The README (at the repository root) with its quoted blocks regenerated;
/// a README without markers is returned as it is.
pub fn render_quotes(
    page: &str,
    results: &BTreeMap<String, ResultFiles>,
) -> Result<String, TablesError> {
    render_at(page, results, "")
}

fn render_at(
    page: &str,
    results: &BTreeMap<String, ResultFiles>,
    link_prefix: &str,
) -> Result<String, TablesError> {
    let names = markers(page);
    let mut out = String::with_capacity(page.len());
    let mut lines = page.split_inclusive('\n');
    while let Some(line) = lines.next() {
        out.push_str(line);
        let Some(m) = names.iter().find(|m| line.trim() == begin(&m.key)) else {
            continue;
        };
        let name = &m.name;
        let r = results.get(name);
        // Skip the old block up to and including its end marker.
        let closing = end(&m.key);
        let mut closed = false;
        for old in lines.by_ref() {
            if old.trim() == closing {
                closed = true;
                break;
            }
        }
        if !closed {
            return Err(TablesError::Unclosed(m.key.clone()));
        }
        out.push('\n');
        match (r, &m.quote) {
            (Some(r), Some((from, to))) => {
                let part = ResultFiles {
                    markdown: quote(name, &r.markdown, from, to)?,
                    json: r.json.clone(),
                };
                out.push_str(&block_at(name, &part, link_prefix));
            }
            (Some(r), None) => out.push_str(&block_at(name, r, link_prefix)),
            (None, _) => out.push_str(&format!(
                "_No result at this commit: `bench/results/{name}.md` does not exist (the benchmark changed and has not been run since). `scripts/bench.sh {}` writes it and regenerates this block._\n",
                name.replace('_', "-")
            )),
        }
        out.push('\n');
        out.push_str(&closing);
        out.push('\n');
    }
    Ok(out)
}

/// Reads what `page` asks for from `dir` (`NAME.md`, and `NAME.json` if
/// present).
pub fn read_results(
    page: &str,
    dir: &std::path::Path,
) -> std::io::Result<BTreeMap<String, ResultFiles>> {
    let mut out = BTreeMap::new();
    for name in wanted(page) {
        let md = dir.join(format!("{name}.md"));
        if !md.is_file() {
            continue;
        }
        let markdown = std::fs::read_to_string(&md)?;
        let json = std::fs::read_to_string(dir.join(format!("{name}.json")))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        out.insert(name, ResultFiles { markdown, json });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(md: &str) -> BTreeMap<String, ResultFiles> {
        [(
            "x".to_string(),
            ResultFiles {
                markdown: md.into(),
                json: Some(serde_json::json!({"recorded": "T", "machine": "M"})),
            },
        )]
        .into()
    }

    #[test]
    fn replaces_only_between_markers_and_is_stable() {
        let page = "# P\nprose 1\n<!-- bench-results x begin -->\nold | 9 |\n<!-- bench-results x end -->\ntail\n";
        let got = render(page, &results("## Head\n| a | 1 |\n")).expect("render");
        assert!(got.starts_with("# P\nprose 1\n<!-- bench-results x begin -->\n"));
        assert!(got.ends_with("<!-- bench-results x end -->\ntail\n"));
        assert!(got.contains("| a | 1 |"));
        assert!(got.contains("**Head**"));
        assert!(got.contains("recorded T on M"));
        assert!(!got.contains("old | 9"));
        assert_eq!(render(&got, &results("## Head\n| a | 1 |\n")).unwrap(), got);
        // A changed result changes the page: stale tables are caught.
        assert_ne!(render(&got, &results("| a | 2 |\n")).unwrap(), got);
    }

    #[test]
    fn quotes_take_only_their_lines_and_fail_when_they_are_gone() {
        let md = "intro\n\nRatios:\n\n| a | 1 |\n\nGoals: met\n\nfooter 7\n";
        let page = "# R\n<!-- bench-results x from \"Ratios\" to \"Goals\" begin -->\nold\n<!-- bench-results x from \"Ratios\" to \"Goals\" end -->\nrest\n";
        let got = render_quotes(page, &results(md)).expect("render");
        assert!(got.contains("| a | 1 |") && got.contains("Goals: met"));
        assert!(!got.contains("intro") && !got.contains("footer 7") && !got.contains("old"));
        assert!(got.contains("](bench/results/x.md)"), "{got}");
        assert_eq!(wanted(page), vec!["x".to_string()]);
        assert_eq!(render_quotes(&got, &results(md)).unwrap(), got);
        assert_eq!(
            render_quotes(page, &results("| a | 1 |\n")),
            Err(TablesError::QuoteNotFound {
                name: "x".into(),
                line: "Ratios".into()
            })
        );
        assert_eq!(render_quotes("plain\n", &results(md)).unwrap(), "plain\n");
    }

    #[test]
    fn says_when_a_result_is_missing_and_refuses_open_markers() {
        let page = "<!-- bench-results y_z begin -->\nold | 1 |\n<!-- bench-results y_z end -->\n";
        let got = render(page, &results("")).expect("render");
        assert!(got.contains("No result at this commit") && got.contains("scripts/bench.sh y-z"));
        assert!(!got.contains("old | 1"));
        let open = "<!-- bench-results x begin -->\nrest\n";
        assert_eq!(
            render(open, &results("")),
            Err(TablesError::Unclosed("x".into()))
        );
        assert_eq!(
            render("no markers\n", &results("")),
            Err(TablesError::NoMarkers)
        );
    }
}
