//! The resource commands: get, apply, create, replace, delete, patch, label.
//!
//! Writes from files are all-or-nothing at the validation stage: every
//! document is parsed and validated (against the store too, e.g. pool
//! overlap) before the first write, and an error names the file, the
//! document, the line, the field and the bad value.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;
use twill_api::manifest::{Document, line_of_field, parse_document, split_documents};
use twill_api::{Kind, ObjectKey, Store, StoreError};

use crate::UsageError;
use crate::cli::{DeleteArgs, FileArgs, GetArgs, LabelArgs, OutputFormat, PatchArgs, StoreArgs};
use crate::output::{name_of, render};

fn kind_arg(s: &str) -> Result<Kind, UsageError> {
    Kind::from_name(s).ok_or_else(|| {
        let known: Vec<String> = Kind::ALL.iter().map(|k| k.plural()).collect();
        UsageError(format!(
            "unknown kind {s:?}; known kinds: {}",
            known.join(", ")
        ))
    })
}

fn namespace_for(kind: Kind, ns: &str) -> Option<String> {
    kind.namespaced().then(|| ns.to_string())
}

pub async fn get(store: &StoreArgs, args: GetArgs) -> anyhow::Result<ExitCode> {
    let kind = kind_arg(&args.kind)?;
    let store = store.open().await?;
    let mut items = Vec::new();
    if args.names.is_empty() {
        let ns = (kind.namespaced() && !args.all_namespaces).then_some(args.namespace.as_str());
        items = store.backend().list(kind, ns).await?.items;
    } else {
        let mut missing = Vec::new();
        for name in &args.names {
            let key = ObjectKey {
                namespace: namespace_for(kind, &args.namespace),
                name: name.clone(),
            };
            match store.backend().get(kind, &key).await? {
                Some(v) => items.push(v),
                None => missing.push(format!("{kind} {key} not found")),
            }
        }
        if !missing.is_empty() {
            if !items.is_empty() {
                print!("{}", render(kind, &items, args.output, false)?);
            }
            bail!(missing.join("\n"));
        }
    }
    warn_not_understood(kind, &items);
    warn_invalid(kind, &items);
    if items.is_empty() && matches!(args.output, OutputFormat::Table | OutputFormat::Wide) {
        eprintln!("No {} found.", kind.plural());
        return Ok(ExitCode::SUCCESS);
    }
    let with_ns = kind.namespaced() && args.all_namespaces;
    print!("{}", render(kind, &items, args.output, with_ns)?);
    Ok(ExitCode::SUCCESS)
}

/// Objects from a cluster running another Twill version are shown as
/// stored; what this version does not understand is said on stderr.
fn warn_not_understood(kind: Kind, items: &[Value]) {
    for v in items {
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(w) = twill_api::compat::check(kind, v).warning(kind, name) {
            eprintln!("warning: {w}");
        }
    }
}

/// Objects that reached the store although invalid (an older CRD, a
/// direct etcd write) are shown as stored and marked INVALID on stderr:
/// twill-node does not use them.
fn warn_invalid(kind: Kind, items: &[Value]) {
    for v in items {
        if let Err(e) = kind.validate_value(v) {
            let reasons: Vec<String> = e.errors.iter().map(ToString::to_string).collect();
            eprintln!(
                "warning: INVALID {kind} {:?}: {}; twill-node does not use it (fix it with twillctl apply, or delete it)",
                e.name,
                reasons.join("; ")
            );
        }
    }
}

/// A manifest document that parsed and names a known kind.
struct Loaded {
    source: String,
    doc: Document,
    kind: Kind,
    value: Value,
}

impl Loaded {
    fn key(&self) -> Result<ObjectKey, StoreError> {
        ObjectKey::of(self.kind, &self.value)
    }
}

fn manifest_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            })
            .collect();
        files.sort();
        Ok(files)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// Reads every document of every file; returns them, or every problem found.
fn load(files: &[PathBuf], namespace: &str) -> anyhow::Result<Result<Vec<Loaded>, Vec<String>>> {
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    for arg in files {
        let paths = if arg.as_os_str() == "-" {
            vec![arg.clone()]
        } else {
            manifest_files(arg)?
        };
        for path in paths {
            let (source, text) = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading standard input")?;
                ("<stdin>".to_string(), s)
            } else {
                let s = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                (path.display().to_string(), s)
            };
            for doc in split_documents(&text) {
                let mut value = match parse_document(&doc) {
                    Ok(v) => v,
                    Err(e) => {
                        problems.push(format!("{source}: {e}"));
                        continue;
                    }
                };
                let api_version = value
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let kind_name = value.get("kind").and_then(Value::as_str).unwrap_or("");
                let Some(kind) = Kind::from_type_meta(api_version, kind_name) else {
                    let hint = match Kind::from_name(kind_name) {
                        Some(k) => format!("{k} is apiVersion {}", k.api_resource().api_version),
                        None => {
                            "known kinds: ".to_string()
                                + &Kind::ALL
                                    .iter()
                                    .map(|k| k.name())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                        }
                    };
                    problems.push(format!(
                        "{source}: document {} (line {}): unknown apiVersion/kind {api_version:?}/{kind_name:?}; {hint}",
                        doc.index, doc.line
                    ));
                    continue;
                };
                if kind.namespaced()
                    && value
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .is_none()
                    && let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut)
                {
                    meta.insert("namespace".into(), Value::String(namespace.to_string()));
                }
                let u = twill_api::compat::check(kind, &value);
                if !u.unknown_fields.is_empty() {
                    eprintln!(
                        "warning: {source}: document {} (line {}): {kind} {:?}: fields this twillctl does not know, which will not be stored: {}",
                        doc.index,
                        doc.line,
                        value
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                        u.unknown_fields.join(", ")
                    );
                }
                loaded.push(Loaded {
                    source: source.clone(),
                    doc,
                    kind,
                    value,
                });
            }
        }
    }
    Ok(if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(problems)
    })
}

/// Explains a store error about one document, with lines for field errors.
fn explain(l: &Loaded, e: &StoreError) -> String {
    let head = format!(
        "{}: document {} (line {})",
        l.source, l.doc.index, l.doc.line
    );
    match e {
        StoreError::Invalid(v) => {
            let mut s = format!("{head}: {} {:?} is invalid", v.kind, v.name);
            for fe in &v.errors {
                s.push_str(&format!(
                    "\n  line {}: {fe}",
                    line_of_field(&l.doc, &fe.field)
                ));
            }
            s
        }
        other => format!("{head}: {other}"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    Create,
    Replace,
}

/// Server-managed parts of an object, ignored when deciding "unchanged".
fn desired_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
                "managedFields",
            ] {
                meta.remove(f);
            }
        }
    }
    v
}

pub async fn apply(store_args: &StoreArgs, args: FileArgs, mode: Mode) -> anyhow::Result<ExitCode> {
    let docs = match load(&args.files, &args.namespace)? {
        Ok(d) => d,
        Err(problems) => {
            for p in problems {
                eprintln!("error: {p}");
            }
            eprintln!("nothing was changed");
            return Ok(ExitCode::from(1));
        }
    };
    let store = store_args.open().await?;
    let mut problems = Vec::new();
    for l in &docs {
        if let Err(e) = l.key() {
            problems.push(explain(l, &e));
        } else if let Err(e) = store.validate_value(l.kind, &l.value).await {
            problems.push(explain(l, &e));
        }
    }
    if !problems.is_empty() {
        for p in problems {
            eprintln!("error: {p}");
        }
        eprintln!("nothing was changed");
        return Ok(ExitCode::from(1));
    }
    let mut failed = false;
    let mut results = Vec::new();
    for l in &docs {
        match write_one(&store, l, mode).await {
            Ok((stored, verb)) => {
                if matches!(args.output, OutputFormat::Table | OutputFormat::Wide) {
                    println!("{} {verb}", name_of(l.kind, &stored));
                } else {
                    results.push((l.kind, stored));
                }
            }
            Err(e) => {
                eprintln!("error: {}", explain(l, &e));
                failed = true;
            }
        }
    }
    for (kind, v) in results {
        print!("{}", render(kind, &[v], args.output, false)?);
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn write_one(
    store: &Store,
    l: &Loaded,
    mode: Mode,
) -> Result<(Value, &'static str), StoreError> {
    let key = l.key()?;
    if mode == Mode::Create {
        return Ok((
            store.create_value(l.kind, l.value.clone()).await?,
            "created",
        ));
    }
    // Apply retries when someone else writes between our get and our update.
    for _ in 0..5 {
        let existing = store.backend().get(l.kind, &key).await?;
        let Some(existing) = existing else {
            if mode == Mode::Replace {
                return Err(StoreError::NotFound { kind: l.kind, key });
            }
            match store.create_value(l.kind, l.value.clone()).await {
                Ok(v) => return Ok((v, "created")),
                Err(e) if e.is_already_exists() => continue,
                Err(e) => return Err(e),
            }
        };
        if mode == Mode::Apply
            && let Ok(wanted) = l.kind.normalize(&l.value)
            && desired_part(&existing) == desired_part(&wanted)
        {
            return Ok((existing, "unchanged"));
        }
        let mut next = l.value.clone();
        // replace honours a resourceVersion written in the file (a
        // compare-and-swap against the copy the user edited); apply always
        // writes over the current revision.
        let pinned =
            mode == Mode::Replace && l.value.pointer("/metadata/resourceVersion").is_some();
        let rev = if pinned {
            l.value.pointer("/metadata/resourceVersion").cloned()
        } else {
            existing.pointer("/metadata/resourceVersion").cloned()
        };
        if let (Some(meta), Some(rev)) =
            (next.get_mut("metadata").and_then(Value::as_object_mut), rev)
        {
            meta.insert("resourceVersion".into(), rev);
        }
        match store.update_value(l.kind, next).await {
            Ok(v) => {
                return Ok((
                    v,
                    if mode == Mode::Apply {
                        "configured"
                    } else {
                        "replaced"
                    },
                ));
            }
            Err(e) if e.is_conflict() && mode == Mode::Apply => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Backend {
        backend: store.backend_name(),
        message: format!("{} {key}: kept changing under us; try again", l.kind),
    })
}

pub async fn delete(store_args: &StoreArgs, args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let mut targets: Vec<(Kind, ObjectKey)> = Vec::new();
    if !args.files.is_empty() {
        if args.kind.is_some() {
            return Err(UsageError("give either KIND NAME... or -f FILE, not both".into()).into());
        }
        match load(&args.files, &args.namespace)? {
            Ok(docs) => {
                for l in docs {
                    targets.push((l.kind, l.key()?));
                }
            }
            Err(problems) => {
                for p in problems {
                    eprintln!("error: {p}");
                }
                eprintln!("nothing was changed");
                return Ok(ExitCode::from(1));
            }
        }
    } else {
        let Some(kind) = args.kind.as_deref() else {
            return Err(UsageError("delete needs KIND NAME... or -f FILE".into()).into());
        };
        let kind = kind_arg(kind)?;
        if args.names.is_empty() {
            return Err(
                UsageError(format!("delete {} needs at least one name", kind.plural())).into(),
            );
        }
        for n in &args.names {
            targets.push((
                kind,
                ObjectKey::new(namespace_for(kind, &args.namespace).as_deref(), n),
            ));
        }
    }
    let store = store_args.open().await?;
    let mut failed = false;
    for (kind, key) in targets {
        match store.backend().delete(kind, &key, None).await {
            Ok(()) => println!("{}/{} deleted", kind.name().to_ascii_lowercase(), key.name),
            Err(e) if e.is_not_found() && args.ignore_not_found => {}
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn get_existing(store: &Store, kind: Kind, ns: &str, name: &str) -> anyhow::Result<Value> {
    let key = ObjectKey::new(namespace_for(kind, ns).as_deref(), name);
    match store.backend().get(kind, &key).await? {
        Some(v) => Ok(v),
        None => Err(StoreError::NotFound { kind, key }.into()),
    }
}

pub async fn patch(store_args: &StoreArgs, args: PatchArgs) -> anyhow::Result<ExitCode> {
    let kind = kind_arg(&args.kind)?;
    let patch = parse_document(&Document {
        index: 1,
        line: 1,
        text: args.patch.clone(),
    })
    .map_err(|e| UsageError(format!("--patch is not a JSON/YAML object: {}", e.message)))?;
    let store = store_args.open().await?;
    let mut obj = get_existing(&store, kind, &args.namespace, &args.name).await?;
    let rev = obj.pointer("/metadata/resourceVersion").cloned();
    json_patch::merge(&mut obj, &patch);
    // The patch must not move the object or drop the revision we read.
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("name".into(), Value::String(args.name.clone()));
        if let Some(rev) = rev {
            meta.insert("resourceVersion".into(), rev);
        }
    }
    let stored = store.update_value(kind, obj).await?;
    println!("{} patched", name_of(kind, &stored));
    Ok(ExitCode::SUCCESS)
}

pub async fn label(store_args: &StoreArgs, args: LabelArgs) -> anyhow::Result<ExitCode> {
    let kind = kind_arg(&args.kind)?;
    let mut changes: Vec<(String, Option<String>)> = Vec::new();
    for l in &args.labels {
        if let Some(k) = l.strip_suffix('-') {
            changes.push((k.to_string(), None));
        } else if let Some((k, v)) = l.split_once('=') {
            if k.is_empty() {
                return Err(UsageError(format!("label {l:?} has no key")).into());
            }
            changes.push((k.to_string(), Some(v.to_string())));
        } else {
            return Err(UsageError(format!(
                "label {l:?}: use key=value to set or key- to remove"
            ))
            .into());
        }
    }
    let store = store_args.open().await?;
    let mut obj = get_existing(&store, kind, &args.namespace, &args.name).await?;
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .context("object has no metadata")?;
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()))
        .as_object_mut()
        .context("metadata.labels is not a map")?;
    for (k, v) in changes {
        match v {
            None => {
                labels.remove(&k);
            }
            Some(v) => {
                if let Some(old) = labels.get(&k).and_then(Value::as_str)
                    && old != v
                    && !args.overwrite
                {
                    bail!("label {k:?} is already {old:?}; pass --overwrite to change it to {v:?}");
                }
                labels.insert(k, Value::String(v));
            }
        }
    }
    let stored = store.update_value(kind, obj).await?;
    println!("{} labeled", name_of(kind, &stored));
    Ok(ExitCode::SUCCESS)
}
