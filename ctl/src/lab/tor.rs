//! The ToR router: starting BIRD, FRR (zebra and bgpd, in a directory of
//! their own that user `frr` can reach) or GoBGP in the ToR namespace, and
//! reading its routes back for `lab status`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::host::{output_of, read_pid, run_cmd, spawn_in, wait_for};
use super::plan::Tor;
use super::state::State;

/// Starts the plan's ToR daemon in the ToR namespace and records it.
pub(super) fn start_tor(dir: &Path, st: &mut State, tdir: &Path) -> anyhow::Result<()> {
    let plan = st.plan.clone();
    let ns = plan.tor_ns.as_str();
    match plan.tor {
        Tor::None => Ok(()),
        Tor::Bird => {
            let conf = tdir.join("bird.conf");
            std::fs::write(&conf, plan.bird_conf())?;
            let pidf = tdir.join("bird.pid");
            let (c, s, p) = (
                conf.display().to_string(),
                tdir.join("bird.ctl").display().to_string(),
                pidf.display().to_string(),
            );
            run_cmd(
                "ip",
                &["netns", "exec", ns, "bird", "-c", &c, "-s", &s, "-P", &p],
            )?;
            record_daemon(dir, st, "BIRD", "bird", &pidf)
        }
        Tor::Frr => {
            // FRR's daemons drop root for user frr, who may not reach the
            // lab directory (a private parent): they get a directory of
            // their own under /run; the lab directory keeps a copy of the
            // configuration for people to read.
            std::fs::write(tdir.join("bgpd.conf"), plan.frr_conf())?;
            let fdir = frr_run_dir(&plan.prefix);
            st.frr_dir = Some(fdir.clone());
            st.save(dir)?;
            make_frr_dir(&fdir)?;
            let conf = fdir.join("bgpd.conf");
            std::fs::write(&conf, plan.frr_conf())?;
            give_to_frr(&conf)?;
            let zserv = fdir.join("zserv.api").display().to_string();
            let td = fdir.display().to_string();
            let zpid = fdir.join("zebra.pid");
            run_cmd(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "/usr/lib/frr/zebra",
                    "-d",
                    "-z",
                    &zserv,
                    "-i",
                    &zpid.display().to_string(),
                    "--vty_socket",
                    &td,
                ],
            )?;
            record_daemon(dir, st, "zebra", "zebra", &zpid)?;
            let bpid = fdir.join("bgpd.pid");
            let (conf_s, bpid_s) = (conf.display().to_string(), bpid.display().to_string());
            let mut args: Vec<String> = [
                "netns",
                "exec",
                ns,
                "/usr/lib/frr/bgpd",
                "-d",
                "-S",
                "-z",
                &zserv,
                "-f",
                &conf_s,
                "-i",
                &bpid_s,
                "--vty_socket",
                &td,
                "-l",
                &plan.tor_addr.to_string(),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            // Dual stack: listen on the IPv6 rack address too (the IPv6 sessions).
            if let Some(v6) = &plan.v6 {
                args.extend(["-l".to_string(), v6.tor_addr.to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cmd("ip", &args)?;
            record_daemon(dir, st, "FRR bgpd", "bgpd", &bpid)
        }
        Tor::Gobgp => {
            let conf = tdir.join("gobgp.toml");
            std::fs::write(&conf, plan.gobgp_toml())?;
            let pid = spawn_in(
                ns,
                Path::new("gobgpd"),
                &[
                    "-f".into(),
                    conf.display().to_string(),
                    "--api-hosts".into(),
                    GOBGP_API.into(),
                ],
                &tdir.join("gobgpd.log"),
            )?;
            st.add_proc(dir, "gobgpd (ToR)", pid, "gobgpd")
        }
    }
}

/// Waits until a ToR daemon that puts itself in the background (`desc`)
/// writes its PID file, then records it as `NAME (ToR)`, its command line
/// marked by `name`.
fn record_daemon(
    dir: &Path,
    st: &mut State,
    desc: &str,
    name: &str,
    pid_file: &Path,
) -> anyhow::Result<()> {
    wait_for(
        &format!("{desc} writing its PID file"),
        Duration::from_secs(10),
        || read_pid(pid_file).is_some(),
    )?;
    let pid = read_pid(pid_file).unwrap_or_default();
    st.add_proc(dir, &format!("{name} (ToR)"), pid, name)
}

/// Where the ToR's GoBGP serves its API (inside the ToR namespace).
const GOBGP_API: &str = "127.0.0.1:50051";

/// The ToR router's routes, as its own tool shows them.
pub(super) fn tor_routes(dir: &Path, st: &State) -> anyhow::Result<String> {
    let tdir = dir.join("tor");
    match st.plan.tor {
        Tor::Bird => output_of(
            "birdc",
            &[
                "-s",
                &tdir.join("bird.ctl").display().to_string(),
                "show",
                "route",
            ],
        ),
        Tor::Frr => output_of(
            "vtysh",
            &[
                "--vty_socket",
                &st.frr_dir.as_deref().unwrap_or(&tdir).display().to_string(),
                "-c",
                "show ip route bgp",
                "-c",
                "show ipv6 route bgp",
            ],
        ),
        Tor::Gobgp => output_of(
            "ip",
            &[
                "netns",
                "exec",
                &st.plan.tor_ns,
                "gobgp",
                "--target",
                GOBGP_API,
                "global",
                "rib",
            ],
        ),
        Tor::None => Ok(String::new()),
    }
}

/// Where a ToR FRR keeps its sockets and PID files: its own directory
/// under /run, owned by the `frr` user (FRR drops root and must reach it
/// whatever the lab directory's parents allow).
fn frr_run_dir(prefix: &str) -> PathBuf {
    Path::new("/run/twill-lab").join(format!("{prefix}-frr"))
}

/// Makes `dir` (fresh) owned by user and group `frr`, mode 0750.
fn make_frr_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (uid, gid) = frr_ids()?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("chown frr {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .with_context(|| format!("chmod {}", dir.display()))
}

/// Gives a file in the FRR directory to user `frr`.
fn give_to_frr(file: &Path) -> anyhow::Result<()> {
    let (uid, gid) = frr_ids()?;
    std::os::unix::fs::chown(file, Some(uid), Some(gid))
        .with_context(|| format!("chown frr {}", file.display()))
}

fn frr_ids() -> anyhow::Result<(u32, u32)> {
    let out = Command::new("id")
        .args(["-u", "frr"])
        .stderr(Stdio::null())
        .output()
        .context("running id")?;
    let gout = Command::new("id")
        .args(["-g", "frr"])
        .stderr(Stdio::null())
        .output()
        .context("running id")?;
    let parse = |o: &std::process::Output| -> Option<u32> {
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .flatten()
    };
    match (parse(&out), parse(&gout)) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => {
            bail!("there is no user frr, which FRR's daemons run as: is the frr package installed?")
        }
    }
}
