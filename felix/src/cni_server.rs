//! The CNI socket: one JSON request line in, one JSON response line out
//! per connection (see `twill_cni::protocol`). Each connection is served in
//! its own task, so pods are set up concurrently.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use twill_cni::protocol::{Command, Request, Response};
use twill_cni::spec::{CniError, code};

use crate::dataplane::endpoints::Endpoints;

/// Largest request accepted (a network configuration with prevResult).
const MAX_REQUEST: u64 = 1 << 20;

/// Binds the socket (replacing a stale one from a previous run).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves CNI requests until the listener fails.
pub async fn serve(listener: UnixListener, endpoints: Arc<Endpoints>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let eps = endpoints.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, eps).await {
                tracing::warn!(error = %e, "CNI connection failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, endpoints: Arc<Endpoints>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let started = std::time::Instant::now();
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Err(CniError::new(
            code::DECODING_FAILURE,
            format!("unreadable request: {e}"),
        )),
        Ok(req) => {
            let cmd = req.command;
            let out = dispatch(&endpoints, &req).await;
            crate::metrics::global().observe_cni(
                &format!("{cmd:?}"),
                matches!(out, Response::Ok(_)),
                started.elapsed(),
            );
            tracing::debug!(?cmd, container = %req.container_id, ms = started.elapsed().as_millis() as u64, ok = matches!(out, Response::Ok(_)), "CNI request");
            out
        }
    };
    let mut body = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    body.push(b'\n');
    w.write_all(&body).await?;
    w.shutdown().await
}

async fn dispatch(eps: &Endpoints, req: &Request) -> Response {
    let r = match req.command {
        Command::Add => eps.add(req).await.map(Some),
        Command::Del => eps.del(req).await.map(|_| None),
        Command::Check => eps.check(req).await.map(|_| None),
        Command::Gc => eps.gc(req).await.map(|_| None),
        Command::Status => eps.status().await.map(|_| None),
    };
    match r {
        Ok(v) => Response::Ok(v),
        Err(e) => {
            tracing::warn!(command = ?req.command, container = %req.container_id, error = %e, "CNI request failed");
            Response::Err(e)
        }
    }
}
