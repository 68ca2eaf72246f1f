//! twill-bgp-fuzz: the structure-aware mutation fuzzer of the BGP wire layer.
//!
//! Inputs come from `twill_bgpd::wire::fuzz` (input `i` of seed `s` is
//! reproducible on its own). Targets:
//! - `ours`: `frame_len` + `decode` (our one checked pass), then the
//!   re-encoded result decoded again;
//! - `zetta`: zettabgp 0.6 on raw bytes, no validator (its own header check
//!   and message decoders), to measure its raw failure rate;
//! - `zetta-validated`: our decoder first, zettabgp only on what it accepts
//!   (with `--feed-warned`, also on UPDATEs it accepted with an RFC 7606
//!   warning, as they are on the wire).
//!
//! Each input runs under `catch_unwind`; a watchdog thread ends the worker
//! process when one input takes longer than `--timeout-ms` (a hang) and a
//! counting allocator ends it when live heap passes `--mem-mb` (unbounded
//! growth). The parent process restarts the worker after the offending input
//! and prints a summary. No libFuzzer/cargo-fuzz: no nightly toolchain here.
//!
//! Needs the `fuzz` feature: `cargo run --release -p twill-bgpd --features
//! fuzz --bin twill-bgp-fuzz -- --count 10000000`. The zettabgp targets need
//! `compare-zettabgp` instead (it implies `fuzz`): `cargo run --release -p
//! twill-bgpd --features compare-zettabgp --bin twill-bgp-fuzz -- --target
//! zetta --count 100000`.
//!
//! Usage: twill-bgp-fuzz [--target ours|zetta|zetta-validated] [--count N]
//!        [--seed S] [--timeout-ms MS] [--mem-mb MB] [--feed-warned] [--show N]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use twill_bgpd::wire::{self, Ctx, fuzz};

/// Live heap bytes, and the cap past which the worker reports and exits.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static CAP: AtomicUsize = AtomicUsize::new(usize::MAX);
static ARMED: AtomicBool = AtomicBool::new(false);
/// The input being run and when it started (ns since BASE; 0 = idle).
static CURRENT: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicU64 = AtomicU64::new(0);
static BASE: OnceLock<Instant> = OnceLock::new();
/// Counters: incomplete, rejected, decoded, decoded with warnings, panics.
static COUNTS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

struct Counting;

// SAFETY: forwards to the system allocator; only adds relaxed counters and,
// past the cap, an async-signal-safe write + _exit.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        if live > CAP.load(Relaxed) && ARMED.load(Relaxed) {
            report_and_exit(b'M', 4);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let live = LIVE.fetch_add(new_size - layout.size(), Relaxed) + new_size - layout.size();
            if live > CAP.load(Relaxed) && ARMED.load(Relaxed) {
                report_and_exit(b'M', 4);
            }
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Writes "<kind> <index> <counts...>\n" without allocating and exits.
fn report_and_exit(kind: u8, code: i32) -> ! {
    let mut buf = [0u8; 160];
    let mut n = 0;
    let mut put = |b: u8| {
        if n < buf.len() {
            buf[n] = b;
            n += 1;
        }
    };
    put(kind);
    let num = |mut v: u64, put: &mut dyn FnMut(u8)| {
        put(b' ');
        let mut digits = [0u8; 20];
        let mut k = 0;
        loop {
            digits[k] = b'0' + (v % 10) as u8;
            k += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        while k > 0 {
            k -= 1;
            put(digits[k]);
        }
    };
    num(CURRENT.load(Relaxed), &mut put);
    for c in &COUNTS {
        num(c.load(Relaxed), &mut put);
    }
    put(b'\n');
    // SAFETY: writing a stack buffer to fd 1, then leaving without running
    // anything else (the input's thread may be stuck or out of memory).
    unsafe {
        libc::write(1, buf.as_ptr().cast(), n);
        libc::_exit(code)
    }
}

fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

thread_local! {
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Ours,
    Zetta,
    ZettaValidated,
}

struct Opts {
    target: Target,
    count: u64,
    seed: u64,
    timeout_ms: u64,
    mem_mb: usize,
    feed_warned: bool,
    show: usize,
    worker: Option<(u64, u64)>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        target: Target::Ours,
        count: 1_000_000,
        seed: 0x7411_1b9b,
        timeout_ms: 1000,
        mem_mb: 1024,
        feed_warned: false,
        show: 5,
        worker: None,
    };
    let mut args = std::env::args().skip(1);
    let mut start = None;
    let mut end = None;
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let num = |s: String| {
            s.replace('_', "")
                .parse::<u64>()
                .map_err(|e| format!("{s}: {e}"))
        };
        match a.as_str() {
            "--target" => {
                o.target = match val("--target")?.as_str() {
                    "ours" => Target::Ours,
                    "zetta" => Target::Zetta,
                    "zetta-validated" => Target::ZettaValidated,
                    t => return Err(format!("unknown target {t}")),
                }
            }
            "--count" => o.count = num(val("--count")?)?,
            "--seed" => o.seed = num(val("--seed")?)?,
            "--timeout-ms" => o.timeout_ms = num(val("--timeout-ms")?)?,
            "--mem-mb" => o.mem_mb = num(val("--mem-mb")?)? as usize,
            "--show" => o.show = num(val("--show")?)? as usize,
            "--feed-warned" => o.feed_warned = true,
            "--worker-start" => start = Some(num(val("--worker-start")?)?),
            "--worker-end" => end = Some(num(val("--worker-end")?)?),
            "-h" | "--help" => {
                return Err(
                    "usage: twill-bgp-fuzz [--target ours|zetta|zetta-validated] \
                            [--count N] [--seed S] [--timeout-ms MS] [--mem-mb MB] \
                            [--feed-warned] [--show N]"
                        .into(),
                );
            }
            x => return Err(format!("unknown argument {x}")),
        }
    }
    if o.target != Target::Ours && !cfg!(feature = "compare-zettabgp") {
        return Err("the zetta targets need `--features compare-zettabgp`".into());
    }
    if let (Some(s), Some(e)) = (start, end) {
        o.worker = Some((s, e));
    }
    Ok(o)
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    match o.worker {
        Some((s, e)) => worker(&o, s, e),
        None => parent(&o),
    }
}

/// zettabgp 0.6 on one message, its own header check first.
#[cfg(feature = "compare-zettabgp")]
fn zetta(input: &[u8], ctx: &Ctx) -> fuzz::Outcome {
    use zettabgp::prelude::*;
    let mut params = BgpSessionParams::new(
        64512,
        180,
        BgpTransportMode::IPv4,
        std::net::Ipv4Addr::new(192, 0, 2, 1),
        vec![BgpCapability::SafiIPv4u, BgpCapability::SafiIPv6u],
    );
    params.has_as32bit = ctx.four_octet_as;
    params.fuzzy_pathid = false;
    let Some(head) = input.get(..19) else {
        return fuzz::Outcome::Incomplete;
    };
    let Ok((ty, len)) = params.decode_message_head(head) else {
        return fuzz::Outcome::Rejected;
    };
    let Some(body) = input.get(19..19usize.saturating_add(len)) else {
        return fuzz::Outcome::Incomplete;
    };
    let r = match ty {
        BgpMessageType::Open => BgpOpenMessage::new().decode_from(&params, body),
        BgpMessageType::Update => BgpUpdateMessage::new().decode_from(&params, body),
        BgpMessageType::Notification => BgpNotificationMessage::new().decode_from(&params, body),
        BgpMessageType::Keepalive | BgpMessageType::Routerefresh => Ok(()),
    };
    match r {
        Ok(()) => fuzz::Outcome::Decoded,
        // zettabgp has no RFC 7606 outcomes: a decoder error is a rejection.
        Err(_) => fuzz::Outcome::Rejected,
    }
}

#[cfg(not(feature = "compare-zettabgp"))]
fn zetta(_: &[u8], _: &Ctx) -> fuzz::Outcome {
    fuzz::Outcome::Rejected
}

fn run_one(o: &Opts, input: &[u8], ctx: &Ctx) -> fuzz::Outcome {
    match o.target {
        Target::Ours => fuzz::exercise(input, ctx),
        Target::Zetta => zetta(input, ctx),
        Target::ZettaValidated => {
            // Frame as the session would, validate, and only then decode.
            let Some(msg) = (match wire::frame_len(input) {
                Ok(Some(n)) => input.get(..n),
                Ok(None) => return fuzz::Outcome::Incomplete,
                Err(_) => return fuzz::Outcome::Rejected,
            }) else {
                return fuzz::Outcome::Incomplete;
            };
            match wire::validate(msg, ctx) {
                Ok(w) if w.is_empty() || o.feed_warned => zetta(msg, ctx),
                _ => fuzz::Outcome::Rejected,
            }
        }
    }
}

fn worker(o: &Opts, start: u64, end: u64) {
    let corpus = fuzz::seed_corpus();
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let loc = info.location().map(|l| l.to_string()).unwrap_or_default();
        let line: String = format!("{loc}: {msg}").chars().take(300).collect();
        LAST_PANIC.with(|p| *p.borrow_mut() = line.replace('\n', " "));
    }));
    let timeout = o.timeout_ms * 1_000_000;
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let s = STARTED.load(Relaxed);
            if s != 0 && now_ns().saturating_sub(s) > timeout {
                report_and_exit(b'H', 3);
            }
        }
    });
    now_ns();
    CAP.store(LIVE.load(Relaxed) + o.mem_mb * 1024 * 1024, Relaxed);
    ARMED.store(true, Relaxed);
    let stdout = std::io::stdout();
    for i in start..end {
        let input = fuzz::input(o.seed, i, &corpus);
        let ctx = fuzz::ctx_for(i);
        CURRENT.store(i, Relaxed);
        STARTED.store(now_ns().max(1), Relaxed);
        let r = catch_unwind(AssertUnwindSafe(|| run_one(o, &input, &ctx)));
        STARTED.store(0, Relaxed);
        let slot = match r {
            Ok(fuzz::Outcome::Incomplete) => 0,
            Ok(fuzz::Outcome::Rejected) => 1,
            Ok(fuzz::Outcome::Decoded) => 2,
            Ok(fuzz::Outcome::Warned) => 3,
            Err(_) => {
                let msg = LAST_PANIC.with(|p| p.borrow().clone());
                let _ = writeln!(stdout.lock(), "P {i} {msg}");
                4
            }
        };
        COUNTS[slot].fetch_add(1, Relaxed);
        if i % 1_000_000 == 999_999 {
            let c: Vec<String> = COUNTS.iter().map(|c| c.load(Relaxed).to_string()).collect();
            let _ = writeln!(stdout.lock(), "S {i} {}", c.join(" "));
        }
    }
    CURRENT.store(end, Relaxed);
    report_and_exit(b'R', 0);
}

#[derive(Default)]
struct Totals {
    incomplete: u64,
    rejected: u64,
    decoded: u64,
    warned: u64,
    panics: u64,
    hangs: u64,
    memory: u64,
    crashes: u64,
    panic_sites: std::collections::BTreeMap<String, (u64, u64)>,
    hang_inputs: Vec<u64>,
    memory_inputs: Vec<u64>,
}

fn parent(o: &Opts) {
    let exe = std::env::current_exe().unwrap_or_else(|_| "twill-bgp-fuzz".into());
    let t0 = Instant::now();
    let mut t = Totals::default();
    let mut next = 0u64;
    let corpus = fuzz::seed_corpus();
    while next < o.count {
        let mut cmd = Command::new(&exe);
        cmd.args(["--target", target_name(o.target)])
            .args(["--seed", &o.seed.to_string()])
            .args(["--timeout-ms", &o.timeout_ms.to_string()])
            .args(["--mem-mb", &o.mem_mb.to_string()])
            .args(["--worker-start", &next.to_string()])
            .args(["--worker-end", &o.count.to_string()])
            .stdout(Stdio::piped());
        if o.feed_warned {
            cmd.arg("--feed-warned");
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot start worker: {e}");
                std::process::exit(1);
            }
        };
        let Some(out) = child.stdout.take() else {
            eprintln!("worker has no stdout");
            std::process::exit(1);
        };
        let mut last_progress = next;
        let mut finished = false;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut f = line.splitn(3, ' ');
            let kind = f.next().unwrap_or_default();
            let idx: u64 = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let rest = f.next().unwrap_or_default();
            let counts: Vec<u64> = rest.split(' ').filter_map(|s| s.parse().ok()).collect();
            let add = |t: &mut Totals| {
                if let [a, b, c, d, e] = counts[..] {
                    t.incomplete += a;
                    t.rejected += b;
                    t.decoded += c;
                    t.warned += d;
                    t.panics += e;
                }
            };
            match kind {
                "P" => {
                    let site = rest.split(": ").next().unwrap_or_default().to_string();
                    let sites = t.panic_sites.len();
                    let e = t.panic_sites.entry(site).or_insert((0, idx));
                    e.0 += 1;
                    if sites < o.show && e.0 == 1 {
                        eprintln!("panic at input {idx}: {rest}");
                    }
                }
                "S" => {
                    last_progress = idx + 1;
                    eprintln!(
                        "  {} inputs, {} s, panics so far in this worker: {}",
                        idx + 1,
                        t0.elapsed().as_secs(),
                        counts.get(4).copied().unwrap_or(0)
                    );
                }
                "H" | "M" => {
                    add(&mut t);
                    if kind == "H" {
                        t.hangs += 1;
                        t.hang_inputs.push(idx);
                    } else {
                        t.memory += 1;
                        t.memory_inputs.push(idx);
                    }
                    if t.hangs + t.memory <= o.show as u64 {
                        let what = if kind == "H" {
                            "hang"
                        } else {
                            "memory blow-up"
                        };
                        let input = fuzz::input(o.seed, idx, &corpus);
                        eprintln!("{what} at input {idx}: {}", hex(&input));
                    }
                    next = idx + 1;
                    finished = true;
                }
                "R" => {
                    add(&mut t);
                    next = o.count;
                    finished = true;
                }
                _ => {}
            }
        }
        let _ = child.wait();
        if !finished {
            // Died without a word (a signal, an abort): skip the block.
            t.crashes += 1;
            eprintln!("worker died after input {last_progress}; skipping to the next million");
            next = (last_progress / 1_000_000 + 1) * 1_000_000;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = o.count;
    let pct = |x: u64| 100.0 * x as f64 / n.max(1) as f64;
    println!(
        "target:      {}{}",
        target_name(o.target),
        if o.feed_warned { " (+warned)" } else { "" }
    );
    println!("seed:        {}", o.seed);
    println!("inputs:      {n}");
    println!("incomplete:  {}", t.incomplete);
    println!("rejected:    {}", t.rejected);
    println!(
        "decoded:     {} (+ {} with RFC 7606 warnings)",
        t.decoded, t.warned
    );
    println!("panics:      {} ({:.4}%)", t.panics, pct(t.panics));
    println!(
        "hangs:       {} ({:.4}%) (> {} ms)",
        t.hangs,
        pct(t.hangs),
        o.timeout_ms
    );
    println!("memory:      {} (live heap > {} MiB)", t.memory, o.mem_mb);
    println!("crashes:     {}", t.crashes);
    println!(
        "time:        {secs:.1} s ({:.0} inputs/s)",
        n as f64 / secs.max(1e-9)
    );
    for (site, (count, first)) in &t.panic_sites {
        println!("panic site:  {count:>8} x {site} (first input {first})");
    }
    if !t.hang_inputs.is_empty() {
        let shown: Vec<String> = t.hang_inputs.iter().take(10).map(u64::to_string).collect();
        println!("hang inputs: {}", shown.join(" "));
    }
    if !t.memory_inputs.is_empty() {
        let shown: Vec<String> = t
            .memory_inputs
            .iter()
            .take(10)
            .map(u64::to_string)
            .collect();
        println!("memory inputs: {}", shown.join(" "));
    }
    let bad = t.panics + t.hangs + t.memory + t.crashes;
    std::process::exit(if bad == 0 { 0 } else { 1 });
}

fn target_name(t: Target) -> &'static str {
    match t {
        Target::Ours => "ours",
        Target::Zetta => "zetta",
        Target::ZettaValidated => "zetta-validated",
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
