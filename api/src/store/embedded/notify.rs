//! How one store handle notices writes made by other processes: one
//! notifier thread per handle, shared by all its watches.
//!
//! Every commit in WAL mode writes the `-wal` file, so the thread sleeps on
//! an inotify watch of that file (`IN_MODIFY`) and, when woken, makes one
//! revision check: a read of the global revision and, if it moved, of which
//! kinds changed since the last check. It wakes only the watches of those
//! kinds. The revision is read first on its own (a cached statement, no
//! explicit transaction): most checks end there, and only one that finds a
//! new revision opens a transaction for the events. The WAL writes come
//! just before the commit becomes visible, so the thread waits 2 ms after
//! an event before it checks (writers that commit together, as agents
//! writing their reports, then make one check), and a check that finds
//! nothing new is repeated a few times (1 ms to 64 ms). Every
//! wake checks the whole store, so a queue overflow or a coalesced event
//! loses nothing; a wake that never comes is caught by a slow safety check
//! (default every 1 s). Where inotify is unavailable (the
//! per-user instance limit `fs.inotify.max_user_instances`, a filesystem
//! without it) the same check runs on a timer instead (default 25 ms) and a
//! warning says why. Writes in this process wake watches directly.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, params};
use tokio::sync::watch;

use crate::kinds::Kind;

/// When the notifier checks the store.
#[derive(Clone, Copy, Debug)]
pub struct NotifyOptions {
    /// Sleep on inotify (true) or check on a timer only (false).
    pub inotify: bool,
    /// With inotify: the check made even without an event.
    pub safety_poll: Duration,
    /// Without inotify: how often the check runs.
    pub fallback_poll: Duration,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            inotify: true,
            safety_poll: Duration::from_secs(1),
            fallback_poll: Duration::from_millis(25),
        }
    }
}

/// After an event, the pause before draining and checking: a commit is
/// several WAL writes and then the index update, microseconds on an idle
/// machine but longer on a loaded one, so one check usually sees it and its
/// later writes' events are drained too (instead of each waking a check
/// that finds nothing); commits by other writers within the pause join the
/// same check. 2 ms of the 50 ms a change may take to reach a watch.
const GATHER: Duration = Duration::from_millis(2);

/// Re-checks (µs apart) after an event whose check showed no new revision:
/// the writer may have been preempted between its last write and the index
/// update. Anything later is left to the safety check.
const SETTLE_US: [u64; 4] = [1_000, 4_000, 16_000, 64_000];

/// State shared by a store handle, its watches and its notifier thread.
pub(super) struct Shared {
    /// Per kind (indexed as [`Kind::ALL`]): the newest revision known to
    /// have changed it. Watches of the kind wait for it to move.
    kinds: Vec<watch::Sender<u64>>,
    /// Store queries made through this handle (reads, writes, watch polls
    /// and notifier checks): what idle costs, visible to tests.
    pub(super) queries: AtomicU64,
}

fn index(kind: Kind) -> usize {
    Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

impl Shared {
    pub(super) fn new() -> Self {
        Shared {
            kinds: Kind::ALL.iter().map(|_| watch::channel(0).0).collect(),
            queries: AtomicU64::new(0),
        }
    }

    /// Records that `kind` changed at `rev`; wakes its watches if news.
    pub(super) fn bump(&self, kind: Kind, rev: u64) {
        if let Some(s) = self.kinds.get(index(kind)) {
            s.send_if_modified(|v| {
                let news = rev > *v;
                *v = (*v).max(rev);
                news
            });
        }
    }

    /// Wakes every watch to read for itself (after a failed check, so each
    /// reports the error; or when changes cannot be told apart by kind).
    fn wake_all(&self) {
        for s in &self.kinds {
            s.send_modify(|_| {});
        }
    }

    pub(super) fn subscribe(&self, kind: Kind) -> Option<watch::Receiver<u64>> {
        self.kinds.get(index(kind)).map(watch::Sender::subscribe)
    }

    fn count(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
    }
}

/// The running notifier; dropping it stops the thread.
pub(super) struct Notifier {
    _stop: UnixStream,
}

/// Opens the notifier's own connection, reads the current revision (so
/// that watches started after this call miss nothing), and starts the
/// thread.
pub(super) fn start(
    path: &Path,
    shared: Arc<Shared>,
    opts: NotifyOptions,
) -> Result<Notifier, String> {
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    shared.count();
    let seen = revision(&conn).map_err(|e| e.to_string())?;
    let (stop, stopped) = UnixStream::pair().map_err(|e| e.to_string())?;
    let wal = wal_path(path);
    std::thread::Builder::new()
        .name("twill-store-notify".into())
        .spawn(move || {
            Loop {
                conn,
                shared,
                opts,
                wal,
                seen,
                stopped,
                inotify: None,
                warned: false,
            }
            .run()
        })
        .map_err(|e| format!("cannot start the store notifier thread: {e}"))?;
    Ok(Notifier { _stop: stop })
}

fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn revision(c: &Connection) -> rusqlite::Result<u64> {
    c.prepare_cached("SELECT value FROM meta WHERE key = 'revision'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|v| v as u64)
}

struct Loop {
    conn: Connection,
    shared: Arc<Shared>,
    opts: NotifyOptions,
    wal: PathBuf,
    /// The revision of the last check.
    seen: u64,
    stopped: UnixStream,
    /// The inotify instance once it watches the WAL file.
    inotify: Option<Inotify>,
    warned: bool,
}

impl Loop {
    fn run(mut self) {
        loop {
            if self.opts.inotify && self.inotify.is_none() {
                match Inotify::watching(&self.wal) {
                    Ok(i) => {
                        self.inotify = Some(i);
                        if self.warned {
                            tracing::info!(wal = %self.wal.display(), "embedded store: inotify works again; checking for changes on events");
                            self.warned = false;
                        }
                    }
                    Err(e) if !self.warned => {
                        tracing::warn!(
                            wal = %self.wal.display(),
                            "embedded store: cannot watch the WAL file with inotify ({e}); checking for changes every {:?} instead (raise fs.inotify.max_user_instances if that is the limit)",
                            self.opts.fallback_poll
                        );
                        self.warned = true;
                    }
                    Err(_) => {}
                }
            }
            let timeout = if self.inotify.is_some() {
                self.opts.safety_poll
            } else {
                self.opts.fallback_poll
            };
            let fd = self.inotify.as_ref().map(|i| i.fd.as_raw_fd());
            let (stop, event) = wait(self.stopped.as_raw_fd(), fd, timeout);
            if stop {
                return;
            }
            let mut expect_news = false;
            if event && let Some(i) = &self.inotify {
                std::thread::sleep(GATHER);
                let d = i.drain();
                // The file was deleted or moved: watch it again next round
                // (the check below still runs).
                if d.gone {
                    self.inotify = None;
                }
                expect_news = d.modified || d.overflow;
            }
            match self.check() {
                Ok(true) => {}
                Ok(false) if expect_news => {
                    for us in SETTLE_US {
                        std::thread::sleep(Duration::from_micros(us));
                        if !matches!(self.check(), Ok(false)) {
                            break;
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!("embedded store: revision check failed: {e}");
                    self.shared.wake_all();
                }
            }
        }
    }

    /// One revision check: wakes the kinds changed since the last one.
    /// Returns whether the revision moved.
    fn check(&mut self) -> rusqlite::Result<bool> {
        self.shared.count();
        // Most checks end here: one statement, its own read snapshot.
        if revision(&self.conn)? == self.seen {
            return Ok(false);
        }
        // News: the revision, the compaction mark and the events in one
        // snapshot (BEGIN/COMMIT as cached statements, not parsed each time).
        self.conn.prepare_cached("BEGIN")?.execute([])?;
        let changes = self.changes();
        let end = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]));
        if end.is_err() {
            // A read transaction that cannot commit still must end.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        let (rev, kinds) = changes?;
        end?;
        match kinds {
            // A different file, or events gone: every watch looks itself.
            None => self.shared.wake_all(),
            Some(kinds) => {
                for (name, max) in kinds {
                    match Kind::ALL.iter().find(|k| k.name() == name) {
                        Some(k) => self.shared.bump(*k, max),
                        None => self.shared.wake_all(),
                    }
                }
            }
        }
        self.seen = rev;
        Ok(true)
    }

    /// Inside a read transaction: the revision and the kinds changed since
    /// the last check with their newest revision (None: cannot tell, the
    /// events since then are compacted or the file is another one).
    #[allow(clippy::type_complexity)]
    fn changes(&self) -> rusqlite::Result<(u64, Option<Vec<(String, u64)>>)> {
        let rev = revision(&self.conn)?;
        let compacted: i64 = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'compacted'")?
            .query_row([], |r| r.get(0))?;
        if rev < self.seen || compacted as u64 > self.seen {
            return Ok((rev, None));
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT kind, max(rev) FROM events WHERE rev > ?1 GROUP BY kind")?;
        let rows = stmt.query_map(params![self.seen as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok((rev, Some(rows.collect::<rusqlite::Result<Vec<_>>>()?)))
    }
}

/// Waits until `stop` is readable or closed, `ino` is readable, or the
/// timeout passes. Returns (stop, event).
fn wait(stop: RawFd, ino: Option<RawFd>, timeout: Duration) -> (bool, bool) {
    let mut fds = [
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            // A negative fd is ignored by poll(2).
            fd: ino.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid array of two pollfd for the whole call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n <= 0 {
        // Timeout, or EINTR: either way the caller checks the store.
        return (false, false);
    }
    (fds[0].revents != 0, fds[1].revents != 0)
}

/// What reading the inotify queue found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Drained {
    /// The file was written.
    pub modified: bool,
    /// The kernel dropped events (`IN_Q_OVERFLOW`).
    pub overflow: bool,
    /// The watch ended: the file was deleted or moved away.
    pub gone: bool,
}

impl Drained {
    fn merge(&mut self, o: Drained) {
        self.modified |= o.modified;
        self.overflow |= o.overflow;
        self.gone |= o.gone;
    }
}

/// Parses `struct inotify_event` records: 4 × 32 bits (wd, mask, cookie,
/// len) and `len` bytes of name each.
pub(super) fn parse_events(buf: &[u8]) -> Drained {
    const HEADER: usize = 16;
    let word = |at: usize| {
        buf.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_ne_bytes)
    };
    let mut d = Drained::default();
    let mut at = 0;
    while let (Some(mask), Some(len)) = (word(at + 4), word(at + 12)) {
        d.modified |= mask & libc::IN_MODIFY != 0;
        d.overflow |= mask & libc::IN_Q_OVERFLOW != 0;
        d.gone |= mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0;
        at += HEADER + len as usize;
    }
    d
}

/// An inotify instance watching one file.
struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    fn watching(path: &Path) -> io::Result<Inotify> {
        let name = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: no pointers; returns a new descriptor or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                name.as_ptr(),
                libc::IN_MODIFY | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF,
            )
        };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Inotify { fd })
    }

    /// Reads every queued event (the descriptor is non-blocking).
    fn drain(&self) -> Drained {
        let mut d = Drained::default();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                // EAGAIN: drained. Another error: the check runs anyway.
                return d;
            }
            d.merge(parse_events(&buf[..n as usize]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(mask: u32, name_len: u32) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [1u32, mask, 0, name_len] {
            v.extend_from_slice(&w.to_ne_bytes());
        }
        v.extend(std::iter::repeat_n(0u8, name_len as usize));
        v
    }

    #[test]
    fn parses_modify_overflow_and_gone() {
        let mut buf = event(libc::IN_MODIFY, 0);
        assert_eq!(
            parse_events(&buf),
            Drained {
                modified: true,
                ..Default::default()
            }
        );
        // An overflow record (wd -1, no name) after a named record.
        buf = event(libc::IN_MODIFY, 16);
        buf.extend(event(libc::IN_Q_OVERFLOW, 0));
        let d = parse_events(&buf);
        assert!(d.modified && d.overflow && !d.gone, "{d:?}");
        buf = event(libc::IN_DELETE_SELF, 0);
        buf.extend(event(libc::IN_IGNORED, 0));
        let d = parse_events(&buf);
        assert!(d.gone && !d.modified, "{d:?}");
        // A truncated trailing record is ignored, not misread.
        let mut cut = event(libc::IN_MODIFY, 0);
        cut.extend_from_slice(&[0xff; 7]);
        assert_eq!(parse_events(&cut), parse_events(&event(libc::IN_MODIFY, 0)));
    }
}
