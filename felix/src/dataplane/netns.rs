//! Running netlink work inside another network namespace.
//!
//! A network namespace belongs to a thread, not a process: this spawns a
//! dedicated OS thread, moves it into the namespace with setns(2), gives it
//! its own single-threaded tokio runtime and netlink connection, runs the
//! work and lets the thread die. The thread is never reused, so no other task
//! ever runs in the wrong namespace.

use std::fs::File;
use std::future::Future;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// Why work could not run in a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("entering network namespace {path}: {source}")]
    Enter { path: String, source: nix::Error },
    #[error("netlink in network namespace {path}: {source}")]
    Netlink {
        path: String,
        source: std::io::Error,
    },
    #[error("the namespace worker thread failed: {0}")]
    Thread(String),
}

/// Runs `work` with a netlink handle bound to the namespace at `path`.
pub async fn in_netns<T, F, Fut>(path: &str, work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let path = path.to_string();
    let ns = File::open(Path::new(&path)).map_err(|source| NetnsError::Open {
        path: path.clone(),
        source,
    })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("twill-netns".into())
        .spawn(move || {
            let result = (|| {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                    path: path.clone(),
                    source,
                })?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| NetnsError::Thread(e.to_string()))?;
                rt.block_on(async {
                    let (conn, handle, _) =
                        rtnetlink::new_connection().map_err(|source| NetnsError::Netlink {
                            path: path.clone(),
                            source,
                        })?;
                    let task = tokio::spawn(conn);
                    let out = work(handle).await;
                    task.abort();
                    Ok(out)
                })
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| NetnsError::Thread(e.to_string()))?;
    rx.await
        .map_err(|_| NetnsError::Thread("worker thread ended without an answer".into()))?
}
