//! A fake API server on kube-rs's tower-test mock.
//!
//! A test declares what it expects as a table of [`Exchange`]s — method,
//! target (`PATH` or `PATH?key=value&...`), answer status and body — and
//! [`Script::serve`] answers the client's requests with them in order. A
//! request matches a row when the method and path are equal, every
//! `key=value` of the row's query is in the request's, and the request is
//! a watch (`watch=true`) exactly when the row says so. The first request
//! that does not match is answered 500, ends the script, and makes
//! [`Script::finish`] fail naming the row and the request; so does a
//! request beyond the table.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Uri};
use kube::client::Body;
use tower_test::mock;

/// The server side of the mock: yields each request the client sends.
pub type Handle = mock::Handle<Request<Body>, Response<Body>>;
/// The way to answer one request (a fake keeps it to hold a watch open).
pub type SendResponse = mock::SendResponse<Response<Body>>;

/// How long [`Script::finish`] waits for each next request.
const STEP: Duration = Duration::from_secs(10);

/// A client whose requests go to the returned handle (namespace `default`).
pub fn pair() -> (kube::Client, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// An answer with `status` and a JSON content type (as the API server sends
/// even its plain-text 404s for unknown resources).
pub fn respond(status: u16, body: impl Into<Vec<u8>>) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = Response::new(Body::from(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The value of query parameter `key`, undecoded.
pub fn query(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

/// One row of a script: the request expected next and its answer.
#[derive(Clone)]
pub struct Exchange {
    pub method: Method,
    /// `PATH` or `PATH?key=value&...` (the keys the request must carry).
    pub target: String,
    pub status: u16,
    pub body: Vec<u8>,
}

/// A row answered with `status` and `body`.
pub fn exchange(
    method: Method,
    target: impl Into<String>,
    status: u16,
    body: impl Into<Vec<u8>>,
) -> Exchange {
    Exchange {
        method,
        target: target.into(),
        status,
        body: body.into(),
    }
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.target)
    }
}

impl Exchange {
    /// Why `uri` with `method` is not this row's request, if it is not.
    fn mismatch(&self, method: &Method, uri: &Uri) -> Option<String> {
        if method != self.method {
            return Some(format!("method {method}"));
        }
        let (path, want) = self
            .target
            .split_once('?')
            .unwrap_or((self.target.as_str(), ""));
        if uri.path() != path {
            return Some(format!("path {}", uri.path()));
        }
        let mut wants_watch = false;
        for kv in want.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            wants_watch |= k == "watch" && v == "true";
            if query(uri, k).as_deref() != Some(v) {
                return Some(format!("query lacks {k}={v}"));
            }
        }
        let is_watch = query(uri, "watch").as_deref() == Some("true");
        (is_watch != wants_watch).then(|| {
            if is_watch {
                "a watch where a plain request was expected".to_string()
            } else {
                "a plain request where a watch was expected".to_string()
            }
        })
    }
}

/// One request the script answered.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    /// The request body (empty for GET).
    pub body: Vec<u8>,
}

impl Seen {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct State {
    served: Vec<Seen>,
    /// The first request that differed from its row.
    failure: Option<String>,
    /// Requests after the table ran out.
    extra: Vec<String>,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A table of exchanges served in order on a tower-test mock.
pub struct Script {
    rows: Vec<String>,
    state: Arc<Mutex<State>>,
    progress: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Script {
    /// A client, and the script answering its requests from `table`.
    pub fn start(table: Vec<Exchange>) -> (kube::Client, Script) {
        let (client, handle) = pair();
        (client, Script::serve(handle, table))
    }

    /// Answers the requests arriving on `handle` from `table`, in order.
    pub fn serve(mut handle: Handle, table: Vec<Exchange>) -> Script {
        let rows = table.iter().map(ToString::to_string).collect();
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, progress) = tokio::sync::watch::channel(0usize);
        let st = state.clone();
        let task = tokio::spawn(async move {
            for (i, row) in table.into_iter().enumerate() {
                let Some((req, send)) = handle.next_request().await else {
                    return;
                };
                let (parts, body) = req.into_parts();
                let body = body.collect_bytes().await.map(|b| b.to_vec());
                let why = match &body {
                    Ok(_) => row.mismatch(&parts.method, &parts.uri),
                    Err(e) => Some(format!("unreadable body: {e}")),
                };
                if let Some(why) = why {
                    lock(&st).failure = Some(format!(
                        "request {}: expected {row}, got {} {} ({why})",
                        i + 1,
                        parts.method,
                        parts.uri
                    ));
                    send.send_response(respond(500, "{}"));
                    tx.send_replace(i + 1);
                    return;
                }
                {
                    let mut s = lock(&st);
                    s.served.push(Seen {
                        method: parts.method,
                        uri: parts.uri.to_string(),
                        body: body.unwrap_or_default(),
                    });
                    send.send_response(respond(row.status, row.body));
                }
                tx.send_replace(i + 1);
            }
            while let Some((req, send)) = handle.next_request().await {
                lock(&st)
                    .extra
                    .push(format!("{} {}", req.method(), req.uri()));
                send.send_response(respond(500, "{}"));
                tx.send_modify(|n| *n += 1);
            }
        });
        Script {
            rows,
            state,
            progress,
            task,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Panics if a request differed from its row or came beyond the table.
    fn check(&self) {
        let s = self.lock();
        if let Some(f) = &s.failure {
            panic!("fake API server: {f}");
        }
        assert!(
            s.extra.is_empty(),
            "fake API server: requests beyond the table {:?}: {:?}",
            self.rows,
            s.extra
        );
    }

    /// Waits (up to 10 s per row) until every row was served and returns the
    /// requests; fails if one differed or the client stopped asking.
    pub async fn finish(&mut self) -> Vec<Seen> {
        loop {
            self.check();
            let n = self.lock().served.len();
            if n == self.rows.len() {
                return self.lock().served.clone();
            }
            match tokio::time::timeout(STEP, self.progress.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    self.check();
                    panic!(
                        "fake API server: the client sent {n} of {} requests; the next expected: {}",
                        self.rows.len(),
                        self.rows[n]
                    )
                }
            }
        }
    }

    /// Serves the table, then fails if any request arrives within `wait`.
    pub async fn finish_quiet(&mut self, wait: Duration) -> Vec<Seen> {
        let seen = self.finish().await;
        tokio::time::sleep(wait).await;
        self.check();
        seen
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.task.abort();
    }
}
