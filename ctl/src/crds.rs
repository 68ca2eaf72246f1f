//! `twillctl crds`: the CRDs generated from the Rust types.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::CrdArgs;

pub fn run(args: CrdArgs) -> anyhow::Result<ExitCode> {
    let rendered = twill_api::crds::rendered().map_err(anyhow::Error::msg)?;
    if let Some(dir) = args.out {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, body) in rendered {
            let path = dir.join(&file);
            std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = args.check {
        let mut stale = Vec::new();
        for (file, body) in rendered {
            let path = dir.join(&file);
            match std::fs::read_to_string(&path) {
                Ok(existing) if existing == body => {}
                Ok(_) => stale.push(format!("{} differs", path.display())),
                Err(e) => stale.push(format!("{}: {e}", path.display())),
            }
        }
        if stale.is_empty() {
            println!("CRDs in {} match the types", dir.display());
            return Ok(ExitCode::SUCCESS);
        }
        for s in &stale {
            eprintln!("{s}");
        }
        eprintln!(
            "run `twillctl crds --out {}` and commit the result",
            dir.display()
        );
        return Ok(ExitCode::from(1));
    }
    let docs: Vec<String> = rendered.into_iter().map(|(_, body)| body).collect();
    print!("{}", docs.join("---\n"));
    Ok(ExitCode::SUCCESS)
}
