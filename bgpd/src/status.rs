//! Status over a local unix socket. A client writes one line — `status`
//! (JSON array of [`PeerStatus`]), `routes` (JSON best routes) or `metrics`
//! (Prometheus text) — and reads the answer until EOF. `render_table` is
//! the human form `twill-bgpd status` prints. `serve_metrics` answers
//! Prometheus scrapes over HTTP.

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::speaker::{PeerStatus, Speaker};

/// Serves status requests until the task is dropped.
pub async fn serve(path: &Path, speaker: Speaker) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    loop {
        let (s, _) = l.accept().await?;
        let sp = speaker.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = s.into_split();
            let mut line = String::new();
            // One short request line; anything longer is cut off.
            let mut rd = BufReader::new(tokio::io::AsyncReadExt::take(rd, 64));
            if rd.read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match line.trim() {
                "status" => serde_json::to_string_pretty(&sp.status()).unwrap_or_default(),
                "metrics" => sp.metrics_text(),
                "routes" => {
                    let v: Vec<serde_json::Value> = sp
                        .best_routes()
                        .await
                        .into_iter()
                        .map(|(p, b)| {
                            serde_json::json!({
                                "prefix": p.to_string(),
                                "next_hops": b.next_hops.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                                "as_path": b.attrs.as_path.to_string(),
                                "local": b.local,
                            })
                        })
                        .collect();
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                }
                other => format!("{{\"error\":\"unknown request {other:?}\"}}"),
            };
            let _ = wr.write_all(answer.as_bytes()).await;
            let _ = wr.shutdown().await;
        });
    }
}

/// Serves `GET /metrics` (Prometheus text format) over plain HTTP/1.0 on
/// `addr`. Hand-written rather than pulling in an HTTP server: one fixed
/// response per connection, the request is read (at most 8 KiB) and ignored
/// beyond its first line.
pub async fn serve_metrics(addr: std::net::SocketAddr, speaker: Speaker) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (s, _) = l.accept().await?;
        let sp = speaker.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = s.into_split();
            let mut rd = BufReader::new(tokio::io::AsyncReadExt::take(rd, 8192));
            let mut first = String::new();
            if rd.read_line(&mut first).await.is_err() {
                return;
            }
            let (status, body) = if first.starts_with("GET /metrics") {
                ("200 OK", sp.metrics_text())
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = wr.write_all(head.as_bytes()).await;
            let _ = wr.write_all(body.as_bytes()).await;
            let _ = wr.shutdown().await;
        });
    }
}

/// Sends one request and returns the answer (blocking; for the CLI).
pub fn query(path: &Path, what: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.write_all(format!("{what}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn duration(secs: u64) -> String {
    if secs == 0 {
        return "-".into();
    }
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// The table `twill-bgpd status` prints.
pub fn render_table(peers: &[PeerStatus]) -> String {
    let mut rows = vec![[
        "PEER".to_string(),
        "AS".into(),
        "STATE".into(),
        "UPTIME".into(),
        "RECEIVED".into(),
        "ACCEPTED".into(),
        "ADVERTISED".into(),
        "BFD".into(),
        // The error that last ended (or kept from starting) the session:
        // for an Established session it is history, not its state.
        "LAST DOWN REASON".into(),
    ]];
    for p in peers {
        rows.push([
            p.address.to_string(),
            p.asn.to_string(),
            p.state.name().to_string(),
            duration(p.uptime_secs),
            p.received.to_string(),
            p.accepted.to_string(),
            p.advertised.to_string(),
            p.bfd.map(|b| b.name()).unwrap_or("-").to_string(),
            p.last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0usize; 9];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths.iter()).enumerate() {
            if i == 8 {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fsm::State;

    #[test]
    fn table_has_one_row_per_peer_and_aligned_columns() {
        let p = PeerStatus {
            address: "10.96.0.1".parse().unwrap(),
            asn: 65000,
            state: State::Established,
            router_id: None,
            uptime_secs: 3725,
            received: 10,
            accepted: 9,
            advertised: 2,
            flaps: 0,
            last_error: Some("received Cease".into()),
            graceful_restart: true,
            hold_time: Some(9),
            bfd: Some(crate::bfd::packet::BfdState::Up),
        };
        let t = render_table(&[p]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].starts_with("10.96.0.1  65000  Established  01:02:05"),
            "{t}"
        );
        assert!(lines[1].ends_with("Up   received Cease"), "{t}");
        assert_eq!(lines[0].find("STATE"), lines[1].find("Established"));
        assert!(lines[0].ends_with("LAST DOWN REASON"), "{t}");
    }
}
