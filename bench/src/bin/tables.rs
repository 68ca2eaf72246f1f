//! Regenerates the tables in docs/benchmarks.md and the README's quoted
//! results from bench/results/ (`twill_bench::tables`). `--check` changes
//! nothing and exits 1 when a page is not what the results would produce.
//!
//! Run: `scripts/bench-tables.sh [--check]`.

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let check = std::env::args().any(|a| a == "--check");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ has a parent")?;
    let mut stale = false;
    for (file, quotes) in [("docs/benchmarks.md", false), ("README.md", true)] {
        let page_path = root.join(file);
        let page = std::fs::read_to_string(&page_path)
            .with_context(|| format!("read {}", page_path.display()))?;
        let results = twill_bench::tables::read_results(&page, &twill_bench::results_dir())?;
        let new = if quotes {
            twill_bench::tables::render_quotes(&page, &results)
        } else {
            twill_bench::tables::render(&page, &results)
        }
        .with_context(|| format!("regenerate {}", page_path.display()))?;
        if new == page {
            println!("{} is up to date", page_path.display());
        } else if check {
            eprintln!(
                "{} differs from what bench/results/ produces: run scripts/bench-tables.sh",
                page_path.display()
            );
            stale = true;
        } else {
            std::fs::write(&page_path, new)
                .with_context(|| format!("write {}", page_path.display()))?;
            println!("{} regenerated", page_path.display());
        }
    }
    if stale {
        std::process::exit(1);
    }
    Ok(())
}
