//! The lab's test traffic: `lab serve`, each pod's responder, answering
//! on the pod's ports with its name, and `lab probe`, the client.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::plan::PortSpec;
use crate::UsageError;

/// `twillctl lab serve` (hidden): answers on every port with the pod's name,
/// in the network namespace it was started in, until it is stopped.
pub fn serve(pod: &str, ports: &[PortSpec]) -> anyhow::Result<ExitCode> {
    if ports.is_empty() {
        return Err(UsageError("lab serve: give at least one --port".into()).into());
    }
    let reply: &'static [u8] = format!("{pod}\n").into_bytes().leak();
    let mut threads = Vec::new();
    for p in ports {
        // [::] takes both families (IPv4 as mapped addresses) where the
        // namespace has IPv6; 0.0.0.0 where it has not.
        let addr = SocketAddr::from(([0u16; 8], p.port));
        let v4 = SocketAddr::from(([0, 0, 0, 0], p.port));
        if p.protocol == "UDP" {
            let sock = UdpSocket::bind(addr)
                .or_else(|_| UdpSocket::bind(v4))
                .with_context(|| format!("listening on {p}"))?;
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                loop {
                    match sock.recv_from(&mut buf) {
                        Ok((_, from)) => {
                            let _ = sock.send_to(reply, from);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        } else {
            let l = TcpListener::bind(addr)
                .or_else(|_| TcpListener::bind(v4))
                .with_context(|| format!("listening on {p}"))?;
            threads.push(std::thread::spawn(move || {
                loop {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                            let _ = s.write_all(reply);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        }
    }
    let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    println!("serving {pod} on {}", list.join(", "));
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

/// `twillctl lab probe IP PORT/PROTO`: one connection (TCP) or datagram
/// (UDP) from the current network namespace; succeeds when the far side
/// answers (a lab pod's responder answers with its name).
pub fn probe(ip: IpAddr, port: &PortSpec, timeout: Duration) -> anyhow::Result<ExitCode> {
    let addr = SocketAddr::new(ip, port.port);
    let answer: Result<String, String> = if port.protocol == "UDP" {
        (|| {
            let bind: SocketAddr = if ip.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let u = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
            u.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            u.send_to(b"probe\n", addr).map_err(|e| e.to_string())?;
            let mut b = [0u8; 512];
            let (n, _) = u.recv_from(&mut b).map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&b[..n]).trim().to_string())
        })()
    } else {
        (|| {
            let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            let mut b = Vec::new();
            s.take(512).read_to_end(&mut b).map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&b).trim().to_string())
        })()
    };
    let target = format!("{ip} {}/{}", port.port, port.protocol);
    match answer {
        Ok(a) => {
            println!("{target}: answered {a:?}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let why = if e.contains("os error 11") || e.contains("timed out") {
                format!("nothing within {} ms", timeout.as_millis())
            } else {
                e
            };
            println!("{target}: no answer ({why})");
            Ok(ExitCode::from(1))
        }
    }
}
