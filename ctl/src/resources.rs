//! The resource commands: get, apply, create, replace, diff, delete, patch,
//! label, version, and the words shell completion offers.
//!
//! Writes from files are all-or-nothing at the validation stage: every
//! document is parsed and validated (against the store too, e.g. pool
//! overlap) before the first write, and an error names the file, the
//! document, the line, the field and the bad value. Input is strict: a
//! field the kind does not have is an error naming it and the closest known
//! name. Read-only commands open the store with `open_existing`, so they
//! never create one, nor do delete, patch and label (there is nothing to
//! change in a store that does not exist).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;
use twill_api::manifest::{Document, line_of_field, parse_document, split_documents, to_yaml};
use twill_api::{Kind, ObjectKey, Store, StoreError};

use crate::UsageError;
use crate::cli::{
    Backend, DeleteArgs, DiffArgs, DryRun, FileArgs, GetArgs, LabelArgs, OutputFormat, PatchArgs,
    StoreArgs,
};
use crate::output::{name_of, render, render_with};
use twill_api::selector::Selector;

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

fn labels_of(v: &Value) -> std::collections::BTreeMap<String, String> {
    v.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub async fn get(store: &StoreArgs, args: GetArgs) -> anyhow::Result<ExitCode> {
    let kind = kind_arg(&args.kind)?;
    let selector = match &args.selector {
        Some(s) => {
            Some(Selector::parse_kubectl(s).map_err(|e| UsageError(format!("--selector: {e}")))?)
        }
        None => None,
    };
    let store = store.open_existing().await?;
    let ns = (kind.namespaced() && !args.all_namespaces).then_some(args.namespace.as_str());
    let mut items = Vec::new();
    let mut revision = None;
    if args.names.is_empty() {
        let listing = store.backend().list(kind, ns).await?;
        items = listing.items;
        revision = Some(listing.revision);
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
    let wanted = |v: &Value| -> bool {
        selector.as_ref().is_none_or(|s| s.matches(&labels_of(v)))
            && (args.names.is_empty()
                || args.names.iter().any(|n| n == str_at(v, "/metadata/name")))
            && ns.is_none_or(|ns| !kind.namespaced() || str_at(v, "/metadata/namespace") == ns)
    };
    items.retain(|v| wanted(v));
    warn_not_understood(kind, &items);
    warn_invalid(kind, &items);
    if kind == Kind::Service && args.output == OutputFormat::Wide {
        crate::services::load_announcements(&store).await?;
    }
    let with_ns = kind.namespaced() && args.all_namespaces;
    if items.is_empty() && matches!(args.output, OutputFormat::Table | OutputFormat::Wide) {
        let mut what = format!("No {} found", kind.plural());
        if let Some(ns) = ns.filter(|_| kind.namespaced()) {
            what += &format!(" in namespace {ns}");
        }
        if let Some(s) = &args.selector {
            what += &format!(" matching {s:?}");
        }
        eprintln!("{what}.");
    } else {
        print!(
            "{}",
            render_with(kind, &items, args.output, with_ns, args.show_labels, true)?
        );
    }
    if args.watch {
        watch(&store, kind, &args, revision, &items, &wanted).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `get -w`: prints each object that changes after the listing (and each
/// deleted one, marked so), until interrupted or stdout is closed.
async fn watch(
    store: &Store,
    kind: Kind,
    args: &GetArgs,
    revision: Option<String>,
    listed: &[Value],
    wanted: &dyn Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let key = |v: &Value| {
        format!(
            "{}/{}",
            str_at(v, "/metadata/namespace"),
            str_at(v, "/metadata/name")
        )
    };
    let mut seen: std::collections::BTreeMap<String, String> = listed
        .iter()
        .map(|v| (key(v), str_at(v, "/metadata/resourceVersion").to_string()))
        .collect();
    let with_ns = kind.namespaced() && args.all_namespaces;
    let show = |v: &Value, deleted: bool| -> anyhow::Result<()> {
        let text = render_with(
            kind,
            std::slice::from_ref(v),
            args.output,
            with_ns,
            args.show_labels,
            false,
        )?;
        if deleted && matches!(args.output, OutputFormat::Table | OutputFormat::Wide) {
            for line in text.lines() {
                println!("{line}   (deleted)");
            }
        } else {
            print!("{text}");
        }
        Ok(())
    };
    let mut events = store.backend().watch(kind, revision);
    while let Some(ev) = events.next().await {
        match ev? {
            twill_api::store::WatchEvent::Applied(v) => {
                if !wanted(&v) {
                    continue;
                }
                let rev = str_at(&v, "/metadata/resourceVersion").to_string();
                if seen.insert(key(&v), rev.clone()).as_deref() != Some(rev.as_str()) {
                    show(&v, false)?;
                }
            }
            twill_api::store::WatchEvent::Deleted(v) => {
                if wanted(&v) && seen.remove(&key(&v)).is_some() {
                    show(&v, true)?;
                }
            }
            twill_api::store::WatchEvent::Resync { items, .. } => {
                let now: std::collections::BTreeMap<String, &Value> = items
                    .iter()
                    .filter(|v| wanted(v))
                    .map(|v| (key(v), v))
                    .collect();
                for (k, v) in &now {
                    let rev = str_at(v, "/metadata/resourceVersion").to_string();
                    if seen.insert(k.clone(), rev.clone()).as_deref() != Some(rev.as_str()) {
                        show(v, false)?;
                    }
                }
                let gone: Vec<String> = seen
                    .keys()
                    .filter(|k| !now.contains_key(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    seen.remove(&k);
                    println!("{k}   (deleted)");
                }
            }
        }
    }
    Ok(())
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
/// With `strict`, a field the kind does not have is a problem (apply,
/// create, replace, diff); delete only needs the names.
fn load(
    files: &[PathBuf],
    namespace: &str,
    strict: bool,
) -> anyhow::Result<Result<Vec<Loaded>, Vec<String>>> {
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    for arg in files {
        let paths = if arg.as_os_str() == "-" {
            vec![arg.clone()]
        } else {
            manifest_files(arg)?
        };
        if paths.is_empty() {
            problems.push(format!(
                "no manifests (*.yaml, *.yml, *.json) in {}",
                arg.display()
            ));
        }
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
            let docs = split_documents(&text);
            if docs.is_empty() {
                problems.push(format!("no objects in {source}"));
            }
            for doc in docs {
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
                let unknown = kind.unknown_fields(&value);
                if !unknown.is_empty() {
                    let name = str_at(&value, "/metadata/name").to_string();
                    if strict {
                        let mut p = format!(
                            "{source}: document {} (line {}): {kind} {name:?} is invalid",
                            doc.index, doc.line
                        );
                        for u in &unknown {
                            let field = u.path.clone();
                            p += &format!("\n  line {}: {u}", line_of_field(&doc, &field));
                        }
                        problems.push(p);
                        continue;
                    }
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
    apply_with(store_args, args, mode, DryRun::None).await
}

/// apply, create or replace, for real or as a dry run.
pub async fn apply_with(
    store_args: &StoreArgs,
    args: FileArgs,
    mode: Mode,
    dry_run: DryRun,
) -> anyhow::Result<ExitCode> {
    if dry_run == DryRun::Server && store_args.datastore == Backend::Embedded {
        return Err(UsageError(
            "--dry-run=server needs a server that checks writes; the embedded datastore has none: use --dry-run=client".into(),
        )
        .into());
    }
    let docs = match load(&args.files, &args.namespace, true)? {
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
    let kube = match dry_run {
        DryRun::Server => Some(store_args.kube_client().await?),
        _ => None,
    };
    for l in &docs {
        let outcome = match (dry_run, &kube) {
            (DryRun::None, _) => write_one(&store, l, mode).await,
            (DryRun::Server, Some(client)) => server_dry_run(&store, client, l, mode).await,
            _ => client_dry_run(&store, l, mode).await,
        };
        match outcome {
            Ok((stored, verb)) => {
                if matches!(args.output, OutputFormat::Table | OutputFormat::Wide) {
                    let suffix = match dry_run {
                        DryRun::None => "",
                        DryRun::Client => " (dry run)",
                        DryRun::Server => " (server dry run)",
                    };
                    println!("{} {verb}{suffix}", name_of(l.kind, &stored));
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

/// What apply/create/replace would do, decided here without writing.
async fn client_dry_run(
    store: &Store,
    l: &Loaded,
    mode: Mode,
) -> Result<(Value, &'static str), StoreError> {
    let key = l.key()?;
    let wanted = store.validate_value(l.kind, &l.value).await?;
    match (store.backend().get(l.kind, &key).await?, mode) {
        (None, Mode::Replace) => Err(StoreError::NotFound { kind: l.kind, key }),
        (None, _) => Ok((wanted, "created")),
        (Some(_), Mode::Create) => Err(StoreError::AlreadyExists { kind: l.kind, key }),
        (Some(existing), _) if desired_part(&existing) == desired_part(&wanted) => {
            Ok((existing, "unchanged"))
        }
        (Some(_), Mode::Apply) => Ok((wanted, "configured")),
        (Some(_), Mode::Replace) => Ok((wanted, "replaced")),
    }
}

/// The same, with each write sent to the API server with dryRun=All, so
/// its admission and schema checks run too.
async fn server_dry_run(
    store: &Store,
    client: &kube::Client,
    l: &Loaded,
    mode: Mode,
) -> Result<(Value, &'static str), StoreError> {
    use kube::api::{Api, DynamicObject, PostParams};
    let key = l.key()?;
    let (local, verb) = client_dry_run(store, l, mode).await?;
    if verb == "unchanged" {
        return Ok((local, verb));
    }
    let ar = l.kind.api_resource();
    let api: Api<DynamicObject> = match key.namespace.as_deref() {
        Some(ns) if l.kind.namespaced() => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    };
    let mut body = local;
    let pp = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let backend_err = |e: kube::Error| StoreError::Backend {
        backend: "kubernetes",
        message: format!("server dry run refused {} {key}: {e}", l.kind),
    };
    let stored = if verb == "created" {
        let obj: DynamicObject =
            serde_json::from_value(body).map_err(|e| StoreError::Malformed {
                kind: l.kind,
                reason: e.to_string(),
            })?;
        api.create(&pp, &obj).await.map_err(backend_err)?
    } else {
        if let (Some(existing), Some(meta)) = (
            store.backend().get(l.kind, &key).await?,
            body.get_mut("metadata").and_then(Value::as_object_mut),
        ) && let Some(rev) = existing.pointer("/metadata/resourceVersion")
        {
            meta.insert("resourceVersion".into(), rev.clone());
        }
        let obj: DynamicObject =
            serde_json::from_value(body).map_err(|e| StoreError::Malformed {
                kind: l.kind,
                reason: e.to_string(),
            })?;
        api.replace(&key.name, &pp, &obj)
            .await
            .map_err(backend_err)?
    };
    let v = serde_json::to_value(stored).map_err(|e| StoreError::Malformed {
        kind: l.kind,
        reason: e.to_string(),
    })?;
    Ok((v, verb))
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
        match load(&args.files, &args.namespace, false)? {
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
    if args.ignore_not_found
        && store_args.datastore == Backend::Embedded
        && !store_args.path.exists()
    {
        // No store: every object is already not there.
        return Ok(ExitCode::SUCCESS);
    }
    let store = store_args.open_existing().await?;
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
    let store = store_args.open_existing().await?;
    let mut obj = get_existing(&store, kind, &args.namespace, &args.name).await?;
    let before: Vec<String> = kind
        .unknown_fields(&obj)
        .into_iter()
        .map(|u| u.path)
        .collect();
    let rev = obj.pointer("/metadata/resourceVersion").cloned();
    json_patch::merge(&mut obj, &patch);
    let added: Vec<String> = kind
        .unknown_fields(&obj)
        .into_iter()
        .filter(|u| !before.contains(&u.path))
        .map(|u| u.to_string())
        .collect();
    if !added.is_empty() {
        bail!(
            "{} {:?}: the patch is invalid:\n  {}\nnothing was changed",
            kind,
            args.name,
            added.join("\n  ")
        );
    }
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
            twill_api::validate::check_label_key(k)
                .map_err(|r| UsageError(format!("label key {k:?}: {r}")))?;
            twill_api::validate::check_label_value(v)
                .map_err(|r| UsageError(format!("label {k:?} value {v:?}: {r}")))?;
            changes.push((k.to_string(), Some(v.to_string())));
        } else {
            return Err(UsageError(format!(
                "label {l:?}: use key=value to set or key- to remove"
            ))
            .into());
        }
    }
    let store = store_args.open_existing().await?;
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

/// Line diff of two texts (longest common subsequence), as unified-style
/// lines: ` same`, `-stored`, `+file`.
fn line_diff(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!(" {}", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as `diff -u` and `kubectl diff`.
            out.push(format!("-{}", a[i]));
            i += 1;
        } else {
            out.push(format!("+{}", b[j]));
            j += 1;
        }
    }
    out
}

/// `diff -f`: prints how each object in the files differs from the stored
/// one (server-managed fields left out). Exit 0 when nothing differs, 1
/// when something does, 2 on an error — as `kubectl diff`.
pub async fn diff(store_args: &StoreArgs, args: DiffArgs) -> anyhow::Result<ExitCode> {
    match diff_inner(store_args, &args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            if let Some(u) = e.downcast_ref::<UsageError>() {
                eprintln!("error: {u}");
            } else {
                eprintln!("error: {e:#}");
            }
            Ok(ExitCode::from(2))
        }
    }
}

async fn diff_inner(store_args: &StoreArgs, args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let docs = match load(&args.files, &args.namespace, true)? {
        Ok(d) => d,
        Err(problems) => bail!(problems.join("\nerror: ")),
    };
    let store = store_args.open_existing().await?;
    let mut differs = false;
    for l in &docs {
        let key = l.key().map_err(|e| anyhow::anyhow!(explain(l, &e)))?;
        let wanted = store
            .validate_value(l.kind, &l.value)
            .await
            .map_err(|e| anyhow::anyhow!(explain(l, &e)))?;
        let existing = store.backend().get(l.kind, &key).await?;
        let old = match &existing {
            Some(v) => to_yaml(&desired_part(v)).map_err(anyhow::Error::msg)?,
            None => String::new(),
        };
        let new = to_yaml(&desired_part(&wanted)).map_err(anyhow::Error::msg)?;
        if old == new {
            continue;
        }
        differs = true;
        let name = name_of(l.kind, &wanted);
        if existing.is_some() {
            println!("--- {name} (stored)");
        } else {
            println!("--- {name} (not stored)");
        }
        println!("+++ {name} ({})", l.source);
        for line in line_diff(&old, &new) {
            println!("{line}");
        }
    }
    Ok(if differs {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `version`: the client's, and the server's where there is one.
pub async fn version(
    store_args: &StoreArgs,
    client_only: bool,
    output: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let client = env!("CARGO_PKG_VERSION");
    let server = if client_only {
        None
    } else {
        match store_args.datastore {
            Backend::Embedded => Some(serde_json::json!({
                "datastore": "embedded",
                "path": store_args.path.display().to_string(),
                "exists": store_args.path.exists(),
            })),
            Backend::Kubernetes => {
                let c = store_args.kube_client().await?;
                let info = c
                    .apiserver_version()
                    .await
                    .context("asking the API server for its version")?;
                Some(serde_json::json!({
                    "datastore": "kubernetes",
                    "gitVersion": info.git_version,
                    "platform": info.platform,
                }))
            }
        }
    };
    let mut v = serde_json::json!({"clientVersion": {"twillctl": client}});
    if let Some(s) = &server {
        v["serverVersion"] = s.clone();
    }
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        OutputFormat::Yaml => print!("{}", to_yaml(&v).map_err(anyhow::Error::msg)?),
        OutputFormat::Table | OutputFormat::Wide => {
            println!("Client Version: twillctl {client}");
            if let Some(s) = &server {
                if s["datastore"] == "kubernetes" {
                    println!(
                        "Server Version: {} (Kubernetes API, {})",
                        str_at(s, "/gitVersion"),
                        str_at(s, "/platform")
                    );
                } else {
                    println!(
                        "Server Version: none (embedded datastore {}{})",
                        str_at(s, "/path"),
                        if s["exists"] == true {
                            ""
                        } else {
                            ", not created yet"
                        }
                    );
                }
            }
        }
        OutputFormat::Name => {
            return Err(UsageError("version prints -o table, yaml or json".into()).into());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `__complete kinds` and `__complete names KIND [NAMESPACE]`: the words
/// the completion scripts offer. Quiet on every error (a completion must
/// never print an error into the user's command line).
pub async fn complete(store_args: &StoreArgs, words: &[String]) -> anyhow::Result<ExitCode> {
    match words {
        [w] if w == "kinds" => {
            for k in Kind::ALL {
                println!("{}", k.plural());
            }
        }
        [w, kind, rest @ ..] if w == "names" => {
            let Some(kind) = Kind::from_name(kind) else {
                return Ok(ExitCode::SUCCESS);
            };
            let ns = rest.first().map(String::as_str).unwrap_or("default");
            let Ok(store) = store_args.open_existing().await else {
                return Ok(ExitCode::SUCCESS);
            };
            let ns = kind.namespaced().then_some(ns);
            if let Ok(l) = store.backend().list(kind, ns).await {
                for v in &l.items {
                    println!("{}", str_at(v, "/metadata/name"));
                }
            }
        }
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Shell code appended to clap's completion script: kinds after
/// get/delete/patch/label, object names after the kind (asking
/// `twillctl __complete`, so names come from the datastore the same flags
/// name). Bash, zsh (through bashcompinit) and fish.
pub fn dynamic_completion(shell: clap_complete::Shell) -> String {
    match shell {
        clap_complete::Shell::Bash => BASH_DYNAMIC.to_string(),
        clap_complete::Shell::Fish => FISH_DYNAMIC.to_string(),
        _ => String::new(),
    }
}

const BASH_DYNAMIC: &str = r#"
# Kinds and object names (twillctl __complete).
_twillctl_dynamic() {
    local cur="${COMP_WORDS[COMP_CWORD]}" verb="" kind="" ns="default" flags=() i w
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        case "$w" in
            -n|--namespace) ns="${COMP_WORDS[i+1]}"; i=$((i + 1)) ;;
            --datastore|--path|--kubeconfig|--context) flags+=("$w" "${COMP_WORDS[i+1]}"); i=$((i + 1)) ;;
            -o|--output|-l|--selector|-p|--patch|-f|--filename) i=$((i + 1)) ;;
            -*) ;;
            *) if [[ -z "$verb" ]]; then verb="$w"; elif [[ -z "$kind" ]]; then kind="$w"; fi ;;
        esac
    done
    if [[ "$cur" != -* ]]; then
        case "$verb" in
            get|delete|patch|label)
                if [[ -z "$kind" ]]; then
                    COMPREPLY=($(compgen -W "$(twillctl __complete kinds 2>/dev/null)" -- "$cur"))
                    return 0
                fi
                COMPREPLY=($(compgen -W "$(twillctl "${flags[@]}" __complete names "$kind" "$ns" 2>/dev/null)" -- "$cur"))
                return 0
                ;;
        esac
    fi
    _twillctl "$@"
}
complete -F _twillctl_dynamic -o nosort -o bashdefault -o default twillctl
"#;

const FISH_DYNAMIC: &str = r#"
# Kinds and object names (twillctl __complete).
complete -c twillctl -n '__fish_seen_subcommand_from get delete patch label; and test (count (commandline -opc)) -eq 2' -f -a '(twillctl __complete kinds 2>/dev/null)'
complete -c twillctl -n '__fish_seen_subcommand_from get delete patch label; and test (count (commandline -opc)) -ge 3' -f -a '(twillctl __complete names (commandline -opc)[3] 2>/dev/null)'
"#;
