//! Transitions of the FSM and the OPEN checks.

use std::net::Ipv4Addr;

use super::*;
use crate::types::Afi;

fn params() -> Params {
    Params {
        local_asn: 65001,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        peer_asn: 65002,
        hold_time: 9,
        keepalive: Some(3),
        connect_retry: Duration::from_secs(5),
        max_backoff: Duration::from_secs(60),
        open_hold: Duration::from_secs(240),
        passive: false,
        families: vec![Afi::Ipv4, Afi::Ipv6],
        graceful_restart: Some(120),
    }
}

fn open() -> PeerOpen {
    PeerOpen {
        version: 4,
        asn: 65002,
        hold_time: 90,
        router_id: Ipv4Addr::new(10, 0, 0, 2),
        families: vec![Afi::Ipv4, Afi::Ipv6],
        route_refresh: true,
        four_octet: true,
        extended_messages: false,
        graceful_restart: Some(PeerGr {
            restarting: false,
            time: 120,
            families: vec![(Afi::Ipv4, true)],
        }),
    }
}

fn established(p: Params) -> Fsm {
    let mut f = Fsm::new(p);
    f.handle(Event::Start);
    f.handle(Event::TcpConnected);
    f.handle(Event::OpenReceived(open()));
    let a = f.handle(Event::KeepaliveReceived);
    assert!(a.iter().any(|a| matches!(a, Action::SessionUp(_))));
    assert_eq!(f.state(), State::Established);
    f
}

#[test]
fn active_open_reaches_established_with_negotiated_timers() {
    let mut f = Fsm::new(params());
    let a = f.handle(Event::Start);
    assert_eq!(f.state(), State::Connect);
    assert!(a.contains(&Action::Connect));
    let a = f.handle(Event::TcpConnected);
    assert_eq!(f.state(), State::OpenSent);
    assert!(a.contains(&Action::SendOpen));
    let a = f.handle(Event::OpenReceived(open()));
    assert_eq!(f.state(), State::OpenConfirm);
    assert!(a.contains(&Action::SendKeepalive));
    assert!(a.contains(&Action::StartTimer(Timer::Hold, Duration::from_secs(9))));
    assert!(a.contains(&Action::StartTimer(
        Timer::Keepalive,
        Duration::from_secs(3)
    )));
    f.handle(Event::KeepaliveReceived);
    assert_eq!(f.state(), State::Established);
    let n = f.negotiated().unwrap();
    assert_eq!((n.hold_time, n.keepalive), (9, 3));
    assert!(n.graceful_restart.is_some());
}

#[test]
fn first_keepalive_after_established_comes_soon_then_every_interval() {
    // Keepalive interval 30 s: the first one after Established is due
    // after FIRST_KEEPALIVE, the next ones every 30 s.
    let mut f = Fsm::new(Params {
        hold_time: 90,
        keepalive: Some(30),
        ..params()
    });
    f.handle(Event::Start);
    f.handle(Event::TcpConnected);
    let a = f.handle(Event::OpenReceived(open()));
    assert!(a.contains(&Action::StartTimer(
        Timer::Keepalive,
        Duration::from_secs(30)
    )));
    let a = f.handle(Event::KeepaliveReceived);
    assert_eq!(f.state(), State::Established);
    assert!(a.contains(&Action::StartTimer(Timer::Keepalive, FIRST_KEEPALIVE)));
    // × 0.75, the driver's smallest jitter, still keeps RFC 4271's 1 s.
    assert!(FIRST_KEEPALIVE.mul_f64(0.75) >= Duration::from_secs(1));
    let a = f.handle(Event::TimerExpired(Timer::Keepalive));
    assert!(a.contains(&Action::SendKeepalive));
    assert!(a.contains(&Action::StartTimer(
        Timer::Keepalive,
        Duration::from_secs(30)
    )));
    // An interval shorter than FIRST_KEEPALIVE (hold time 3 s, keepalive
    // 1 s) stays as it is.
    let mut f = Fsm::new(Params {
        hold_time: 3,
        keepalive: Some(1),
        ..params()
    });
    f.handle(Event::Start);
    f.handle(Event::TcpConnected);
    f.handle(Event::OpenReceived(PeerOpen {
        hold_time: 3,
        ..open()
    }));
    let a = f.handle(Event::KeepaliveReceived);
    assert!(a.contains(&Action::StartTimer(
        Timer::Keepalive,
        Duration::from_secs(1)
    )));
}

#[test]
fn bfd_down_ceases_the_session_and_drops_its_routes_and_is_ignored_when_not_connected() {
    let mut f = established(params());
    let a = f.handle(Event::BfdDown);
    let n = Notif::new(6, 10);
    assert!(a.contains(&Action::SendNotification(n.clone())));
    assert!(a.contains(&Action::Disconnect));
    let down = a
        .iter()
        .find_map(|a| match a {
            Action::SessionDown(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(down, DownReason::Sent(n.clone()));
    assert!(!down.keeps_routes(), "BFD Down must not leave stale routes");
    assert_eq!(n.to_string(), "Cease: BFD Down (6/10)");
    assert_eq!(f.state(), State::Idle);
    // It comes back by itself later (BGP does not wait for BFD).
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::IdleHold, _)))
    );
    f.handle(Event::TimerExpired(Timer::IdleHold));
    assert_eq!(f.state(), State::Connect);
    assert!(f.handle(Event::BfdDown).is_empty());
    assert_eq!(f.state(), State::Connect);
}

#[test]
fn passive_open_waits_for_the_peer() {
    let mut p = params();
    p.passive = true;
    let mut f = Fsm::new(p);
    let a = f.handle(Event::Start);
    assert_eq!(f.state(), State::Active);
    assert!(!a.contains(&Action::Connect));
    let a = f.handle(Event::TimerExpired(Timer::ConnectRetry));
    assert!(!a.contains(&Action::Connect));
    f.handle(Event::TcpConnected);
    assert_eq!(f.state(), State::OpenSent);
}

#[test]
fn hold_time_zero_disables_keepalives() {
    let mut p = params();
    p.hold_time = 0;
    let mut f = Fsm::new(p);
    f.handle(Event::Start);
    f.handle(Event::TcpConnected);
    let a = f.handle(Event::OpenReceived(open()));
    assert!(a.contains(&Action::StopTimer(Timer::Hold)));
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::Keepalive, _)))
    );
    let a = f.handle(Event::KeepaliveReceived);
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::Hold, _)))
    );
}

#[test]
fn bad_open_is_refused_with_the_right_notification() {
    type Change = Box<dyn Fn(&mut PeerOpen)>;
    let cases: Vec<(Change, (u8, u8))> = vec![
        (Box::new(|o| o.version = 3), (2, 1)),
        (Box::new(|o| o.asn = 65099), (2, 2)),
        (Box::new(|o| o.hold_time = 2), (2, 6)),
        (Box::new(|o| o.router_id = Ipv4Addr::UNSPECIFIED), (2, 3)),
    ];
    for (change, (code, sub)) in cases {
        let mut o = open();
        change(&mut o);
        let mut f = Fsm::new(params());
        f.handle(Event::Start);
        f.handle(Event::TcpConnected);
        let a = f.handle(Event::OpenReceived(o));
        assert!(
            a.iter().any(
                |a| matches!(a, Action::SendNotification(n) if n.code == code && n.subcode == sub)
            ),
            "{a:?}"
        );
        assert!(a.contains(&Action::Disconnect));
        assert_eq!(f.state(), State::Idle);
    }
}

#[test]
fn hold_expiry_sends_notification_and_drops_routes() {
    let mut f = established(params());
    let a = f.handle(Event::TimerExpired(Timer::Hold));
    assert!(a.contains(&Action::SendNotification(Notif::new(4, 0))));
    let down = a
        .iter()
        .find_map(|a| match a {
            Action::SessionDown(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        !down.keeps_routes(),
        "a silent peer's routes go at hold expiry"
    );
    assert_eq!(f.state(), State::Idle);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::IdleHold, _)))
    );
}

#[test]
fn connection_loss_keeps_routes_but_notification_does_not() {
    let mut f = established(params());
    let a = f.handle(Event::TcpClosed);
    assert!(a.contains(&Action::SessionDown(DownReason::ConnectionLost)));
    let mut f = established(params());
    let a = f.handle(Event::NotificationReceived(Notif::new(6, 2)));
    assert!(a.contains(&Action::SessionDown(DownReason::Received(Notif::new(6, 2)))));
    assert!(!DownReason::Received(Notif::new(6, 2)).keeps_routes());
}

#[test]
fn unexpected_message_is_an_fsm_error() {
    let mut f = Fsm::new(params());
    f.handle(Event::Start);
    f.handle(Event::TcpConnected);
    let a = f.handle(Event::UpdateReceived);
    assert!(a.contains(&Action::SendNotification(Notif::new(5, 1))));
    let mut f = established(params());
    let a = f.handle(Event::OpenReceived(open()));
    assert!(a.contains(&Action::SendNotification(Notif::new(5, 3))));
}

#[test]
fn max_prefix_stays_down_for_the_restart_time() {
    let mut f = established(params());
    let a = f.handle(Event::MaxPrefixExceeded(Duration::from_secs(30)));
    assert!(a.contains(&Action::SendNotification(Notif::new(6, 1))));
    assert!(a.contains(&Action::StartTimer(
        Timer::IdleHold,
        Duration::from_secs(30)
    )));
    // Incoming connections are not taken while Idle.
    assert!(!f.accepts_connection());
    let a = f.handle(Event::TimerExpired(Timer::IdleHold));
    assert!(a.contains(&Action::Connect));
}

#[test]
fn connect_retry_backs_off_exponentially_up_to_the_maximum() {
    let mut f = Fsm::new(params());
    f.handle(Event::Start);
    let mut seen = Vec::new();
    for _ in 0..6 {
        let a = f.handle(Event::TcpFailed);
        for x in a {
            if let Action::StartTimer(Timer::ConnectRetry, d) = x {
                seen.push(d.as_secs());
            }
        }
        f.handle(Event::TimerExpired(Timer::ConnectRetry));
    }
    assert_eq!(seen, vec![10, 20, 40, 60, 60, 60]);
    // Established resets the backoff.
    let mut f = established(params());
    let a = f.handle(Event::TcpClosed);
    assert!(a.contains(&Action::StartTimer(Timer::IdleHold, Duration::from_secs(1))));
}

#[test]
fn stop_sends_cease_and_stays_idle() {
    let mut f = established(params());
    let a = f.handle(Event::Stop);
    assert!(a.contains(&Action::SendNotification(Notif::new(6, 2))));
    assert!(a.contains(&Action::SessionDown(DownReason::Stopped)));
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::IdleHold, _)))
    );
}

#[test]
fn collision_keeps_the_connection_of_the_higher_router_id() {
    let low = Ipv4Addr::new(10, 0, 0, 1);
    let high = Ipv4Addr::new(10, 0, 0, 2);
    // We are lower: the peer's connection (not ours) survives.
    assert!(collision_keeps_new(low, high, true, false));
    assert!(!collision_keeps_new(low, high, false, true));
    // We are higher: ours survives.
    assert!(!collision_keeps_new(high, low, true, false));
    assert!(collision_keeps_new(high, low, false, true));
}

#[test]
fn route_refresh_before_established_is_an_fsm_error_not_a_keepalive() {
    let mut f = Fsm::new(params());
    f.handle(Event::Start);
    f.handle(Event::TcpConnected);
    f.handle(Event::OpenReceived(open()));
    assert_eq!(f.state(), State::OpenConfirm);
    let a = f.handle(Event::RouteRefreshReceived);
    assert!(a.contains(&Action::SendNotification(Notif::new(5, 2))));
    assert_eq!(f.state(), State::Idle);
    // In Established it is traffic: the hold timer restarts.
    let mut f = established(params());
    let a = f.handle(Event::RouteRefreshReceived);
    assert_eq!(
        a,
        vec![Action::StartTimer(Timer::Hold, Duration::from_secs(9))]
    );
    assert_eq!(f.state(), State::Established);
}

#[test]
fn send_hold_expiry_sends_code_8_and_drops_routes() {
    let mut f = established(params());
    let a = f.handle(Event::SendHoldExpired);
    let n = Notif::new(8, 0);
    assert!(a.contains(&Action::SendNotification(n.clone())));
    assert!(a.contains(&Action::SessionDown(DownReason::Sent(n.clone()))));
    assert!(!DownReason::Sent(n.clone()).keeps_routes());
    assert_eq!(n.to_string(), "Send Hold Timer Expired (8/0)");
    let mut f = established(params());
    let a = f.handle(Event::SendQueueFull);
    assert!(a.contains(&Action::SendNotification(Notif::new(6, 8))));
    // Not connected: nothing to do.
    let mut f = Fsm::new(params());
    f.handle(Event::Start);
    assert!(f.handle(Event::SendHoldExpired).is_empty());
}

#[test]
fn open_sent_waits_the_configured_open_hold() {
    let mut p = params();
    p.open_hold = Duration::from_secs(7);
    let mut f = Fsm::new(p);
    f.handle(Event::Start);
    let a = f.handle(Event::TcpConnected);
    assert!(a.contains(&Action::StartTimer(Timer::Hold, Duration::from_secs(7))));
}

#[test]
fn families_intersect_and_default_to_ipv4() {
    let mut o = open();
    o.families.clear();
    let n = negotiate(&params(), &o).unwrap();
    assert_eq!(n.families, vec![Afi::Ipv4]);
}

#[test]
fn adopting_a_new_connection_ends_an_established_session_keeping_routes() {
    let mut f = established(params());
    let a = f.adopt_connection();
    // A lost connection, not a NOTIFICATION: a GR peer's routes stay.
    assert!(a.contains(&Action::SessionDown(DownReason::ConnectionLost)));
    assert!(DownReason::ConnectionLost.keeps_routes());
    assert!(a.contains(&Action::StopTimer(Timer::Keepalive)));
    assert!(a.contains(&Action::StartTimer(Timer::Hold, Duration::from_secs(240))));
    // No reconnect and no wait in Idle: the new connection carries on.
    assert!(!a.iter().any(|a| matches!(
        a,
        Action::Connect | Action::Disconnect | Action::StartTimer(Timer::IdleHold, _)
    )));
    assert_eq!(f.state(), State::OpenSent);
    assert!(f.negotiated().is_none());
    // The peer's OPEN on it, then its KEEPALIVE: a new session.
    f.handle(Event::OpenReceived(open()));
    assert_eq!(f.state(), State::OpenConfirm);
    let a = f.handle(Event::KeepaliveReceived);
    assert!(a.iter().any(|a| matches!(a, Action::SessionUp(_))));
    // From OpenConfirm no session ends; from Idle nothing is adopted.
    let mut f = Fsm::new(params());
    f.handle(Event::Start);
    f.handle(Event::TcpConnected);
    f.handle(Event::OpenReceived(open()));
    let a = f.adopt_connection();
    assert!(!a.iter().any(|a| matches!(a, Action::SessionDown(_))));
    assert_eq!(f.state(), State::OpenSent);
    let mut f = Fsm::new(params());
    assert!(f.adopt_connection().is_empty());
    assert_eq!(f.state(), State::Idle);
}
