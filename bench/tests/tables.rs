//! docs/benchmarks.md publishes only what the benchmarks wrote: its tables
//! are exactly what `scripts/bench-tables.sh` generates from bench/results/,
//! and every result there is on the page.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
}

fn page() -> String {
    std::fs::read_to_string(root().join("docs/benchmarks.md")).expect("read docs/benchmarks.md")
}

#[test]
fn docs_benchmarks_is_what_the_results_generate() {
    let page = page();
    let dir = root().join("bench/results");
    let results = twill_bench::tables::read_results(&page, &dir).expect("read bench/results");
    let generated = twill_bench::tables::render(&page, &results)
        .unwrap_or_else(|e| panic!("docs/benchmarks.md: {e}"));
    assert!(
        generated == page,
        "docs/benchmarks.md is stale: its tables are not what bench/results/ produces; run scripts/bench-tables.sh"
    );
    // The same check fails when a result changes and the page does not.
    let mut changed = results.clone();
    let first = changed.values_mut().next().expect("at least one result");
    first.markdown.push_str("\n| changed | 1 |\n");
    assert_ne!(
        twill_bench::tables::render(&page, &changed).expect("render"),
        page,
        "a changed result must make the page stale"
    );
}

#[test]
fn the_readme_quotes_only_what_the_results_say() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("read README.md");
    assert!(
        !twill_bench::tables::wanted(&readme).is_empty(),
        "the README quotes no benchmark result (issue 17 wants the service proxy table there)"
    );
    let results = twill_bench::tables::read_results(&readme, &root().join("bench/results"))
        .expect("read bench/results");
    let generated = twill_bench::tables::render_quotes(&readme, &results)
        .unwrap_or_else(|e| panic!("README.md: {e}"));
    assert!(
        generated == readme,
        "README.md's quoted results are stale: run scripts/bench-tables.sh"
    );
}

#[test]
fn every_result_file_is_published() {
    let page = page();
    let wanted = twill_bench::tables::wanted(&page);
    let mut missing = Vec::new();
    for e in std::fs::read_dir(root().join("bench/results")).expect("bench/results") {
        let p = e.expect("dir entry").path();
        if p.extension().is_some_and(|x| x == "md") {
            let name = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if !wanted.contains(&name) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "bench/results/ holds results docs/benchmarks.md does not show: {missing:?}"
    );
}
