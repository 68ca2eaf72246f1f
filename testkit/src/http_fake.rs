//! A fake API server on a loopback port for a program in another process
//! (kubectl, twillctl): one request per connection, answered by the test's
//! function from the request line and body, every request line logged.
//! The server thread lives until the test process ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request as the fake read it.
pub struct HttpRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// A running fake: its port and the request lines (`METHOD TARGET`) it saw.
pub struct HttpFake {
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl HttpFake {
    /// Serves on 127.0.0.1 (a free port); `answer` gives status and JSON
    /// body for each request.
    pub fn serve(
        answer: impl Fn(&HttpRequest) -> (u16, String) + Send + 'static,
    ) -> std::io::Result<HttpFake> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(req) = read_request(&stream) else {
                    continue;
                };
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{} {}", req.method, req.target));
                let (status, body) = answer(&req);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Ok(HttpFake { port, log })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The request lines so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A kubeconfig (token auth) whose only context points at this fake.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\nusers:\n- name: fake\n  user:\n    token: t\n",
            self.url()
        )
    }
}

/// Reads the request line, the headers and a `content-length` body.
fn read_request(stream: &std::net::TcpStream) -> Option<HttpRequest> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    let mut parts = line.split_whitespace();
    Some(HttpRequest {
        method: parts.next().unwrap_or_default().to_string(),
        target: parts.next().unwrap_or_default().to_string(),
        body,
    })
}
