//! Printing objects: aligned tables (the CRDs' own printer columns, so
//! `twillctl get` and `kubectl get` show the same columns), YAML, JSON, and
//! `kind/name` lines.

use serde_json::Value;
use twill_api::Kind;
use twill_api::manifest::to_yaml;

use crate::cli::OutputFormat;

/// One table column: header, JSON path (`.spec.cidr`) or a function of
/// the object, shown only with `-o wide`.
struct Column {
    name: String,
    path: String,
    computed: Option<fn(&Value) -> String>,
    wide: bool,
}

impl Column {
    fn value(&self, v: &Value) -> String {
        match self.computed {
            Some(f) => f(v),
            None => cell(lookup(v, &self.path)),
        }
    }
}

fn columns(kind: Kind) -> Vec<Column> {
    let col = |name: &str, path: &str, wide: bool| Column {
        name: name.to_uppercase(),
        path: path.into(),
        computed: None,
        wide,
    };
    let f = |name: &str, func: fn(&Value) -> String, wide: bool| Column {
        name: name.into(),
        path: String::new(),
        computed: Some(func),
        wide,
    };
    if kind.is_twill() {
        let crd = twill_api::crds::all()
            .into_iter()
            .find(|c| c.spec.names.kind == kind.name());
        let Some(crd) = crd else { return vec![] };
        return crd
            .spec
            .versions
            .first()
            .and_then(|v| v.additional_printer_columns.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| col(&c.name, &c.json_path, c.priority.unwrap_or(0) > 0))
            .collect();
    }
    match kind {
        Kind::Node => vec![
            col("Address", ".status.addresses[0].address", false),
            col("PodCIDR", ".spec.podCIDR", true),
        ],
        Kind::Pod => vec![
            col("Node", ".spec.nodeName", false),
            col("IP", ".status.podIP", false),
        ],
        Kind::NetworkPolicy => vec![col("PodSelector", ".spec.podSelector", false)],
        Kind::Secret => vec![col("Type", ".type", false)],
        Kind::Service => vec![
            col("Type", ".spec.type", false),
            f("CLUSTER-IP", crate::services::cluster_ip, false),
            f("EXTERNAL-IP", crate::services::external_ip, false),
            f("PORT(S)", crate::services::ports, false),
            f("ANNOUNCED-BY", crate::services::announced_by, true),
            f("LB-STATUS", crate::services::lb_status, false),
        ],
        Kind::EndpointSlice => vec![
            col("AddressType", ".addressType", false),
            f("PORTS", crate::services::slice_ports, false),
            f("ENDPOINTS", crate::services::slice_endpoints, false),
            f("NODES", crate::services::slice_nodes, true),
        ],
        _ => vec![],
    }
}

/// Reads a simple JSON path: `.a.b`, `.a[0].b`.
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path.trim_start_matches('.').split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| cell(Some(x)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(m)) if m.is_empty() => "<all>".into(),
        Some(other) => other.to_string(),
    }
}

fn age(v: &Value) -> String {
    let Some(ts) = lookup(v, ".metadata.creationTimestamp").and_then(Value::as_str) else {
        return String::new();
    };
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return String::new();
    };
    let secs = jiff::Timestamp::now().as_second() - t.as_second();
    match secs {
        s if s < 120 => format!("{}s", s.max(0)),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `k=v,k2=v2`, or `<none>`, as kubectl's LABELS column.
fn labels(v: &Value) -> String {
    match v.pointer("/metadata/labels").and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

/// Formats rows as aligned columns separated by three spaces.
pub fn align(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `kind/name` form of an object.
pub fn name_of(kind: Kind, v: &Value) -> String {
    format!(
        "{}/{}",
        kind.name().to_ascii_lowercase(),
        lookup(v, ".metadata.name")
            .and_then(Value::as_str)
            .unwrap_or("")
    )
}

/// Renders a set of objects of one kind.
pub fn render(
    kind: Kind,
    items: &[Value],
    format: OutputFormat,
    with_namespace: bool,
) -> anyhow::Result<String> {
    render_with(kind, items, format, with_namespace, false, true)
}

/// [`render`] with a LABELS column (`--show-labels`) and without the
/// table header (`header: false`, for rows printed by `get -w`).
pub fn render_with(
    kind: Kind,
    items: &[Value],
    format: OutputFormat,
    with_namespace: bool,
    show_labels: bool,
    header: bool,
) -> anyhow::Result<String> {
    Ok(match format {
        OutputFormat::Json => {
            if items.len() == 1 {
                serde_json::to_string_pretty(&items[0])? + "\n"
            } else {
                let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
                serde_json::to_string_pretty(&list)? + "\n"
            }
        }
        OutputFormat::Yaml => {
            let docs: Vec<String> = items
                .iter()
                .map(|v| to_yaml(v).map_err(anyhow::Error::msg))
                .collect::<Result<_, _>>()?;
            docs.join("---\n")
        }
        OutputFormat::Name => items.iter().map(|v| name_of(kind, v) + "\n").collect(),
        OutputFormat::Table | OutputFormat::Wide => {
            let wide = format == OutputFormat::Wide;
            let cols: Vec<Column> = columns(kind)
                .into_iter()
                .filter(|c| wide || !c.wide)
                .collect();
            let mut head = Vec::new();
            if with_namespace {
                head.push("NAMESPACE".to_string());
            }
            head.push("NAME".to_string());
            head.extend(cols.iter().map(|c| c.name.clone()));
            head.push("AGE".to_string());
            if show_labels {
                head.push("LABELS".to_string());
            }
            let mut rows = vec![head];
            for v in items {
                let mut row = Vec::new();
                if with_namespace {
                    row.push(cell(lookup(v, ".metadata.namespace")));
                }
                row.push(cell(lookup(v, ".metadata.name")));
                row.extend(cols.iter().map(|c| c.value(v)));
                row.push(age(v));
                if show_labels {
                    row.push(labels(v));
                }
                rows.push(row);
            }
            let text = align(&rows);
            if header {
                text
            } else {
                text.lines().skip(1).map(|l| l.to_string() + "\n").collect()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_uses_the_crd_printer_columns() {
        let pool = json!({"metadata": {"name": "default-ipv4"},
            "spec": {"cidr": "10.244.0.0/16", "blockSize": 26, "natOutgoing": true, "disabled": false, "nodeSelector": "all()"}});
        let t = render(
            Kind::IPPool,
            std::slice::from_ref(&pool),
            OutputFormat::Table,
            false,
        )
        .unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{t}");
        assert!(
            lines[0].contains("CIDR") && !lines[0].contains("SELECTOR"),
            "{t}"
        );
        assert!(
            lines[1].contains("10.244.0.0/16")
                && lines[1].contains("26")
                && lines[1].contains("true"),
            "{t}"
        );
        let w = render(Kind::IPPool, &[pool], OutputFormat::Wide, false).unwrap();
        assert!(w.contains("SELECTOR") && w.contains("all()"), "{w}");
    }

    #[test]
    fn lookup_follows_indexes() {
        let n = json!({"status": {"addresses": [{"address": "10.0.0.1"}]}});
        assert_eq!(cell(lookup(&n, ".status.addresses[0].address")), "10.0.0.1");
        assert_eq!(cell(lookup(&n, ".spec.podCIDR")), "");
    }
}
