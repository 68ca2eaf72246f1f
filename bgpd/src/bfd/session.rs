//! One BFD session, pure (RFC 5880 §6.2 state machine, §6.8 procedures,
//! asynchronous mode, Active role). The caller passes the current time in;
//! `next_deadline` says when to call again. Inputs: a received (already
//! decoded) packet, the transmit timer, the detection timer. Outputs:
//! packets to send and state changes.
//!
//! Intervals: until the session is Up we send at most once a second
//! (§6.8.3); on Up we drop to the configured rate and run a Poll sequence
//! to announce it. A Poll from the peer is answered at once with Final.
//! Transmit intervals are jittered to 75–100 % (§6.8.7). Detection time is
//! the remote multiplier × max(our required min rx, remote desired min tx).

use std::time::{Duration, Instant};

use super::packet::{BfdState, ControlPacket, diag};

/// What this side asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub min_tx: Duration,
    pub min_rx: Duration,
    pub multiplier: u8,
}

impl Default for Config {
    /// 300 ms × 3, the common router default.
    fn default() -> Config {
        Config {
            min_tx: Duration::from_millis(300),
            min_rx: Duration::from_millis(300),
            multiplier: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Received(ControlPacket),
    TxTimer,
    DetectTimer,
    /// We stop the session (peer removed): tell the peer AdminDown.
    AdminDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(ControlPacket),
    StateChanged {
        from: BfdState,
        to: BfdState,
        diag: u8,
    },
}

/// §6.8.3: the transmit interval while not Up.
const SLOW_TX: Duration = Duration::from_secs(1);

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

pub struct Session {
    cfg: Config,
    local_discr: u32,
    state: BfdState,
    local_diag: u8,
    remote_discr: u32,
    remote_state: BfdState,
    /// µs; 1 until the peer tells us (§6.8.1).
    remote_min_rx: u32,
    /// µs.
    remote_desired_tx: u32,
    remote_mult: u8,
    /// µs, what we advertise now (slow until Up).
    desired_tx: u32,
    poll_active: bool,
    next_tx: Option<Instant>,
    detect_at: Option<Instant>,
    rng: u64,
}

impl Session {
    /// `local_discr` must be non-zero and unique among our sessions; `seed`
    /// feeds the jitter.
    pub fn new(cfg: Config, local_discr: u32, now: Instant, seed: u64) -> Session {
        Session {
            cfg,
            local_discr,
            state: BfdState::Down,
            local_diag: diag::NONE,
            remote_discr: 0,
            remote_state: BfdState::Down,
            remote_min_rx: 1,
            remote_desired_tx: 0,
            remote_mult: 0,
            desired_tx: micros(cfg.min_tx.max(SLOW_TX)),
            poll_active: false,
            next_tx: Some(now),
            detect_at: None,
            rng: seed | 1,
        }
    }

    pub fn state(&self) -> BfdState {
        self.state
    }

    pub fn local_discr(&self) -> u32 {
        self.local_discr
    }

    pub fn remote_discr(&self) -> u32 {
        self.remote_discr
    }

    pub fn local_diag(&self) -> u8 {
        self.local_diag
    }

    /// §6.8.4: remote multiplier × max(our required min rx, remote desired min tx).
    pub fn detection_time(&self) -> Duration {
        let per = micros(self.cfg.min_rx).max(self.remote_desired_tx);
        Duration::from_micros(u64::from(per) * u64::from(self.remote_mult))
    }

    /// The interval between our packets before jitter.
    pub fn tx_interval(&self) -> Duration {
        Duration::from_micros(self.desired_tx.max(self.remote_min_rx).into())
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.next_tx, self.detect_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn tx_due(&self, now: Instant) -> bool {
        self.next_tx.is_some_and(|t| t <= now)
    }

    pub fn detect_due(&self, now: Instant) -> bool {
        self.detect_at.is_some_and(|t| t <= now)
    }

    fn rand(&mut self) -> u64 {
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// §6.8.7: 75–100 % of the interval (75–90 % with multiplier 1).
    fn jittered(&mut self, d: Duration) -> Duration {
        let span = if self.cfg.multiplier == 1 { 150 } else { 250 };
        let permille = 750 + self.rand() % (span + 1);
        d * permille as u32 / 1000
    }

    fn schedule_tx(&mut self, now: Instant) {
        // §6.8.7: no periodic packets when the peer asks for none.
        self.next_tx = if self.remote_min_rx == 0 || self.state == BfdState::AdminDown {
            None
        } else {
            let d = self.tx_interval();
            Some(now + self.jittered(d))
        };
    }

    fn packet(&self, poll: bool, final_: bool) -> ControlPacket {
        ControlPacket {
            diag: self.local_diag,
            state: self.state,
            poll,
            final_,
            control_plane_independent: false,
            demand: false,
            detect_mult: self.cfg.multiplier,
            my_discr: self.local_discr,
            your_discr: self.remote_discr,
            desired_min_tx: self.desired_tx,
            required_min_rx: micros(self.cfg.min_rx),
            required_min_echo_rx: 0,
        }
    }

    fn set_state(&mut self, to: BfdState, d: u8, out: &mut Vec<Action>) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        self.local_diag = d;
        let want = if to == BfdState::Up {
            micros(self.cfg.min_tx)
        } else {
            micros(self.cfg.min_tx.max(SLOW_TX))
        };
        if want != self.desired_tx {
            self.desired_tx = want;
            // §6.8.3: a change while Up is announced with a Poll sequence.
            self.poll_active = to == BfdState::Up;
        }
        if to != BfdState::Up {
            self.poll_active = false;
        }
        out.push(Action::StateChanged { from, to, diag: d });
    }

    pub fn handle(&mut self, now: Instant, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match ev {
            Event::Received(p) => self.receive(now, p, &mut out),
            Event::TxTimer => {
                if self.tx_due(now) {
                    out.push(Action::Send(self.packet(self.poll_active, false)));
                    self.schedule_tx(now);
                }
            }
            Event::DetectTimer => {
                if self.detect_due(now) {
                    self.detect_at = None;
                    // §6.8.1: the remote discriminator is forgotten too.
                    self.remote_discr = 0;
                    if matches!(self.state, BfdState::Init | BfdState::Up) {
                        self.set_state(BfdState::Down, diag::DETECT_TIME_EXPIRED, &mut out);
                        out.push(Action::Send(self.packet(false, false)));
                        self.schedule_tx(now);
                    }
                }
            }
            Event::AdminDown => {
                self.set_state(BfdState::AdminDown, diag::ADMIN_DOWN, &mut out);
                out.push(Action::Send(self.packet(false, false)));
                self.next_tx = None;
                self.detect_at = None;
            }
        }
        out
    }

    /// §6.8.6 from "If the Your Discriminator field is nonzero" on (the
    /// context-free checks are in `packet::decode`).
    fn receive(&mut self, now: Instant, p: ControlPacket, out: &mut Vec<Action>) {
        if p.your_discr != 0 && p.your_discr != self.local_discr {
            return;
        }
        self.remote_discr = p.my_discr;
        self.remote_state = p.state;
        self.remote_desired_tx = p.desired_min_tx;
        self.remote_mult = p.detect_mult;
        let old_min_rx = self.remote_min_rx;
        self.remote_min_rx = p.required_min_rx;
        if p.final_ {
            self.poll_active = false;
        }
        if self.state == BfdState::AdminDown {
            return;
        }
        let before = self.state;
        match (self.state, p.state) {
            (BfdState::Init | BfdState::Up, BfdState::AdminDown) => {
                self.set_state(BfdState::Down, diag::NEIGHBOR_DOWN, out);
            }
            (BfdState::Down, BfdState::Down) => self.set_state(BfdState::Init, diag::NONE, out),
            (BfdState::Down, BfdState::Init) => self.set_state(BfdState::Up, diag::NONE, out),
            (BfdState::Init, BfdState::Init | BfdState::Up) => {
                self.set_state(BfdState::Up, diag::NONE, out)
            }
            (BfdState::Up, BfdState::Down) => {
                self.set_state(BfdState::Down, diag::NEIGHBOR_DOWN, out)
            }
            _ => {}
        }
        self.detect_at = Some(now + self.detection_time());
        if p.poll {
            // §6.5: answer a Poll at once, with Final (never both bits).
            out.push(Action::Send(self.packet(false, true)));
            self.schedule_tx(now);
        } else if self.state != before || (old_min_rx == 0 && self.remote_min_rx != 0) {
            out.push(Action::Send(self.packet(self.poll_active, false)));
            self.schedule_tx(now);
        } else if self.next_tx.is_none() && self.remote_min_rx != 0 {
            self.schedule_tx(now);
        } else if let Some(t) = self.next_tx {
            // The peer may have lowered its required rx: do not wait out a
            // slow interval scheduled before.
            let latest = now + self.tx_interval();
            if t > latest {
                self.schedule_tx(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::{decode, encode};
    use super::*;

    fn cfg(ms: u64) -> Config {
        Config {
            min_tx: Duration::from_millis(ms),
            min_rx: Duration::from_millis(ms),
            multiplier: 3,
        }
    }

    fn sent(acts: &[Action]) -> Vec<ControlPacket> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Send(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// Two sessions joined by a link with 1 ms delay that can drop each
    /// direction; time only moves when the test says so.
    struct Pair {
        now: Instant,
        s: [Session; 2],
        /// (deliver at, to, packet)
        wire: Vec<(Instant, usize, ControlPacket)>,
        drop: [bool; 2],
        /// (time, side, from, to)
        changes: Vec<(Instant, usize, BfdState, BfdState)>,
        sent_by: [Vec<(Instant, ControlPacket)>; 2],
        running: [bool; 2],
    }

    impl Pair {
        fn new(a: Config, b: Config) -> Pair {
            let now = Instant::now();
            Pair {
                now,
                s: [Session::new(a, 11, now, 1), Session::new(b, 22, now, 2)],
                wire: Vec::new(),
                drop: [false; 2],
                changes: Vec::new(),
                sent_by: [Vec::new(), Vec::new()],
                running: [true; 2],
            }
        }

        fn apply(&mut self, side: usize, acts: Vec<Action>) {
            for a in acts {
                match a {
                    Action::Send(p) => {
                        // Round-trip through the codec like the driver does.
                        let p = decode(&encode(&p)).unwrap();
                        self.sent_by[side].push((self.now, p.clone()));
                        if !self.drop[side] {
                            self.wire
                                .push((self.now + Duration::from_millis(1), 1 - side, p));
                        }
                    }
                    Action::StateChanged { from, to, .. } => {
                        self.changes.push((self.now, side, from, to))
                    }
                }
            }
        }

        fn run_for(&mut self, d: Duration) {
            let end = self.now + d;
            loop {
                let mut next = end;
                for i in 0..2 {
                    if self.running[i]
                        && let Some(t) = self.s[i].next_deadline()
                    {
                        next = next.min(t);
                    }
                }
                for (t, _, _) in &self.wire {
                    next = next.min(*t);
                }
                self.now = next.max(self.now);
                let now = self.now;
                let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire)
                    .into_iter()
                    .partition(|(t, _, _)| *t <= now);
                self.wire = rest;
                for (_, to, p) in due {
                    if self.running[to] {
                        let acts = self.s[to].handle(now, Event::Received(p));
                        self.apply(to, acts);
                    }
                }
                for i in 0..2 {
                    if !self.running[i] {
                        continue;
                    }
                    if self.s[i].detect_due(now) {
                        let acts = self.s[i].handle(now, Event::DetectTimer);
                        self.apply(i, acts);
                    }
                    if self.s[i].tx_due(now) {
                        let acts = self.s[i].handle(now, Event::TxTimer);
                        self.apply(i, acts);
                    }
                }
                if now >= end {
                    return;
                }
            }
        }

        fn states(&self) -> (BfdState, BfdState) {
            (self.s[0].state(), self.s[1].state())
        }
    }

    #[test]
    fn two_sessions_come_up_detect_silence_and_recover() {
        let mut p = Pair::new(cfg(100), cfg(100));
        // B is not there yet: A keeps sending Down once a second (75–100 %).
        p.running[1] = false;
        p.run_for(Duration::from_secs(3));
        let slow: Vec<Instant> = p.sent_by[0].iter().map(|(t, _)| *t).collect();
        assert!(
            (3..=5).contains(&slow.len()),
            "{} packets in 3 s",
            slow.len()
        );
        for w in slow.windows(2) {
            let gap = w[1] - w[0];
            assert!(gap >= Duration::from_millis(750) && gap <= Duration::from_secs(1));
        }
        assert!(p.sent_by[0].iter().all(|(_, q)| q.state == BfdState::Down
            && q.desired_min_tx == 1_000_000
            && q.your_discr == 0));
        p.running[1] = true;
        p.s[1] = Session::new(cfg(100), 22, p.now, 2);
        p.run_for(Duration::from_secs(3));
        assert_eq!(p.states(), (BfdState::Up, BfdState::Up));
        // Once Up and the Poll answered, packets flow at 75–100 ms and
        // advertise 100 ms.
        let t0 = p.now;
        p.run_for(Duration::from_secs(1));
        let tx: Vec<_> = p.sent_by[0].iter().filter(|(t, _)| *t > t0).collect();
        assert!((10..=14).contains(&tx.len()), "{} packets in 1 s", tx.len());
        for w in tx.windows(2) {
            let gap = w[1].0 - w[0].0;
            assert!(gap >= Duration::from_millis(75) && gap <= Duration::from_millis(100));
        }
        assert!(
            tx.iter()
                .all(|(_, q)| q.desired_min_tx == 100_000 && !q.poll)
        );
        assert_eq!(p.s[0].detection_time(), Duration::from_millis(300));

        // B stops sending (crashed): A goes Down within the detection time.
        p.running[1] = false;
        let stop = p.now;
        p.run_for(Duration::from_secs(1));
        let down = p
            .changes
            .iter()
            .find(|c| c.0 > stop && c.1 == 0 && c.3 == BfdState::Down)
            .expect("A went Down");
        assert!(
            down.0 - stop <= Duration::from_millis(301),
            "{:?}",
            down.0 - stop
        );
        assert_eq!(p.s[0].local_diag(), diag::DETECT_TIME_EXPIRED);
        assert_eq!(p.s[0].remote_discr(), 0);

        // B restarts with a new discriminator: both Up again.
        p.s[1] = Session::new(cfg(100), 33, p.now, 3);
        p.running[1] = true;
        p.run_for(Duration::from_secs(4));
        assert_eq!(p.states(), (BfdState::Up, BfdState::Up));
        assert_eq!(p.s[0].remote_discr(), 33);
    }

    #[test]
    fn one_way_loss_takes_both_sides_down_and_they_recover() {
        let mut p = Pair::new(cfg(100), cfg(100));
        p.run_for(Duration::from_secs(3));
        assert_eq!(p.states(), (BfdState::Up, BfdState::Up));
        // A's packets no longer reach B: B times out, tells A it is Down.
        p.drop[0] = true;
        p.run_for(Duration::from_secs(1));
        assert_eq!(p.s[1].local_diag(), diag::DETECT_TIME_EXPIRED);
        assert_eq!(p.s[0].state(), BfdState::Down);
        assert_eq!(p.s[0].local_diag(), diag::NEIGHBOR_DOWN);
        p.drop[0] = false;
        p.run_for(Duration::from_secs(4));
        assert_eq!(p.states(), (BfdState::Up, BfdState::Up));
    }

    #[test]
    fn detection_time_uses_the_slower_of_our_rx_and_their_tx() {
        let mut p = Pair::new(cfg(100), cfg(400));
        p.run_for(Duration::from_secs(4));
        assert_eq!(p.states(), (BfdState::Up, BfdState::Up));
        assert_eq!(p.s[0].detection_time(), Duration::from_millis(1200));
        assert_eq!(p.s[1].detection_time(), Duration::from_millis(1200));
        // A sends no faster than B's required min rx.
        assert_eq!(p.s[0].tx_interval(), Duration::from_millis(400));
    }

    #[test]
    fn a_poll_is_answered_with_final_and_foreign_discriminators_ignored() {
        let now = Instant::now();
        let mut s = Session::new(cfg(100), 7, now, 9);
        let mut q = ControlPacket {
            diag: 0,
            state: BfdState::Down,
            poll: true,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discr: 99,
            your_discr: 0,
            desired_min_tx: 1_000_000,
            required_min_rx: 100_000,
            required_min_echo_rx: 0,
        };
        let acts = s.handle(now, Event::Received(q.clone()));
        let out = sent(&acts);
        assert!(
            out.iter()
                .any(|p| p.final_ && !p.poll && p.your_discr == 99)
        );
        assert_eq!(s.state(), BfdState::Init);
        // A packet for someone else's discriminator changes nothing.
        q.your_discr = 8;
        q.state = BfdState::Init;
        assert!(s.handle(now, Event::Received(q)).is_empty());
        assert_eq!(s.state(), BfdState::Init);
    }

    #[test]
    fn admin_down_from_the_peer_is_not_a_failure_but_goes_down() {
        let mut p = Pair::new(cfg(100), cfg(100));
        p.run_for(Duration::from_secs(3));
        let acts = p.s[1].handle(p.now, Event::AdminDown);
        assert!(sent(&acts).iter().any(|q| q.state == BfdState::AdminDown));
        p.apply(1, acts);
        p.running[1] = false;
        p.run_for(Duration::from_millis(10));
        assert_eq!(p.s[0].state(), BfdState::Down);
        assert_eq!(p.s[0].local_diag(), diag::NEIGHBOR_DOWN);
    }
}
