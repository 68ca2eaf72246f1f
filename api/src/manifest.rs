//! Reading and writing manifests: multi-document YAML (or JSON) in, each
//! document with the line it starts on, so errors can point at
//! "document 2, line 14"; YAML out for `-o yaml` and the generated CRDs.
//! YAML goes through serde-saphyr, the YAML library kube itself uses.

use serde::Serialize;
use serde_json::Value;

/// One document of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 1-based position in the file.
    pub index: usize,
    /// 1-based line of the document's first line in the file.
    pub line: usize,
    /// The document's text.
    pub text: String,
}

/// A document that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {index} (line {line}): {message}")]
pub struct ParseError {
    pub index: usize,
    pub line: usize,
    pub message: String,
}

/// Splits a multi-document YAML stream on `---` lines. Empty documents
/// (only comments or blank lines) are dropped. A JSON file is one document.
pub fn split_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    let mut index = 0;
    let mut flush = |current: &mut String, start: usize, docs: &mut Vec<Document>| {
        let meaningful = current
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if meaningful {
            index += 1;
            docs.push(Document {
                index,
                line: start,
                text: std::mem::take(current),
            });
        }
        current.clear();
    };
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            flush(&mut current, start, &mut docs);
            start = i + 2;
            continue;
        }
        if current.is_empty() {
            start = i + 1;
        }
        current.push_str(line);
        current.push('\n');
    }
    flush(&mut current, start, &mut docs);
    docs
}

/// Parses a document into JSON, with errors located in the whole file.
pub fn parse_document(doc: &Document) -> Result<Value, ParseError> {
    let err = |line: usize, message: String| ParseError {
        index: doc.index,
        line,
        message,
    };
    let value: Value = serde_saphyr::from_str(&doc.text).map_err(|e| {
        let line = e.location().map(|l| l.line() as usize).unwrap_or(1);
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or("invalid YAML").to_string();
        err(doc.line + line - 1, first)
    })?;
    if !value.is_object() {
        return Err(err(
            doc.line,
            "expected an object with apiVersion, kind and metadata".into(),
        ));
    }
    Ok(value)
}

/// Finds the line (in the whole file) where a field path such as
/// `spec.ingress[0].action` is written in a document, by following the keys
/// in order; falls back to the document's first line.
pub fn line_of_field(doc: &Document, path: &str) -> usize {
    let keys: Vec<&str> = path
        .split('.')
        .map(|seg| seg.split('[').next().unwrap_or(seg))
        .filter(|k| !k.is_empty())
        .collect();
    let lines: Vec<&str> = doc.text.lines().collect();
    let mut pos = 0;
    let mut found = None;
    for key in keys {
        let hit = lines.iter().enumerate().skip(pos).find(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ").trim_start();
            t.strip_prefix(key)
                .or_else(|| t.strip_prefix(&format!("\"{key}\"")))
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        });
        match hit {
            Some((i, _)) => {
                pos = i + 1;
                found = Some(i);
            }
            None => break,
        }
    }
    doc.line + found.unwrap_or(0)
}

/// Serializes to YAML.
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, String> {
    serde_saphyr::to_string(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# pools\n---\napiVersion: twill.dev/v1\nkind: IPPool\nmetadata:\n  name: a\nspec:\n  cidr: 10.0.0.0/16\n---\n# nothing here\n---\napiVersion: twill.dev/v1\nkind: GlobalNetworkPolicy\nmetadata:\n  name: g\nspec:\n  ingress:\n    - action: Allow\n    - action: Maybe\n";

    #[test]
    fn splits_with_lines_and_drops_empty_documents() {
        let docs = split_documents(TEXT);
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].index, docs[0].line), (1, 3));
        assert_eq!((docs[1].index, docs[1].line), (2, 12));
        let v = parse_document(&docs[0]).unwrap();
        assert_eq!(v["spec"]["cidr"], "10.0.0.0/16");
    }

    #[test]
    fn locates_fields_and_syntax_errors() {
        let docs = split_documents(TEXT);
        assert_eq!(line_of_field(&docs[0], "spec.cidr"), 8);
        assert_eq!(line_of_field(&docs[1], "spec.ingress[1].action"), 18);
        let bad = split_documents("apiVersion: v1\nkind: [unclosed\n");
        let err = parse_document(&bad[0]).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.line >= 2, "{err}");
        let scalar = split_documents("just a string\n");
        assert!(parse_document(&scalar[0]).is_err());
    }

    #[test]
    fn json_is_one_document() {
        let docs = split_documents(
            "{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"x\"}}",
        );
        assert_eq!(docs.len(), 1);
        assert_eq!(parse_document(&docs[0]).unwrap()["kind"], "Namespace");
    }
}
