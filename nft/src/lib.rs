//! nftables transactions without a process per change: the nft script text
//! Twill renders is handed to libnftables in-process, the library the `nft`
//! command is a thin front-end of. Same parser, same single netlink batch
//! per script (all or nothing), same error messages, same JSON listing;
//! minus a fork and exec, the dynamic loading and the pipe per change.
//!
//! Why not a Rust netlink crate: `rustables` (GPL, rough edges by its own
//! account) and `nftnl` (links libnftnl at build time) build rules from
//! expression objects, so every construct Twill prints as one line of text
//! (concatenated sets, verdict maps, anonymous sets, icmp type/code pairs)
//! would have to be re-encoded by hand, and the text would stop being what
//! the kernel gets. An encoder of our own has the same cost and no reference
//! to test against.
//!
//! The library is opened with `dlopen` at first use (`libnftables.so.1`,
//! installed with the nftables package): nothing links at build time. Where
//! it cannot be loaded — the static musl twill-node of the Alpine image
//! cannot dlopen at all — the same calls run the `nft` binary, one process
//! per command, as before; [`backend`] says which is in use so the agent
//! can log it. Both paths are tested against the kernel.
//!
//! A handle ([`Nft`]) is made per call by the free functions, in the
//! network namespace of the calling thread (libnftables opens its netlink
//! socket then); keep one to reuse it. libnftables documents no thread
//! safety, so every call into it holds one process-wide lock. Numbers:
//! docs/nft.md.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::Value;

/// Failures talking to nf_tables.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot load libnftables ({0}): install the nftables package")]
    Load(String),
    #[error("libnftables could not create a context (no netlink socket?)")]
    Context,
    #[error("cannot run nft ({0}): install the nftables package")]
    Spawn(std::io::Error),
    #[error("nft rejected the update: {0}")]
    Rejected(String),
    #[error("nft printed JSON Twill cannot read: {0}")]
    BadJson(String),
}

/// The shared object's name (SONAME) as Debian, Fedora and Alpine ship it.
pub const LIBRARY: &str = "libnftables.so.1";

/// `NFT_CTX_OUTPUT_JSON` from `nftables/libnftables.h`.
const OUTPUT_JSON: c_uint = 1 << 4;
/// Longest error text kept (nft quotes the offending line; keep logs short).
const ERROR_MAX: usize = 2000;

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxInt = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxStr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type SetFlags = unsafe extern "C" fn(*mut c_void, c_uint);
type SetDryRun = unsafe extern "C" fn(*mut c_void, bool);
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// The entry points Twill uses.
struct Lib {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    buffer_output: CtxInt,
    buffer_error: CtxInt,
    output_buffer: CtxStr,
    error_buffer: CtxStr,
    set_output_flags: SetFlags,
    set_dry_run: SetDryRun,
    run_cmd: RunCmd,
    run_file: RunCmd,
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until
    // the next dl* call on this thread.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl Lib {
    fn open() -> Result<Lib, String> {
        let name = CString::new(LIBRARY).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string; the handle is never closed, so the
        // function pointers below stay valid for the life of the process.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(dlerror());
        }
        let sym = |n: &str| -> Result<*mut c_void, String> {
            let c = CString::new(n).map_err(|e| e.to_string())?;
            // SAFETY: a live handle and a valid C string.
            let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
            if p.is_null() {
                Err(format!("{n}: {}", dlerror()))
            } else {
                Ok(p)
            }
        };
        // SAFETY (all transmutes): each symbol has the C signature declared
        // for it in nftables/libnftables.h (stable since libnftables 0.9.0).
        unsafe {
            Ok(Lib {
                ctx_new: std::mem::transmute::<*mut c_void, CtxNew>(sym("nft_ctx_new")?),
                ctx_free: std::mem::transmute::<*mut c_void, CtxFree>(sym("nft_ctx_free")?),
                buffer_output: std::mem::transmute::<*mut c_void, CtxInt>(sym(
                    "nft_ctx_buffer_output",
                )?),
                buffer_error: std::mem::transmute::<*mut c_void, CtxInt>(sym(
                    "nft_ctx_buffer_error",
                )?),
                output_buffer: std::mem::transmute::<*mut c_void, CtxStr>(sym(
                    "nft_ctx_get_output_buffer",
                )?),
                error_buffer: std::mem::transmute::<*mut c_void, CtxStr>(sym(
                    "nft_ctx_get_error_buffer",
                )?),
                set_output_flags: std::mem::transmute::<*mut c_void, SetFlags>(sym(
                    "nft_ctx_output_set_flags",
                )?),
                set_dry_run: std::mem::transmute::<*mut c_void, SetDryRun>(sym(
                    "nft_ctx_set_dry_run",
                )?),
                run_cmd: std::mem::transmute::<*mut c_void, RunCmd>(sym(
                    "nft_run_cmd_from_buffer",
                )?),
                run_file: std::mem::transmute::<*mut c_void, RunCmd>(sym(
                    "nft_run_cmd_from_filename",
                )?),
            })
        }
    }
}

fn lib() -> Result<&'static Lib, NftError> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(Lib::open)
        .as_ref()
        .map_err(|e| NftError::Load(e.clone()))
}

/// One call into libnftables at a time, process-wide.
fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A panic while holding it leaves no state of ours behind.
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether libnftables can be loaded here (the error says why not).
pub fn library_available() -> Result<(), NftError> {
    lib().map(|_| ())
}

/// How a script is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Apply,
    /// `nft -c`: parsed and checked by the kernel, nothing committed.
    Check,
    /// `nft -j`: output as JSON.
    Json,
}

/// Which way commands reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// libnftables in this process.
    Library,
    /// One `nft` process per command (no libnftables here: a static binary
    /// cannot load it).
    Binary,
}

/// The backend [`Nft::new`] and the free functions use here: the library
/// when it loads, else the `nft` binary.
pub fn backend() -> Backend {
    if lib().is_ok() {
        Backend::Library
    } else {
        Backend::Binary
    }
}

/// A handle for nftables commands, bound to the network namespace of the
/// thread that made it (libnftables opens its netlink socket then; the
/// binary is started from the calling thread, so runs in its namespace).
/// Reusable for any number of commands.
pub struct Nft(Inner);

enum Inner {
    Library(LibCtx),
    Binary,
}

impl Nft {
    /// libnftables when it loads, else the `nft` binary ([`backend`]).
    pub fn new() -> Result<Nft, NftError> {
        match lib() {
            Ok(_) => Nft::library(),
            Err(_) => Ok(Nft::binary()),
        }
    }

    /// libnftables, or the reason it cannot be loaded.
    pub fn library() -> Result<Nft, NftError> {
        LibCtx::new().map(|c| Nft(Inner::Library(c)))
    }

    /// The `nft` binary, one process per command.
    pub fn binary() -> Nft {
        Nft(Inner::Binary)
    }

    /// Which backend this handle uses.
    pub fn backend(&self) -> Backend {
        match self.0 {
            Inner::Library(_) => Backend::Library,
            Inner::Binary => Backend::Binary,
        }
    }

    fn run(&mut self, script: &str, mode: Mode) -> Result<String, NftError> {
        match &mut self.0 {
            Inner::Library(c) => c.run(script, mode),
            Inner::Binary => run_binary(&[], script, mode),
        }
    }

    fn run_line(&mut self, line: &str, mode: Mode) -> Result<String, NftError> {
        match &mut self.0 {
            Inner::Library(c) => c.run_line(line, mode),
            Inner::Binary => {
                let args: Vec<&str> = line.split_whitespace().collect();
                run_binary(&args, "", mode)
            }
        }
    }

    /// Runs an nft script as one transaction.
    pub fn apply(&mut self, script: &str) -> Result<(), NftError> {
        self.run(script, Mode::Apply).map(drop)
    }

    /// Has the kernel check a script without committing it (`nft -c`).
    pub fn check(&mut self, script: &str) -> Result<(), NftError> {
        self.run(script, Mode::Check).map(drop)
    }

    /// `nft -j list table FAMILY NAME`, parsed; None when there is no such table.
    pub fn list_table_json(&mut self, family: &str, name: &str) -> Result<Option<Value>, NftError> {
        match self.run_line(&format!("list table {family} {name}"), Mode::Json) {
            Ok(out) => serde_json::from_str(&out)
                .map(Some)
                .map_err(|e| NftError::BadJson(e.to_string())),
            Err(NftError::Rejected(e)) if e.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `nft [-c|-j] ARGS` or `nft [-c|-j] -f -` with `script` on stdin.
fn run_binary(args: &[&str], script: &str, mode: Mode) -> Result<String, NftError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("nft");
    match mode {
        Mode::Apply => {}
        Mode::Check => {
            cmd.arg("-c");
        }
        Mode::Json => {
            cmd.arg("-j");
        }
    }
    if args.is_empty() {
        cmd.args(["-f", "-"]);
    } else {
        cmd.args(args);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).replace("/dev/stdin", "script");
        Err(NftError::Rejected(
            err.trim_end().chars().take(ERROR_MAX).collect(),
        ))
    }
}

/// A libnftables context.
struct LibCtx {
    lib: &'static Lib,
    ctx: NonNull<c_void>,
}

// SAFETY: the context has no thread affinity (its netlink socket is an fd);
// `&mut self` on every use keeps it to one thread at a time.
unsafe impl Send for LibCtx {}

impl LibCtx {
    fn new() -> Result<LibCtx, NftError> {
        let lib = lib()?;
        let _g = lock();
        // SAFETY: nft_ctx_new(NFT_CTX_DEFAULT) has no preconditions.
        let ctx = NonNull::new(unsafe { (lib.ctx_new)(0) }).ok_or(NftError::Context)?;
        let nft = LibCtx { lib, ctx };
        // SAFETY: a live context.
        let (o, e) = unsafe {
            (
                (lib.buffer_output)(ctx.as_ptr()),
                (lib.buffer_error)(ctx.as_ptr()),
            )
        };
        if o != 0 || e != 0 {
            return Err(NftError::Context);
        }
        Ok(nft)
    }

    /// Runs `script`; the output on success, the error text otherwise.
    ///
    /// Scripts go through a memfd read as a file (`/proc/self/fd/N`), as
    /// `nft -f -` reads stdin: for a multi-line buffer libnftables 1.0.6
    /// quotes the first line, not the offending one, and gives no number.
    fn run(&mut self, script: &str, mode: Mode) -> Result<String, NftError> {
        let file = ScriptFile::new(script)?;
        let lib = self.lib;
        // SAFETY: a NUL-terminated path, alive for the call.
        self.call(mode, |ctx| unsafe {
            (lib.run_file)(ctx, file.path.as_ptr())
        })
        .map_err(|e| match e {
            NftError::Rejected(t) => NftError::Rejected(t.replace(file.name(), "script")),
            e => e,
        })
    }

    /// Runs one command given as a single line (no file needed).
    fn run_line(&mut self, line: &str, mode: Mode) -> Result<String, NftError> {
        let text = CString::new(line)
            .map_err(|e| NftError::Rejected(format!("NUL byte at {}", e.nul_position())))?;
        let lib = self.lib;
        // SAFETY: a NUL-terminated command, alive for the call.
        self.call(mode, |ctx| unsafe { (lib.run_cmd)(ctx, text.as_ptr()) })
    }

    /// Sets the mode, runs `f` on the context, collects the buffers.
    fn call(
        &mut self,
        mode: Mode,
        f: impl FnOnce(*mut c_void) -> c_int,
    ) -> Result<String, NftError> {
        let lib = self.lib;
        let ctx = self.ctx.as_ptr();
        let _g = lock();
        // SAFETY: a live context owned by self; the returned buffers are
        // NUL-terminated, live until the next run and are copied before the
        // lock is released.
        unsafe {
            (lib.set_output_flags)(ctx, if mode == Mode::Json { OUTPUT_JSON } else { 0 });
            (lib.set_dry_run)(ctx, mode == Mode::Check);
            let rc = f(ctx);
            (lib.set_dry_run)(ctx, false);
            let out = buffer((lib.output_buffer)(ctx));
            let err = buffer((lib.error_buffer)(ctx));
            if rc == 0 {
                Ok(out)
            } else {
                Err(NftError::Rejected(
                    err.trim_end().chars().take(ERROR_MAX).collect(),
                ))
            }
        }
    }
}

/// A script in an anonymous in-memory file, closed on drop.
struct ScriptFile {
    /// Kept open while libnftables reads the path.
    _fd: std::os::fd::OwnedFd,
    path: CString,
}

impl ScriptFile {
    fn new(script: &str) -> Result<ScriptFile, NftError> {
        use std::io::Write as _;
        use std::os::fd::{AsRawFd, FromRawFd};
        let io = |e: std::io::Error| NftError::Rejected(format!("cannot stage the script: {e}"));
        // SAFETY: a valid C string literal and flags.
        let raw = unsafe { libc::memfd_create(c"twill-nft".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd we own from here on.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let mut f = std::fs::File::from(fd);
        f.write_all(script.as_bytes()).map_err(io)?;
        let path = CString::new(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .map_err(|e| NftError::Rejected(e.to_string()))?;
        Ok(ScriptFile {
            _fd: f.into(),
            path,
        })
    }

    fn name(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }
}

/// Copies a libnftables buffer (NULL reads as empty).
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn buffer(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: the caller's contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

impl Drop for LibCtx {
    fn drop(&mut self) {
        let _g = lock();
        // SAFETY: a live context, freed once.
        unsafe { (self.lib.ctx_free)(self.ctx.as_ptr()) }
    }
}

/// Runs an nft script as one transaction (all of it or nothing).
pub fn apply_script(script: &str) -> Result<(), NftError> {
    Nft::new()?.apply(script)
}

/// Has the kernel check a script without applying it (`nft -c`).
pub fn check_script(script: &str) -> Result<(), NftError> {
    Nft::new()?.check(script)
}

/// One table as `nft -j list table` prints it; None when it does not exist.
pub fn list_table_json(family: &str, name: &str) -> Result<Option<Value>, NftError> {
    Nft::new()?.list_table_json(family, name)
}

/// Deletes Twill's table `inet twill` (nothing else); fine when it does not exist.
pub fn delete_table() -> Result<(), NftError> {
    apply_script("add table inet twill\ndelete table inet twill\n")
}
