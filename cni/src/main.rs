//! twill-cni: the CNI plugin the container runtime execs for every pod.
//!
//! It validates what the runtime gave it (stdin network configuration and
//! the CNI_* environment), forwards the request to twill-node over the unix
//! socket named in the configuration, and prints the spec's result or error
//! object in the caller's cniVersion. It does no networking itself, so it
//! cannot leave a pod half-configured: twill-node sets an endpoint up
//! completely or undoes it. It never panics on input: every failure is a CNI
//! error with the spec's code and a non-zero exit.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use twill_cni::protocol::{Command, Request, Response};
use twill_cni::spec::{self, CniError, DEFAULT_SOCKET, LATEST, SUPPORTED_VERSIONS, code};

/// What the plugin prints: a JSON document (or nothing), and the exit code.
struct Outcome {
    version: String,
    result: Result<Option<Value>, CniError>,
}

fn main() -> ExitCode {
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut bytes = Vec::new();
    let read = std::io::stdin().read_to_end(&mut bytes);
    let outcome = match read {
        Ok(_) => match String::from_utf8(bytes) {
            Ok(input) => run(&env, &input),
            Err(e) => Outcome {
                version: LATEST.into(),
                result: Err(CniError::new(
                    code::DECODING_FAILURE,
                    format!(
                        "the network configuration is not UTF-8 text (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                )),
            },
        },
        Err(e) => Outcome {
            version: LATEST.into(),
            result: Err(CniError::new(
                code::IO_FAILURE,
                format!("cannot read the network configuration from stdin: {e}"),
            )),
        },
    };
    let mut out = std::io::stdout().lock();
    match outcome.result {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(out, "{}", e.render(&outcome.version));
            ExitCode::from(1)
        }
    }
}

fn env_var<'a>(env: &'a HashMap<String, String>, name: &str) -> Result<&'a str, CniError> {
    match env.get(name).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("{name} is not set"),
        )),
    }
}

/// Letters, digits, `_`, `.` and `-`, starting with a letter or digit: the
/// spec's rule for both a container ID and a network name.
fn is_cni_identifier(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

fn check_container_id(id: &str) -> Result<(), CniError> {
    if is_cni_identifier(id) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "CNI_CONTAINERID {id:?} must be letters, digits, '_', '.' and '-', starting with a letter or digit"
            ),
        ))
    }
}

fn check_ifname(name: &str) -> Result<(), CniError> {
    let bad = name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "CNI_IFNAME {name:?} is not a valid interface name (at most 15 characters, no '/', ':' or spaces)"
            ),
        ))
    } else {
        Ok(())
    }
}

/// The spec requires `name` (a network name: letters, digits, `_`, `.`, `-`).
fn check_name(config: &Value) -> Result<(), CniError> {
    let invalid = |m: String| CniError::new(code::INVALID_NETWORK_CONFIG, m);
    match config.get("name") {
        None | Some(Value::Null) => Err(invalid(
            "name is missing from the network configuration".into(),
        )),
        Some(Value::String(n)) if is_cni_identifier(n) => Ok(()),
        Some(other) => Err(invalid(format!(
            "name must be a network name (letters, digits, '_', '.' and '-', starting with a letter or digit), got {other}"
        ))),
    }
}

/// CNI_NETNS must name a network namespace (an nsfs file such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`), not a directory or an ordinary
/// file: refused here, before twill-node tries to enter it.
fn check_netns(ns: &str) -> Result<(), CniError> {
    let bad =
        |why: String| CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_NETNS {ns:?} {why}"));
    let meta = std::fs::metadata(ns).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad("does not exist".into()),
        _ => bad(format!("cannot be read: {e}")),
    })?;
    if meta.is_dir() {
        return Err(bad("is a directory, not a network namespace".into()));
    }
    match fs_magic(ns) {
        Ok(m) if m == NSFS_MAGIC || m == PROC_SUPER_MAGIC => Ok(()),
        Ok(_) => Err(bad(
            "is not a network namespace (expected a file such as /run/netns/NAME or /proc/PID/ns/net)"
                .into(),
        )),
        Err(e) => Err(bad(format!("cannot be examined: {e}"))),
    }
}

/// statfs(2) magic of the namespace filesystem (and of /proc on old kernels).
const NSFS_MAGIC: i64 = 0x6e73_6673;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

fn fs_magic(path: &str) -> std::io::Result<i64> {
    let c = std::ffi::CString::new(path).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "contains a NUL byte")
    })?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated string and `buf` is writable
    // memory of the size statfs expects; it is read only after success.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded, so it filled the struct.
    let st = unsafe { buf.assume_init() };
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok(st.f_type as i64)
}

fn run(env: &HashMap<String, String>, input: &str) -> Outcome {
    // The version the caller speaks, for rendering even our errors.
    let conf: Option<Value> = serde_json::from_str(input).ok();
    let asked = conf
        .as_ref()
        .and_then(|c| c.get("cniVersion"))
        .and_then(Value::as_str)
        .filter(|v| spec::supported(v))
        .unwrap_or(LATEST)
        .to_string();
    Outcome {
        version: asked.clone(),
        result: dispatch(env, input),
    }
}

fn dispatch(env: &HashMap<String, String>, input: &str) -> Result<Option<Value>, CniError> {
    let command = env_var(env, "CNI_COMMAND")?;
    if command == "VERSION" {
        let asked = serde_json::from_str::<Value>(input)
            .ok()
            .and_then(|c| {
                c.get("cniVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| LATEST.to_string());
        return Ok(Some(
            json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS}),
        ));
    }
    let command = match command {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "GC" => Command::Gc,
        "STATUS" => Command::Status,
        other => {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"),
            ));
        }
    };
    let config: Value = serde_json::from_str(input).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("the network configuration is not valid JSON: {e}"),
        )
    })?;
    if !config.is_object() {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            "the network configuration must be a JSON object",
        ));
    }
    let version = match config.get("cniVersion") {
        Some(Value::String(v)) => v.clone(),
        None | Some(Value::Null) => {
            return Err(CniError::new(
                code::INVALID_NETWORK_CONFIG,
                "cniVersion is missing from the network configuration",
            ));
        }
        Some(other) => {
            return Err(CniError::new(
                code::INVALID_NETWORK_CONFIG,
                format!(
                    "cniVersion must be a string such as \"1.0.0\", got {other}; supported: {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
    };
    let version = version.as_str();
    if !spec::supported(version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {version:?} is not supported; supported: {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let needs = match command {
        Command::Check => Some("0.4.0"),
        Command::Gc | Command::Status => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = needs
        && !spec::at_least(version, min)
    {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{command:?} needs cniVersion {min} or later; the configuration says {version}"
            ),
        ));
    }
    check_name(&config)?;
    let settings = Settings::from_config(&config)?;

    let mut req = Request {
        command,
        container_id: String::new(),
        netns: String::new(),
        ifname: String::new(),
        args: BTreeMap::new(),
        config,
    };
    if matches!(command, Command::Add | Command::Del | Command::Check) {
        req.container_id = env_var(env, "CNI_CONTAINERID")?.to_string();
        check_container_id(&req.container_id)?;
        req.ifname = env_var(env, "CNI_IFNAME")?.to_string();
        check_ifname(&req.ifname)?;
        req.netns = env.get("CNI_NETNS").cloned().unwrap_or_default();
        if command != Command::Del {
            let ns = env_var(env, "CNI_NETNS")?;
            check_netns(ns)?;
        }
        if let Some(args) = env.get("CNI_ARGS") {
            req.args = spec::parse_args(args)
                .map_err(|e| CniError::new(code::INVALID_ENVIRONMENT, e))?
                .into_iter()
                .collect();
        }
    }
    match send(&settings, &req) {
        Ok(Response::Ok(Some(result))) => Ok(Some(result.render(version))),
        Ok(Response::Ok(None)) => Ok(None),
        Ok(Response::Err(e)) => Err(e),
        Err(e) if command == Command::Status => Err(CniError::new(code::NOT_AVAILABLE, e.msg)),
        Err(e) => Err(e),
    }
}

/// Twill's own fields in the network configuration.
struct Settings {
    socket: String,
    timeout: Duration,
}

impl Settings {
    fn from_config(config: &Value) -> Result<Settings, CniError> {
        let invalid = |m: String| CniError::new(code::INVALID_NETWORK_CONFIG, m);
        if let Some(ipam) = config.get("ipam")
            && !ipam.is_null()
            && ipam.as_object().is_none_or(|o| !o.is_empty())
        {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "twill-cni allocates addresses itself (block IPAM); remove the \"ipam\" section",
            ));
        }
        let socket = match config.get("socket") {
            None => DEFAULT_SOCKET.to_string(),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => return Err(invalid(format!("\"socket\" must be a path, got {other}"))),
        };
        let timeout = match config.get("timeoutSeconds") {
            None => Duration::from_secs(60),
            Some(v) => match v.as_f64() {
                Some(s) if s > 0.0 && s <= 3600.0 => Duration::from_secs_f64(s),
                _ => {
                    return Err(invalid(format!(
                        "\"timeoutSeconds\" must be a number of seconds in (0, 3600], got {v}"
                    )));
                }
            },
        };
        if let Some(pools) = config.get("pools")
            && !pools
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string))
        {
            return Err(invalid(format!(
                "\"pools\" must be a list of IPPool names, got {pools}"
            )));
        }
        if let Some(mtu) = config.get("mtu")
            && !mtu.as_u64().is_some_and(|m| (68..=65535).contains(&m))
        {
            return Err(invalid(format!("\"mtu\" must be 68..=65535, got {mtu}")));
        }
        Ok(Settings { socket, timeout })
    }
}

fn send(settings: &Settings, req: &Request) -> Result<Response, CniError> {
    let later = |what: String| CniError::new(code::TRY_AGAIN_LATER, what);
    let mut stream = UnixStream::connect(&settings.socket).map_err(|e| {
        later(format!(
            "cannot reach twill-node at {} ({e}); is twill-node running on this node?",
            settings.socket
        ))
    })?;
    stream
        .set_read_timeout(Some(settings.timeout))
        .and_then(|_| stream.set_write_timeout(Some(settings.timeout)))
        .map_err(|e| later(format!("socket: {e}")))?;
    let mut line = serde_json::to_vec(req)
        .map_err(|e| CniError::new(code::INTERNAL, format!("encode request: {e}")))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| later(format!("sending to twill-node: {e}")))?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(|e| {
        later(format!(
            "waiting for twill-node ({}s): {e}",
            settings.timeout.as_secs()
        ))
    })?;
    if reply.is_empty() {
        return Err(later(
            "twill-node closed the connection without answering".into(),
        ));
    }
    serde_json::from_str(&reply).map_err(|e| {
        CniError::new(
            code::INTERNAL,
            format!("twill-node sent an unreadable answer: {e}"),
        )
    })
}
