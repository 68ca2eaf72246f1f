//! The BFD control packet (RFC 5880 §4.1), 24 bytes without authentication.
//!
//! `decode` applies the reception checks of §6.8.6 that need no session:
//! version 1, length, detect multiplier, multipoint bit, my discriminator,
//! your discriminator zero only in Down/AdminDown. Authentication is not
//! supported: a packet with the A bit is rejected (we never configure it,
//! and §6.8.6 says to discard it then).

/// Session states as carried on the wire (§4.1 "Sta").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BfdState {
    AdminDown,
    Down,
    Init,
    Up,
}

impl BfdState {
    pub fn wire(self) -> u8 {
        match self {
            BfdState::AdminDown => 0,
            BfdState::Down => 1,
            BfdState::Init => 2,
            BfdState::Up => 3,
        }
    }

    fn from_wire(v: u8) -> BfdState {
        match v & 3 {
            0 => BfdState::AdminDown,
            1 => BfdState::Down,
            2 => BfdState::Init,
            _ => BfdState::Up,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BfdState::AdminDown => "AdminDown",
            BfdState::Down => "Down",
            BfdState::Init => "Init",
            BfdState::Up => "Up",
        }
    }
}

/// Diagnostic codes (§4.1) we set or show.
pub mod diag {
    pub const NONE: u8 = 0;
    pub const DETECT_TIME_EXPIRED: u8 = 1;
    pub const NEIGHBOR_DOWN: u8 = 3;
    pub const ADMIN_DOWN: u8 = 7;
}

/// Fixed length of a control packet without authentication.
pub const LEN: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPacket {
    pub diag: u8,
    pub state: BfdState,
    pub poll: bool,
    pub final_: bool,
    pub control_plane_independent: bool,
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discr: u32,
    pub your_discr: u32,
    /// Microseconds.
    pub desired_min_tx: u32,
    /// Microseconds.
    pub required_min_rx: u32,
    /// Microseconds; we never do echo, so we send 0.
    pub required_min_echo_rx: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("shorter than a BFD control packet ({0} bytes)")]
    Short(usize),
    #[error("version {0}, not 1")]
    Version(u8),
    #[error("length field {field} does not fit the {got}-byte datagram")]
    Length { field: u8, got: usize },
    #[error("authentication present (not supported)")]
    Authentication,
    #[error("detect multiplier is zero")]
    DetectMult,
    #[error("multipoint bit set")]
    Multipoint,
    #[error("my discriminator is zero")]
    MyDiscriminator,
    #[error("your discriminator is zero in state {0:?}")]
    YourDiscriminator(BfdState),
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_be_bytes(w)
}

pub fn decode(b: &[u8]) -> Result<ControlPacket, PacketError> {
    if b.len() < LEN {
        return Err(PacketError::Short(b.len()));
    }
    let (b0, b1, mult, len) = (b[0], b[1], b[2], b[3]);
    let version = b0 >> 5;
    if version != 1 {
        return Err(PacketError::Version(version));
    }
    if b1 & 0x04 != 0 {
        return Err(PacketError::Authentication);
    }
    if (len as usize) < LEN || len as usize > b.len() {
        return Err(PacketError::Length {
            field: len,
            got: b.len(),
        });
    }
    if mult == 0 {
        return Err(PacketError::DetectMult);
    }
    if b1 & 0x01 != 0 {
        return Err(PacketError::Multipoint);
    }
    let state = BfdState::from_wire(b1 >> 6);
    let p = ControlPacket {
        diag: b0 & 0x1f,
        state,
        poll: b1 & 0x20 != 0,
        final_: b1 & 0x10 != 0,
        control_plane_independent: b1 & 0x08 != 0,
        demand: b1 & 0x02 != 0,
        detect_mult: mult,
        my_discr: be32(b, 4),
        your_discr: be32(b, 8),
        desired_min_tx: be32(b, 12),
        required_min_rx: be32(b, 16),
        required_min_echo_rx: be32(b, 20),
    };
    if p.my_discr == 0 {
        return Err(PacketError::MyDiscriminator);
    }
    if p.your_discr == 0 && !matches!(state, BfdState::Down | BfdState::AdminDown) {
        return Err(PacketError::YourDiscriminator(state));
    }
    Ok(p)
}

pub fn encode(p: &ControlPacket) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0] = (1 << 5) | (p.diag & 0x1f);
    b[1] = (p.state.wire() << 6)
        | if p.poll { 0x20 } else { 0 }
        | if p.final_ { 0x10 } else { 0 }
        | if p.control_plane_independent { 0x08 } else { 0 }
        | if p.demand { 0x02 } else { 0 };
    b[2] = p.detect_mult;
    b[3] = LEN as u8;
    b[4..8].copy_from_slice(&p.my_discr.to_be_bytes());
    b[8..12].copy_from_slice(&p.your_discr.to_be_bytes());
    b[12..16].copy_from_slice(&p.desired_min_tx.to_be_bytes());
    b[16..20].copy_from_slice(&p.required_min_rx.to_be_bytes());
    b[20..24].copy_from_slice(&p.required_min_echo_rx.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlPacket {
        ControlPacket {
            diag: diag::NONE,
            state: BfdState::Up,
            poll: true,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discr: 0x01020304,
            your_discr: 0x0a0b0c0d,
            desired_min_tx: 100_000,
            required_min_rx: 300_000,
            required_min_echo_rx: 0,
        }
    }

    #[test]
    fn encodes_the_rfc_layout_and_round_trips() {
        let b = encode(&sample());
        assert_eq!(b[0], 0x20, "version 1, diag 0");
        assert_eq!(b[1], 0xc0 | 0x20, "state Up, poll");
        assert_eq!(b[2], 3);
        assert_eq!(b[3], 24);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[12..16], &100_000u32.to_be_bytes());
        assert_eq!(decode(&b).unwrap(), sample());
        let mut f = sample();
        f.poll = false;
        f.final_ = true;
        f.state = BfdState::Down;
        f.diag = diag::DETECT_TIME_EXPIRED;
        f.your_discr = 0;
        assert_eq!(decode(&encode(&f)).unwrap(), f);
    }

    #[test]
    fn section_6_8_6_violations_are_rejected() {
        let good = encode(&sample());
        let bad = |f: &dyn Fn(&mut [u8; LEN])| {
            let mut b = good;
            f(&mut b);
            decode(&b).unwrap_err()
        };
        assert_eq!(decode(&good[..23]).unwrap_err(), PacketError::Short(23));
        assert_eq!(bad(&|b| b[0] = 0x40), PacketError::Version(2));
        assert!(matches!(bad(&|b| b[3] = 23), PacketError::Length { .. }));
        assert!(matches!(bad(&|b| b[3] = 25), PacketError::Length { .. }));
        assert_eq!(bad(&|b| b[1] |= 0x04), PacketError::Authentication);
        assert_eq!(bad(&|b| b[2] = 0), PacketError::DetectMult);
        assert_eq!(bad(&|b| b[1] |= 0x01), PacketError::Multipoint);
        assert_eq!(
            bad(&|b| b[4..8].copy_from_slice(&[0; 4])),
            PacketError::MyDiscriminator
        );
        assert_eq!(
            bad(&|b| b[8..12].copy_from_slice(&[0; 4])),
            PacketError::YourDiscriminator(BfdState::Up)
        );
        // Your discriminator 0 is fine while Down.
        let mut d = good;
        d[8..12].copy_from_slice(&[0; 4]);
        d[1] = 1 << 6;
        assert_eq!(decode(&d).unwrap().state, BfdState::Down);
        // A longer datagram whose length field says 24 is accepted.
        let mut long = good.to_vec();
        long.push(0);
        assert!(decode(&long).is_ok());
    }
}
