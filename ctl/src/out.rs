//! Writing to stdout and stderr without panicking.
//!
//! `twillctl get pools | head -1` closes the pipe after one line; the
//! standard `print!` would then panic ("failed printing to stdout"). Every
//! module prints through the `print!`/`println!`/`eprint!`/`eprintln!`
//! macros defined in `main.rs`, which shadow the standard ones and land
//! here: a closed stdout ends the program quietly with the shell's
//! convention for a process stopped by SIGPIPE (141), like kubectl; a full
//! disk or another write error is said on stderr, exit 1. Errors writing to
//! stderr are ignored (there is nowhere left to say them).

use std::io::Write;

/// Exit code after stdout was closed by the reader (128 + SIGPIPE).
pub const CLOSED_STDOUT: i32 = 141;

/// Writes to stdout; a closed pipe or a write error ends the program.
pub fn stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.flush()) {
        closed(e);
    }
}

/// Writes raw bytes to stdout, as [`stdout`].
pub fn stdout_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|_| out.flush()) {
        closed(e);
    }
}

fn closed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(CLOSED_STDOUT);
    }
    stderr(format_args!("error: writing to standard output: {e}\n"));
    std::process::exit(1);
}

/// Writes to stderr, ignoring errors.
pub fn stderr(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
}
