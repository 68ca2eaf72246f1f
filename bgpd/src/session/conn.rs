//! One TCP connection to a peer: a reader task and a writer task.
//!
//! The reader frames messages in a 64 KiB buffer (`wire::frame_len_in`, so
//! it never grows; it holds the largest RFC 8654 extended message) and
//! hands decoded messages to the driver over a bounded channel, which
//! pushes back on a fast sender. [`Conn::push`] writes a message straight
//! to the socket when nothing is queued (the usual case: a handshake
//! message or a small UPDATE leaves at once, without waiting for the
//! writer task to be scheduled — under load that wait put our OpenConfirm
//! KEEPALIVE into the same segment as the first UPDATE, see
//! docs/bgp.md "Session start"); otherwise it queues the bytes, bounded
//! (`PeerConfig::max_send_queue`), for the writer task, which drains them
//! in order and ends the session when a write makes no progress for the
//! RFC 9687 send hold time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
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
    /// The socket's write half, shared with the writer task: `push` writes
    /// directly while nothing is queued.
    wr: Arc<OwnedWriteHalf>,
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
        let wr = Arc::new(wr);
        let (tx, wrx) = mpsc::unbounded_channel();
        let (etx, rx) = mpsc::channel(256);
        let queued = Arc::new(AtomicUsize::new(0));
        let send_hold = Arc::new(AtomicU64::new(millis(send_hold)));
        let reader = tokio::spawn(read_loop(rd, etx.clone()));
        tokio::spawn(write_loop(
            Arc::clone(&wr),
            wrx,
            Arc::clone(&queued),
            Arc::clone(&send_hold),
            etx,
        ));
        Some(Conn {
            ours,
            local,
            wr,
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
    /// Only the driver pushes; `queued` counts the bytes the writer task
    /// has not written yet, so when it is zero a direct write keeps the
    /// order of messages.
    pub fn push(&self, mut bytes: Vec<u8>, bound: usize) -> bool {
        if self.queued.load(Ordering::Acquire) == 0 {
            match self.wr.try_write(&bytes) {
                Ok(n) if n == bytes.len() => return true,
                Ok(n) => {
                    bytes.drain(..n);
                }
                // WouldBlock (window closed) or an error the writer and
                // reader will see too: queue it.
                Err(_) => {}
            }
        }
        let n = bytes.len();
        if self.queued.load(Ordering::Relaxed).saturating_add(n) > bound {
            return false;
        }
        self.queued.fetch_add(n, Ordering::AcqRel);
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

/// Smallest read buffer: one standard (4,096-byte) message.
const MIN_READ_BUF: usize = wire::MAX_MESSAGE_LEN;
/// Largest read buffer: holds an RFC 8654 extended message (65,535 bytes).
const MAX_READ_BUF: usize = 64 * 1024;

/// The read buffer's size for the next read, from what it holds and what
/// the last read did (pure, so the rules are tested on their own):
/// - a message longer than the buffer (an extended message) makes it grow
///   to hold the whole message;
/// - a read that filled all free space (the peer is streaming a table)
///   doubles it, up to [`MAX_READ_BUF`];
/// - an empty buffer after a short read (keepalives, small UPDATEs) goes
///   back to [`MIN_READ_BUF`], so an idle session holds 4 KiB, not 64.
fn read_buf_size(cap: usize, held: usize, need: usize, last_read: usize, filled: bool) -> usize {
    let mut size = cap;
    if held == 0 && !filled && last_read < MIN_READ_BUF {
        size = MIN_READ_BUF;
    } else if filled {
        size = (cap * 2).min(MAX_READ_BUF);
    }
    size.max(need).clamp(MIN_READ_BUF, MAX_READ_BUF)
}

/// Bounded read loop: at most 64 KiB buffered, whatever the peer sends;
/// 4 KiB while the session is quiet (`read_buf_size`).
async fn read_loop(mut rd: OwnedReadHalf, tx: mpsc::Sender<ConnEvent>) {
    let mut buf = vec![0u8; MIN_READ_BUF];
    let (mut start, mut end) = (0usize, 0usize);
    let (mut last_read, mut filled) = (0usize, false);
    let mut ctx = Ctx::default();
    loop {
        // Length of a message only partly in the buffer.
        let mut need = 0;
        loop {
            let avail = buf.get(start..end).unwrap_or_default();
            let len = match wire::frame_len_in(avail, &ctx) {
                Err(n) => {
                    let _ = tx.send(ConnEvent::Error(n.into())).await;
                    return;
                }
                Ok(None) => break,
                Ok(Some(len)) if avail.len() < len => {
                    need = len;
                    break;
                }
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
        let held = end - start;
        let size = read_buf_size(buf.len(), held, need, last_read, filled);
        if held == 0 {
            start = 0;
            end = 0;
        } else if start > 0 && (size > buf.len() || buf.len() - end < need.max(MIN_READ_BUF)) {
            buf.copy_within(start..end, 0);
            end = held;
            start = 0;
        }
        if size != buf.len() {
            // Never below what is held (size ≥ MIN_READ_BUF > a partial
            // header; a partial message is held only while `need` is known
            // or the header is incomplete).
            let size = size.max(end);
            buf.truncate(size);
            buf.resize(size, 0);
            buf.shrink_to_fit();
        }
        let Some(space) = buf.get_mut(end..).filter(|s| !s.is_empty()) else {
            return;
        };
        let room = space.len();
        match rd.read(space).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(ConnEvent::Closed).await;
                return;
            }
            Ok(n) => {
                end += n;
                last_read = n;
                filled = n == room;
            }
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
    wr: Arc<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    send_hold: Arc<AtomicU64>,
    events: mpsc::Sender<ConnEvent>,
) {
    const BATCH: usize = 64 * 1024;
    // Allocated only while messages are queued (`Conn::push` writes
    // directly otherwise), and freed when the queue is drained.
    let mut buf: Vec<u8> = Vec::new();
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
            match wr.try_write(rest) {
                Ok(0) => return,
                Ok(n) => {
                    off += n;
                    queued.fetch_sub(n, Ordering::AcqRel);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match tokio::time::timeout(hold, wr.writable()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return,
                        Err(_) => {
                            let _ = events.send(ConnEvent::SendStalled).await;
                            return;
                        }
                    }
                }
                Err(_) => return,
            }
        }
        if queued.load(Ordering::Acquire) == 0 {
            buf = Vec::new();
        }
    }
    // Dropping the last handle to the write half shuts the socket's
    // sending side down (FIN) after everything queued was written.
}

pub(super) async fn recv(c: &mut Option<Conn>) -> ConnEvent {
    match c {
        Some(c) => c.rx.recv().await.unwrap_or(ConnEvent::Closed),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffer_is_small_when_quiet_and_grows_for_tables_and_extended_messages() {
        // Quiet: empty after a short read → 4 KiB, also from 64 KiB.
        assert_eq!(read_buf_size(MAX_READ_BUF, 0, 0, 19, false), MIN_READ_BUF);
        assert_eq!(read_buf_size(MIN_READ_BUF, 0, 0, 100, false), MIN_READ_BUF);
        // Streaming: each read that fills the free space doubles it, up to 64 KiB.
        assert_eq!(read_buf_size(4096, 0, 0, 4096, true), 8192);
        assert_eq!(read_buf_size(32768, 100, 0, 32000, true), MAX_READ_BUF);
        assert_eq!(read_buf_size(MAX_READ_BUF, 0, 0, 65536, true), MAX_READ_BUF);
        // A long read that emptied the buffer keeps its size.
        assert_eq!(read_buf_size(16384, 0, 0, 9000, false), 16384);
        // A partial extended message gets room for all of it.
        assert_eq!(read_buf_size(4096, 3000, 65535, 3000, false), 65535);
        assert_eq!(read_buf_size(4096, 4096, 4097, 4096, true), 8192);
        // Never above the largest message's buffer nor below one standard message.
        assert!(read_buf_size(MAX_READ_BUF, 10, 65535, 1, true) <= MAX_READ_BUF);
        assert!(read_buf_size(0, 0, 0, 0, false) >= MIN_READ_BUF);
    }
}
