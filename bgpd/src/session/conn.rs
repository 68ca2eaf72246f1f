//! One TCP connection to a peer: a reader task and a writer task.
//!
//! The reader frames messages in a 64 KiB buffer (`wire::frame_len_in`, so
//! it never grows; it holds the largest RFC 8654 extended message) and
//! hands decoded messages to the driver over a bounded channel, which
//! pushes back on a fast sender. The writer drains a queue of encoded
//! messages that [`Conn::push`] bounds in bytes (`PeerConfig::max_send_queue`)
//! and ends the session when a write makes no progress for the RFC 9687
//! send hold time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::wire::{self, Capability, Ctx, Message, Notification};

pub(super) enum ConnEvent {
    Msg(Box<Message>, Vec<wire::Warning>),
    Error(Notification),
    Closed,
    /// A write made no progress for the send hold time (RFC 9687).
    SendStalled,
}

pub(super) struct Conn {
    pub ours: bool,
    pub local: SocketAddr,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes handed to the writer and not yet written to the socket.
    queued: Arc<AtomicUsize>,
    /// The send hold time in milliseconds (set again when the hold time
    /// is negotiated).
    send_hold: Arc<AtomicU64>,
    pub rx: mpsc::Receiver<ConnEvent>,
    reader: JoinHandle<()>,
    /// When the connection was accepted (pending connections only wait
    /// `open_wait` for an OPEN).
    pub since: Instant,
}

impl Conn {
    pub fn new(stream: TcpStream, ours: bool, send_hold: Duration) -> Option<Conn> {
        let local = stream.local_addr().ok()?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let (tx, wrx) = mpsc::unbounded_channel();
        let (etx, rx) = mpsc::channel(256);
        let queued = Arc::new(AtomicUsize::new(0));
        let send_hold = Arc::new(AtomicU64::new(millis(send_hold)));
        let reader = tokio::spawn(read_loop(rd, etx.clone()));
        tokio::spawn(write_loop(
            wr,
            wrx,
            Arc::clone(&queued),
            Arc::clone(&send_hold),
            etx,
        ));
        Some(Conn {
            ours,
            local,
            tx,
            queued,
            send_hold,
            rx,
            reader,
            since: Instant::now(),
        })
    }

    /// Queues encoded bytes unless that would pass `bound`; false: the
    /// peer is not reading and the session must go down.
    pub fn push(&self, bytes: Vec<u8>, bound: usize) -> bool {
        let n = bytes.len();
        if self.queued.load(Ordering::Relaxed).saturating_add(n) > bound {
            return false;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        let _ = self.tx.send(bytes);
        true
    }

    /// The send hold time, again once the hold time is negotiated.
    pub fn set_send_hold(&self, d: Duration) {
        self.send_hold.store(millis(d), Ordering::Relaxed);
    }

    pub fn close(self) {
        self.reader.abort();
        // Dropping `tx` lets the writer flush what is queued, then shut down.
    }
}

/// Bounded read loop: at most 64 KiB buffered, whatever the peer sends.
async fn read_loop(mut rd: OwnedReadHalf, tx: mpsc::Sender<ConnEvent>) {
    const BUF: usize = 64 * 1024;
    let mut buf = vec![0u8; BUF];
    let (mut start, mut end) = (0usize, 0usize);
    let mut ctx = Ctx::default();
    loop {
        loop {
            let avail = buf.get(start..end).unwrap_or_default();
            let len = match wire::frame_len_in(avail, &ctx) {
                Err(n) => {
                    let _ = tx.send(ConnEvent::Error(n.into())).await;
                    return;
                }
                Ok(None) => break,
                Ok(Some(len)) if avail.len() < len => break,
                Ok(Some(len)) => len,
            };
            let msg = avail.get(..len).unwrap_or_default();
            match wire::decode(msg, &ctx) {
                Ok((m, warnings)) => {
                    if let Message::Open(o) = &m {
                        // We always offer 4-octet AS; it is on when the peer does too.
                        ctx.four_octet_as = o
                            .capabilities
                            .iter()
                            .any(|c| matches!(c, Capability::FourOctetAs(_)));
                        // We always offer extended messages (RFC 8654) too.
                        ctx.extended_messages = o.extended_messages();
                    }
                    if tx
                        .send(ConnEvent::Msg(Box::new(m), warnings))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(ConnEvent::Error(e.into())).await;
                    return;
                }
            }
            start += len;
        }
        if start == end {
            start = 0;
            end = 0;
        } else if BUF - end < ctx.max_len() {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let Some(space) = buf.get_mut(end..) else {
            return;
        };
        match rd.read(space).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(ConnEvent::Closed).await;
                return;
            }
            Ok(n) => end += n,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Writes queued messages in batches of up to 64 KiB. RFC 9687: when one
/// write makes no progress for the send hold time (the peer's receive
/// window stays closed), the session is told and the writer stops.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    send_hold: Arc<AtomicU64>,
    events: mpsc::Sender<ConnEvent>,
) {
    const BATCH: usize = 64 * 1024;
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH);
    while let Some(b) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&b);
        while buf.len() < BATCH {
            match rx.try_recv() {
                Ok(b) => buf.extend_from_slice(&b),
                Err(_) => break,
            }
        }
        let mut off = 0;
        while let Some(rest) = buf.get(off..).filter(|r| !r.is_empty()) {
            let hold = Duration::from_millis(send_hold.load(Ordering::Relaxed));
            match tokio::time::timeout(hold, wr.write(rest)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => {
                    off += n;
                    queued.fetch_sub(n, Ordering::Relaxed);
                }
                Err(_) => {
                    let _ = events.send(ConnEvent::SendStalled).await;
                    return;
                }
            }
        }
    }
    let _ = wr.shutdown().await;
}

pub(super) async fn recv(c: &mut Option<Conn>) -> ConnEvent {
    match c {
        Some(c) => c.rx.recv().await.unwrap_or(ConnEvent::Closed),
        None => std::future::pending().await,
    }
}
