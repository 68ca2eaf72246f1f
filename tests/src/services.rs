//! What the service proxy's lab tests share: the lab's Services (in the
//! lab's pod namespace `lab`), servers run inside pods' network namespaces
//! (stopped by a guard), and one TCP exchange from a namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::lab::Lab;
use crate::netns::spawn_in;

/// The Kubernetes namespace of the lab's pods and the tests' Services.
pub const NS: &str = "lab";

/// The Service `name` in [`NS`], as the lab's store holds it.
pub fn service(lab: &Lab, name: &str) -> Value {
    lab.get_json("service", NS, name)
}

/// The cluster IP of the Service `name`.
pub fn cluster_ip(lab: &Lab, name: &str) -> String {
    service(lab, name)["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_else(|| panic!("Service {name} has no cluster IP"))
        .to_string()
}

pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an address"), port)
}

/// The lab's node address `field` (`addr` or `addr6`) of `node`.
pub fn node_addr(lab: &Lab, node: &str, field: &str) -> String {
    lab.state()["plan"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == node)
        .and_then(|n| n[field].as_str())
        .unwrap_or_else(|| panic!("no {field} of node {node}: {}", lab.state()["plan"]))
        .to_string()
}

/// Servers a test runs inside pods' namespaces; stopped on drop.
pub struct Servers(pub Arc<AtomicBool>);

impl Drop for Servers {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A UDP server in `ns` on `[::]:port` (both families) answering every
/// datagram with `tag`, until `stop`.
pub fn udp_server(ns: &str, port: u16, tag: &'static str, stop: Arc<AtomicBool>) {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in(ns, move || {
        let s = UdpSocket::bind(("::", port)).expect("bind UDP server");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let _ = tx.send(());
        let mut b = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, from)) = s.recv_from(&mut b) {
                let _ = s.send_to(tag.as_bytes(), from);
            }
        }
    });
    rx.recv().expect("UDP server started");
}

/// A TCP server in `ns` on `[::]:port` (both families) that writes each
/// client's address as it sees it (IPv4 clients as IPv4), until `stop`.
pub fn peer_server(ns: &str, port: u16, stop: Arc<AtomicBool>) {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in(ns, move || {
        let l = TcpListener::bind(("::", port)).expect("bind peer server");
        l.set_nonblocking(true).expect("nonblocking");
        let _ = tx.send(());
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(format!("{}\n", peer.ip().to_canonical()).as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    rx.recv().expect("peer server started");
}

/// One TCP exchange from the network namespace `ns`: the first 512 bytes
/// the server sends, or the error (`refused` for a reset, `timeout` for
/// nothing).
pub fn tcp(ns: &str, to: SocketAddr) -> Result<String, String> {
    spawn_in(ns, move || {
        let s = TcpStream::connect_timeout(&to, Duration::from_millis(800)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                "refused".to_string()
            } else if e.kind() == std::io::ErrorKind::TimedOut {
                "timeout".to_string()
            } else {
                e.to_string()
            }
        })?;
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        let mut b = Vec::new();
        s.take(512).read_to_end(&mut b).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&b).trim().to_string())
    })
    .join()
    .unwrap_or_else(|_| Err("client thread panicked".into()))
}
