//! The health endpoint's HTTP/1.1 server, written by hand on tokio: the
//! workspace has no HTTP server crate, and three fixed GET routes do not
//! justify one. Small and defensive: request heads over 8 KiB get 431, a
//! client gets 5 seconds to send its head, at most 32 connections are
//! served at once, every response closes the connection, and request
//! bodies are never read. Parsing and routing are pure, tested without
//! sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{Condition, Readiness};
use crate::metrics::Metrics;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at the same time.
pub const MAX_CONNECTIONS: usize = 32;

/// What a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path without the query string.
    pub path: String,
}

/// A request that cannot be served, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request line")]
    Malformed,
    #[error("unsupported HTTP version")]
    Version,
}

impl BadRequest {
    fn status(&self) -> u16 {
        match self {
            BadRequest::TooLarge => 431,
            BadRequest::Malformed => 400,
            BadRequest::Version => 505,
        }
    }
}

/// Where the head ends (index after the blank line), if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// Parses the request line of a complete head. Headers are not needed by
/// any route and are ignored.
pub fn parse_head(head: &[u8]) -> Result<RequestHead, BadRequest> {
    let line_end = head
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(BadRequest::Malformed)?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| BadRequest::Malformed)?;
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(BadRequest::Malformed);
    }
    if !target.starts_with('/') {
        return Err(BadRequest::Malformed);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(BadRequest::Version);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(RequestHead {
        method: method.to_string(),
        path: path.to_string(),
    })
}

/// A response before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// The `/readyz` answer for a set of conditions.
pub fn readyz(conditions: &BTreeMap<String, Condition>) -> Reply {
    let mut body = String::new();
    let mut ready = true;
    for (name, c) in conditions {
        if c.ready {
            body.push_str(&format!("[+]{name} ok\n"));
        } else {
            ready = false;
            body.push_str(&format!("[-]{name}: {}\n", c.reason));
        }
    }
    if ready {
        body.push_str("ready\n");
        Reply::text(200, body)
    } else {
        body.push_str("not ready\n");
        Reply::text(503, body)
    }
}

/// Answers a request.
pub fn route(head: &RequestHead, readiness: &Readiness, metrics: &Metrics) -> Reply {
    if head.method != "GET" && head.method != "HEAD" {
        return Reply::text(405, "only GET and HEAD\n");
    }
    match head.path.as_str() {
        "/healthz" | "/livez" => Reply::text(200, "ok\n"),
        "/readyz" => readyz(&readiness.snapshot()),
        "/metrics" => Reply {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: metrics.encode(),
        },
        _ => Reply::text(404, "not found: try /healthz, /readyz or /metrics\n"),
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The bytes of a response (`head_only` for HEAD requests).
pub fn render(reply: &Reply, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        reply.status,
        reason_phrase(reply.status),
        reply.content_type,
        reply.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(reply.body.as_bytes());
    }
    out
}

/// Binds the health port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves health, readiness and metrics until the listener fails.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Wait for a free slot before accepting: excess clients queue in
        // the kernel's backlog instead of costing us memory.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Out of file descriptors and the like: back off, keep serving.
            Err(e) => {
                tracing::warn!(error = %e, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (r, m) = (readiness.clone(), metrics.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(stream, &r, &m).await {
                tracing::debug!(error = %e, "health endpoint connection");
            }
        });
    }
}

pub(crate) async fn read_head(
    stream: &mut TcpStream,
) -> std::io::Result<Result<Vec<u8>, BadRequest>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            if end > MAX_HEAD {
                return Ok(Err(BadRequest::TooLarge));
            }
            buf.truncate(end);
            return Ok(Ok(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Err(BadRequest::TooLarge));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn handle(
    mut stream: TcpStream,
    readiness: &Readiness,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let (reply, head_only) = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await
    {
        Err(_) => (
            Reply::text(408, "request head not received in time\n"),
            false,
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Err(bad))) => (Reply::text(bad.status(), format!("{bad}\n")), false),
        Ok(Ok(Ok(head))) => match parse_head(&head) {
            Err(bad) => (Reply::text(bad.status(), format!("{bad}\n")), false),
            Ok(h) => (route(&h, readiness, metrics), h.method == "HEAD"),
        },
    };
    tokio::time::timeout(READ_TIMEOUT, async {
        stream.write_all(&render(&reply, head_only)).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        let h = parse_head(b"GET /readyz?verbose HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/readyz");
        assert_eq!(
            parse_head(b"GET /x HTTP/2.0\r\n\r\n"),
            Err(BadRequest::Version)
        );
        assert_eq!(parse_head(b"GET\r\n\r\n"), Err(BadRequest::Malformed));
        assert_eq!(
            parse_head(b"GET  /x HTTP/1.1\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(
            parse_head(b"get /x HTTP/1.1\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(
            parse_head(b"GET x HTTP/1.1\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(
            parse_head(b"GET /\xff HTTP/1.1\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.0\n\nrest"), Some(16));
    }

    #[test]
    fn routes_and_renders() {
        let r = Readiness::new();
        let m = Metrics::new();
        let get = |p: &str| RequestHead {
            method: "GET".into(),
            path: p.into(),
        };
        assert_eq!(route(&get("/healthz"), &r, &m).status, 200);
        assert_eq!(route(&get("/nope"), &r, &m).status, 404);
        let post = RequestHead {
            method: "POST".into(),
            path: "/healthz".into(),
        };
        assert_eq!(route(&post, &r, &m).status, 405);
        let metrics = route(&get("/metrics"), &r, &m);
        assert!(metrics.body.contains("twill_endpoints"), "{}", metrics.body);
        let bytes = render(&Reply::text(200, "ok\n"), true);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("content-length: 3\r\n"));
        assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text:?}");
    }
}
