//! The rendered ruleset as data: Twill's table (`inet twill`) with its
//! named sets, interface dispatch maps and chains, each rule a list of
//! [`Atom`]s and a verdict. Three things read it: the printer (nft script
//! text, [`Table::script`]), the differ ([`crate::diff`]) and the
//! interpreter ([`crate::interp`]) that the agreement test runs.
//!
//! Why nft script text rather than the `nftables` crate's JSON schema: the
//! text is what `twillctl policy show` prints and what an operator compares
//! with `nft list table inet twill`; concatenated set types and verdict maps
//! are one line each in text; and `nft -f` applies a script as one atomic
//! transaction exactly as it does JSON. The JSON form is still used to read
//! the table back (felix's drift check), where its structure helps.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// Family and name of Twill's table.
pub const TABLE: &str = "inet twill";

/// Longest table, chain, set or map name the kernel takes, in bytes
/// (`NFT_NAME_MAXLEN` is 256 with the terminating NUL; checked with `nft -c`).
pub const NAME_MAX: usize = 255;
/// Longest rule or set comment nft accepts, in bytes.
pub const COMMENT_MAX: usize = 128;
/// Longest log prefix the kernel takes, in bytes (`NF_LOG_PREFIXLEN` less the NUL).
pub const LOG_PREFIX_MAX: usize = 127;

/// FNV-1a, 64 bits ([`twill_api::names::fnv1a64`]): stable names across
/// processes and versions (std's hasher is randomly seeded and not specified).
pub fn fnv(s: &str) -> u64 {
    twill_api::names::fnv1a64(s.as_bytes())
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn prefix_within(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Names longer than this are shortened; shortened names are exactly
/// [`NAME_MAX`] bytes long, so a name kept whole never equals a shortened one.
const NAME_KEPT: usize = NAME_MAX - 20;

/// A kernel object name `prefix` + `body` + `suffix` that always fits
/// [`NAME_MAX`]: kept whole while it is at most 235 bytes long; otherwise
/// `body` is cut (a readable prefix stays) and `-` and 16 hex digits of a
/// hash of the whole body are added, filling exactly [`NAME_MAX`] bytes.
/// Stable (same input, same name) and, for inputs that differ, different
/// names (up to the hash). `prefix` and `suffix` must be short ASCII.
pub fn fit_name(prefix: &str, body: &str, suffix: &str) -> String {
    let whole = prefix.len() + body.len() + suffix.len();
    if whole <= NAME_KEPT {
        return format!("{prefix}{body}{suffix}");
    }
    let room = NAME_MAX - prefix.len() - suffix.len() - 17;
    let cut = prefix_within(body, room);
    // Pad a cut that ended early on a character boundary so the length,
    // and with it the distinction from whole names, holds.
    let pad = "_".repeat(room - cut.len());
    format!("{prefix}{cut}{pad}-{:016x}{suffix}", fnv(body))
}

/// `text` with quotes, backslashes and control characters replaced, in at
/// most `max` bytes: a longer text keeps a readable prefix and ends in `~`
/// and 16 hex digits of a hash of the whole text.
fn fit_text(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if clean.len() <= max {
        return clean;
    }
    let cut = prefix_within(&clean, max - 17);
    format!("{cut}~{:016x}", fnv(text))
}

/// Text as a comment nft accepts: at most [`COMMENT_MAX`] bytes, quotes,
/// backslashes and control characters replaced, a longer text cut to a
/// readable prefix, `~` and a hash of the whole.
pub fn fit_comment(text: &str) -> String {
    fit_text(text, COMMENT_MAX)
}

/// A log prefix the kernel accepts: `text` in at most [`LOG_PREFIX_MAX`]
/// bytes, ending in a space that separates it from the packet.
pub fn fit_log_prefix(text: &str) -> String {
    format!("{} ", fit_text(text, LOG_PREFIX_MAX - 1))
}

/// The packet mark bit a Pass rule sets so the endpoint chain goes on to
/// its Kubernetes tier (away from kube-proxy's 0x4000 and 0x8000). The
/// endpoint chain clears it before the global tier.
pub const PASS_MARK: u32 = 0x0200_0000;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    pub fn of(ip: IpAddr) -> Fam {
        match ip {
            IpAddr::V4(_) => Fam::V4,
            IpAddr::V6(_) => Fam::V6,
        }
    }
    fn payload(self) -> &'static str {
        match self {
            Fam::V4 => "ip",
            Fam::V6 => "ip6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self {
            Fam::V4 => "ipv4_addr",
            Fam::V6 => "ipv6_addr",
        }
    }
    /// `4` or `6`, for names.
    pub fn digit(self) -> char {
        match self {
            Fam::V4 => '4',
            Fam::V6 => '6',
        }
    }
}

/// Source or destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Src,
    Dst,
}

impl Side {
    fn addr(self) -> &'static str {
        match self {
            Side::Src => "saddr",
            Side::Dst => "daddr",
        }
    }
    fn port(self) -> &'static str {
        match self {
            Side::Src => "sport",
            Side::Dst => "dport",
        }
    }
}

/// What an address is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrTarget {
    /// A named set of addresses of the atom's family.
    Set(String),
    /// Literal networks (an anonymous set).
    Nets(Vec<IpNetwork>),
}

/// One match condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Atom {
    /// `meta nfproto ipv4|ipv6`.
    Family(Fam),
    /// `meta l4proto [!=] N`.
    L4Proto { proto: u8, neg: bool },
    /// `ip saddr [!=] @set` / `ip6 daddr [!=] { nets }`.
    Addr {
        fam: Fam,
        side: Side,
        neg: bool,
        target: AddrTarget,
    },
    /// `th dport [!=] { 80, 90-99 }`.
    Port {
        side: Side,
        neg: bool,
        ranges: Vec<(u16, u16)>,
    },
    /// `ip daddr . meta l4proto . th dport [!=] @set` (named ports).
    AddrPort {
        fam: Fam,
        side: Side,
        neg: bool,
        set: String,
    },
    /// `icmp type T [icmp code C]` (or icmpv6); negated: not this type/code.
    Icmp {
        fam: Fam,
        type_: u8,
        code: Option<u8>,
        neg: bool,
    },
    /// `meta mark & BIT == BIT`.
    MarkSet(u32),
    /// `ct state established,related`.
    CtEstablished,
    /// `ct state invalid`.
    CtInvalid,
}

/// Where a rule sends the packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
    /// No verdict: the rule only logs or marks.
    Continue,
    /// `iifname vmap @MAP` (egress dispatch) or `oifname vmap @MAP`.
    Dispatch {
        by_oif: bool,
        map: String,
    },
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NftRule {
    pub atoms: Vec<Atom>,
    /// `log prefix "TEXT "` before the verdict (the text fitted to the
    /// kernel's limit when printed).
    pub log: Option<String>,
    /// `meta mark set meta mark | BIT` (Some(bit)) before the verdict.
    pub set_mark: Option<u32>,
    /// `meta mark set meta mark & ~BIT` (clearing) before the verdict.
    pub clear_mark: Option<u32>,
    pub verdict: Verdict,
    pub comment: Option<String>,
}

impl NftRule {
    pub fn new(atoms: Vec<Atom>, verdict: Verdict) -> NftRule {
        NftRule {
            atoms,
            log: None,
            set_mark: None,
            clear_mark: None,
            verdict,
            comment: None,
        }
    }
}

/// A base chain's hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Forward,
    Input,
}

/// A chain; base chains have a hook and priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub hook: Option<(Hook, i32)>,
    pub rules: Vec<NftRule>,
}

/// Element types of named sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    Addr(Fam),
    /// address . protocol . port
    AddrProtoPort(Fam),
}

/// One element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Element {
    Addr(IpAddr),
    AddrProtoPort(IpAddr, u8, u16),
}

impl Element {
    /// The element in nft syntax.
    pub fn text(&self) -> String {
        match self {
            Element::Addr(a) => a.to_string(),
            Element::AddrProtoPort(a, p, port) => format!("{a} . {p} . {port}"),
        }
    }
}

/// A named set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSet {
    pub kind: SetKind,
    pub elements: BTreeSet<Element>,
    /// What it holds, for people reading the ruleset.
    pub comment: String,
}

/// The two interface dispatch maps: ifname → chain to jump to.
pub const MAP_EGRESS: &str = "endpoint-egress";
pub const MAP_INGRESS: &str = "endpoint-ingress";

/// The whole table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub sets: BTreeMap<String, NamedSet>,
    /// map name → (interface → chain).
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
    pub chains: BTreeMap<String, Chain>,
}

/// One entry as such, more as an anonymous set `{ a, b }` (which the
/// kernel stores as one more set in the table).
fn list_text(items: Vec<String>) -> String {
    match items.as_slice() {
        [one] => one.clone(),
        _ => format!("{{ {} }}", items.join(", ")),
    }
}

fn ranges_text(r: &[(u16, u16)]) -> String {
    let items: Vec<String> = r
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    list_text(items)
}

fn nets_text(n: &[IpNetwork]) -> String {
    let items: Vec<String> = n
        .iter()
        .map(|n| {
            if n.prefix() == if n.is_ipv4() { 32 } else { 128 } {
                n.ip().to_string()
            } else {
                format!("{}/{}", n.network(), n.prefix())
            }
        })
        .collect();
    list_text(items)
}

fn neg(n: bool) -> &'static str {
    if n { "!= " } else { "" }
}

impl Atom {
    /// The atom in nft syntax.
    pub fn text(&self) -> String {
        match self {
            Atom::Family(f) => format!(
                "meta nfproto {}",
                match f {
                    Fam::V4 => "ipv4",
                    Fam::V6 => "ipv6",
                }
            ),
            Atom::L4Proto { proto, neg: n } => format!("meta l4proto {}{proto}", neg(*n)),
            Atom::Addr {
                fam,
                side,
                neg: n,
                target,
            } => {
                let t = match target {
                    AddrTarget::Set(s) => format!("@{s}"),
                    AddrTarget::Nets(v) => nets_text(v),
                };
                format!("{} {} {}{t}", fam.payload(), side.addr(), neg(*n))
            }
            Atom::Port {
                side,
                neg: n,
                ranges,
            } => format!("th {} {}{}", side.port(), neg(*n), ranges_text(ranges)),
            Atom::AddrPort {
                fam,
                side,
                neg: n,
                set,
            } => format!(
                "{} {} . meta l4proto . th {} {}@{set}",
                fam.payload(),
                side.addr(),
                side.port(),
                neg(*n)
            ),
            Atom::Icmp {
                fam,
                type_,
                code,
                neg: n,
            } => {
                let p = match fam {
                    Fam::V4 => "icmp",
                    Fam::V6 => "icmpv6",
                };
                match (code, n) {
                    (None, false) => format!("{p} type {type_}"),
                    (None, true) => format!("{p} type != {type_}"),
                    (Some(c), false) => format!("{p} type {type_} {p} code {c}"),
                    (Some(c), true) => format!("{p} type . {p} code != {{ {type_} . {c} }}"),
                }
            }
            Atom::MarkSet(bit) => format!("meta mark & {bit:#010x} == {bit:#010x}"),
            Atom::CtEstablished => "ct state established,related".into(),
            Atom::CtInvalid => "ct state invalid".into(),
        }
    }
}

impl NftRule {
    /// The rule in nft syntax (without `add rule ...`).
    pub fn text(&self) -> String {
        let mut parts: Vec<String> = self.atoms.iter().map(Atom::text).collect();
        if let Some(p) = &self.log {
            parts.push(format!("log prefix \"{}\"", fit_log_prefix(p)));
        }
        if let Some(b) = self.set_mark {
            parts.push(format!("meta mark set meta mark | {b:#010x}"));
        }
        if let Some(b) = self.clear_mark {
            parts.push(format!("meta mark set meta mark & {:#010x}", !b));
        }
        match &self.verdict {
            Verdict::Accept => parts.push("accept".into()),
            Verdict::Drop => parts.push("drop".into()),
            Verdict::Return => parts.push("return".into()),
            Verdict::Jump(c) => parts.push(format!("jump {c}")),
            Verdict::Goto(c) => parts.push(format!("goto {c}")),
            Verdict::Continue => {}
            Verdict::Dispatch { by_oif, map } => parts.push(format!(
                "{} vmap @{map}",
                if *by_oif { "oifname" } else { "iifname" }
            )),
        }
        if let Some(c) = &self.comment {
            parts.push(format!("comment \"{}\"", fit_comment(c)));
        }
        parts.join(" ")
    }
}

/// Set declaration body (type and flags) in nft syntax.
pub fn set_type(kind: SetKind) -> String {
    match kind {
        SetKind::Addr(f) => format!("type {};", f.addr_type()),
        SetKind::AddrProtoPort(f) => {
            format!("type {} . inet_proto . inet_service;", f.addr_type())
        }
    }
}

/// Hook text for a base chain.
pub fn hook_text(h: Hook, prio: i32) -> String {
    let hook = match h {
        Hook::Forward => "forward",
        Hook::Input => "input",
    };
    format!("type filter hook {hook} priority {prio}; policy accept;")
}

/// Elements in nft syntax, `{ a, b }`, or None when empty.
pub fn elements_text<'a>(els: impl IntoIterator<Item = &'a Element>) -> Option<String> {
    let items: Vec<String> = els.into_iter().map(Element::text).collect();
    if items.is_empty() {
        None
    } else {
        Some(format!("{{ {} }}", items.join(", ")))
    }
}

/// Map elements in nft syntax.
pub fn map_elements_text<'a>(
    els: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Option<String> {
    let items: Vec<String> = els
        .into_iter()
        .map(|(i, c)| format!("\"{i}\" : jump {c}"))
        .collect();
    if items.is_empty() {
        None
    } else {
        Some(format!("{{ {} }}", items.join(", ")))
    }
}

impl Table {
    /// Commands that create every object of the table (the table itself
    /// must exist and be empty). Chains are declared before any rule so
    /// rules can jump to chains defined later.
    pub fn create_commands(&self) -> String {
        let mut s = String::new();
        for (name, set) in &self.sets {
            let _ = writeln!(
                s,
                "add set {TABLE} {name} {{ {} comment \"{}\"; }}",
                set_type(set.kind),
                fit_comment(&set.comment)
            );
            if let Some(e) = elements_text(&set.elements) {
                let _ = writeln!(s, "add element {TABLE} {name} {e}");
            }
        }
        for (name, chain) in &self.chains {
            if chain.hook.is_none() {
                let _ = writeln!(s, "add chain {TABLE} {name}");
            }
        }
        for (name, els) in &self.maps {
            let _ = writeln!(s, "add map {TABLE} {name} {{ type ifname : verdict; }}");
            if let Some(e) = map_elements_text(els) {
                let _ = writeln!(s, "add element {TABLE} {name} {e}");
            }
        }
        for (name, chain) in &self.chains {
            if chain.hook.is_some() {
                continue;
            }
            for r in &chain.rules {
                let _ = writeln!(s, "add rule {TABLE} {name} {}", r.text());
            }
        }
        // Base chains last: traffic meets them only once everything they
        // jump to is in place (the whole script is one transaction anyway).
        for (name, chain) in &self.chains {
            if let Some((h, p)) = chain.hook {
                let _ = writeln!(s, "add chain {TABLE} {name} {{ {} }}", hook_text(h, p));
                for r in &chain.rules {
                    let _ = writeln!(s, "add rule {TABLE} {name} {}", r.text());
                }
            }
        }
        s
    }

    /// One transaction that replaces Twill's table and touches nothing else:
    /// create it if missing, delete it, build it again.
    pub fn script(&self) -> String {
        format!(
            "add table {TABLE}\ndelete table {TABLE}\nadd table {TABLE}\n{}",
            self.create_commands()
        )
    }

    /// Number of rules in every chain.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }
}
