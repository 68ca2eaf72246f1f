//! The command line, parsed by hand: four verbs and four options do not
//! need a parser library's code mapped into every speaker.

use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub struct Cli {
    pub config: Option<PathBuf>,
    pub cmd: Cmd,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cmd {
    /// No subcommand: run the speaker (needs `--config`).
    Run,
    Help,
    Status {
        output: Output,
        socket: Option<PathBuf>,
    },
    Routes {
        socket: Option<PathBuf>,
    },
    Metrics {
        socket: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output {
    Table,
    Json,
}

/// Parses the arguments after the program name. Options take their value
/// as the next argument or after `=` (`--socket=/run/x.sock`, `-ojson`);
/// `--config` may stand before or after the subcommand.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, String> {
    let mut it = args.into_iter();
    let mut config = None;
    let mut verb: Option<String> = None;
    let mut output = None;
    let mut socket = None;
    let mut help = false;
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str() else {
            return Err(format!("argument {arg:?} is not UTF-8"));
        };
        let (name, inline) = split_option(s);
        let mut value = |what: &str| -> Result<OsString, String> {
            match &inline {
                Some(v) => Ok(OsString::from(v)),
                None => it
                    .next()
                    .ok_or_else(|| format!("{name} needs a value ({what})")),
            }
        };
        match name {
            "-h" | "--help" if inline.is_none() => help = true,
            "-c" | "--config" => config = Some(PathBuf::from(value("a YAML file")?)),
            "--socket" => socket = Some(PathBuf::from(value("a unix socket path")?)),
            "-o" | "--output" => {
                let v = value("table or json")?;
                output = Some(match v.to_str() {
                    Some("table") => Output::Table,
                    Some("json") => Output::Json,
                    _ => return Err(format!("{name} {v:?}: give table or json")),
                });
            }
            _ if s.starts_with('-') => return Err(format!("unknown option {s:?}")),
            _ if verb.is_none() => verb = Some(s.to_string()),
            _ => return Err(format!("unexpected argument {s:?}")),
        }
    }
    if help {
        return Ok(Cli {
            config,
            cmd: Cmd::Help,
        });
    }
    let only_status = |opt: &str, given: bool| {
        if given {
            Err(format!(
                "{opt} belongs to a subcommand (status, routes, metrics)"
            ))
        } else {
            Ok(())
        }
    };
    let cmd = match verb.as_deref() {
        None => {
            only_status("--socket", socket.is_some())?;
            only_status("--output", output.is_some())?;
            Cmd::Run
        }
        Some("help") => Cmd::Help,
        Some("status") => Cmd::Status {
            output: output.unwrap_or(Output::Table),
            socket,
        },
        Some(v @ ("routes" | "metrics")) => {
            if output.is_some() {
                return Err(format!("{v} has no --output (it prints JSON or text)"));
            }
            if v == "routes" {
                Cmd::Routes { socket }
            } else {
                Cmd::Metrics { socket }
            }
        }
        Some(v) => {
            return Err(format!(
                "unknown subcommand {v:?} (status, routes, metrics)"
            ));
        }
    };
    Ok(Cli { config, cmd })
}

/// `--name=value` → (`--name`, value); `-ovalue` → (`-o`, value).
fn split_option(s: &str) -> (&str, Option<String>) {
    if let Some(rest) = s.strip_prefix("--") {
        return match rest.split_once('=') {
            Some((n, v)) => (&s[..2 + n.len()], Some(v.to_string())),
            None => (s, None),
        };
    }
    if s.len() > 2 && s.starts_with('-') && s.is_char_boundary(2) {
        let v = s[2..].strip_prefix('=').unwrap_or(&s[2..]);
        return (&s[..2], Some(v.to_string()));
    }
    (s, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Cli, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn run_and_the_subcommands_in_every_spelling() {
        let run = Cli {
            config: Some("/etc/b.yaml".into()),
            cmd: Cmd::Run,
        };
        for a in [
            &["--config", "/etc/b.yaml"][..],
            &["-c", "/etc/b.yaml"],
            &["--config=/etc/b.yaml"],
            &["-c/etc/b.yaml"],
        ] {
            assert_eq!(p(a), Ok(run.clone()), "{a:?}");
        }
        let status_json = Cmd::Status {
            output: Output::Json,
            socket: Some("/s".into()),
        };
        for a in [
            &["status", "-o", "json", "--socket", "/s"][..],
            &["status", "--output=json", "--socket=/s"],
            &["--socket", "/s", "status", "-ojson"],
        ] {
            assert_eq!(p(a).map(|c| c.cmd), Ok(status_json.clone()), "{a:?}");
        }
        assert_eq!(
            p(&["status"]).map(|c| c.cmd),
            Ok(Cmd::Status {
                output: Output::Table,
                socket: None
            })
        );
        let with_config = p(&["-c", "/c.yaml", "routes"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(with_config.config, Some("/c.yaml".into()));
        assert_eq!(with_config.cmd, Cmd::Routes { socket: None });
        assert_eq!(
            p(&["metrics", "--socket", "/m"]).map(|c| c.cmd),
            Ok(Cmd::Metrics {
                socket: Some("/m".into())
            })
        );
        assert_eq!(p(&["--help"]).map(|c| c.cmd), Ok(Cmd::Help));
        assert_eq!(p(&["status", "-h"]).map(|c| c.cmd), Ok(Cmd::Help));
        assert_eq!(p(&[]).map(|c| c.cmd), Ok(Cmd::Run));
    }

    #[test]
    fn mistakes_name_the_argument() {
        for (a, says) in [
            (&["status", "-o", "yaml"][..], "\"yaml\""),
            (&["status", "--socket"], "--socket needs a value"),
            (&["--config"], "--config needs a value"),
            (&["stats"], "unknown subcommand \"stats\""),
            (&["status", "routes"], "unexpected argument \"routes\""),
            (&["--verbose"], "unknown option \"--verbose\""),
            (&["routes", "-o", "json"], "routes has no --output"),
            (&["--socket", "/s"], "--socket belongs to a subcommand"),
        ] {
            match p(a) {
                Ok(c) => panic!("{a:?} parsed as {c:?}"),
                Err(e) => assert!(e.contains(says), "{a:?}: {e}"),
            }
        }
    }
}
