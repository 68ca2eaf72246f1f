//! NOTIFICATION messages (RFC 4271 4.5, 6): the wire form, the typed error
//! codes and subcodes with their names, and the RFC 7606 outcome of an UPDATE
//! error that does not reset the session ([`Warning`]).

use std::fmt;

/// A NOTIFICATION: what we send before closing, or what a peer sent us. Code
/// and subcode stay octets: a peer may send values we have no name for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{}", self.describe())]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

/// One enum of code points: `u8::from` and `TryFrom<u8>` convert, `name()`
/// gives the RFC's name.
macro_rules! code_points {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:literal => $text:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vm])* $v = $n,)+
        }

        impl $name {
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$v => $text,)+
                }
            }
        }

        impl From<$name> for u8 {
            fn from(c: $name) -> u8 {
                c as u8
            }
        }

        impl TryFrom<u8> for $name {
            type Error = u8;
            fn try_from(n: u8) -> Result<$name, u8> {
                match n {
                    $($n => Ok($name::$v),)+
                    other => Err(other),
                }
            }
        }
    };
}

code_points! {
    /// Error codes (RFC 4271 4.5; RFC 7313 for 7).
    ErrorCode {
        MessageHeader = 1 => "Message Header Error",
        OpenMessage = 2 => "OPEN Message Error",
        UpdateMessage = 3 => "UPDATE Message Error",
        HoldTimerExpired = 4 => "Hold Timer Expired",
        Fsm = 5 => "Finite State Machine Error",
        Cease = 6 => "Cease",
        RouteRefresh = 7 => "ROUTE-REFRESH Message Error",
    }
}

code_points! {
    /// Message Header Error subcodes (RFC 4271 6.1).
    HeaderSubcode {
        ConnectionNotSynchronized = 1 => "Connection Not Synchronized",
        BadMessageLength = 2 => "Bad Message Length",
        BadMessageType = 3 => "Bad Message Type",
    }
}

code_points! {
    /// OPEN Message Error subcodes (RFC 4271 6.2, RFC 5492 for 7).
    OpenSubcode {
        Unspecific = 0 => "Unspecific",
        UnsupportedVersion = 1 => "Unsupported Version Number",
        BadPeerAs = 2 => "Bad Peer AS",
        BadBgpIdentifier = 3 => "Bad BGP Identifier",
        UnsupportedOptionalParameter = 4 => "Unsupported Optional Parameter",
        UnacceptableHoldTime = 6 => "Unacceptable Hold Time",
        UnsupportedCapability = 7 => "Unsupported Capability",
    }
}

code_points! {
    /// UPDATE Message Error subcodes (RFC 4271 6.3).
    UpdateSubcode {
        MalformedAttributeList = 1 => "Malformed Attribute List",
        UnrecognizedWellKnownAttribute = 2 => "Unrecognized Well-known Attribute",
        MissingWellKnownAttribute = 3 => "Missing Well-known Attribute",
        AttributeFlagsError = 4 => "Attribute Flags Error",
        AttributeLengthError = 5 => "Attribute Length Error",
        InvalidOriginAttribute = 6 => "Invalid ORIGIN Attribute",
        InvalidNextHopAttribute = 8 => "Invalid NEXT_HOP Attribute",
        OptionalAttributeError = 9 => "Optional Attribute Error",
        InvalidNetworkField = 10 => "Invalid Network Field",
        MalformedAsPath = 11 => "Malformed AS_PATH",
    }
}

code_points! {
    /// Cease subcodes (RFC 4486; RFC 9384 for 10).
    CeaseSubcode {
        MaxPrefixesReached = 1 => "Maximum Number of Prefixes Reached",
        AdministrativeShutdown = 2 => "Administrative Shutdown",
        PeerDeconfigured = 3 => "Peer De-configured",
        AdministrativeReset = 4 => "Administrative Reset",
        ConnectionRejected = 5 => "Connection Rejected",
        OtherConfigurationChange = 6 => "Other Configuration Change",
        ConnectionCollisionResolution = 7 => "Connection Collision Resolution",
        OutOfResources = 8 => "Out of Resources",
        BfdDown = 10 => "BFD Down",
    }
}

code_points! {
    /// ROUTE-REFRESH Message Error subcodes (RFC 7313 5).
    RouteRefreshSubcode {
        InvalidMessageLength = 1 => "Invalid Message Length",
    }
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: Vec<u8>) -> Notification {
        Notification {
            code,
            subcode,
            data,
        }
    }

    /// Message Header Error (1/x).
    pub fn header(subcode: HeaderSubcode, data: Vec<u8>) -> Notification {
        Notification::new(ErrorCode::MessageHeader.into(), subcode.into(), data)
    }

    /// 1/2 with the offending length field as data (RFC 4271 6.1).
    pub fn bad_message_length(len: u16) -> Notification {
        Notification::header(HeaderSubcode::BadMessageLength, len.to_be_bytes().to_vec())
    }

    /// OPEN Message Error (2/x).
    pub fn open(subcode: OpenSubcode, data: Vec<u8>) -> Notification {
        Notification::new(ErrorCode::OpenMessage.into(), subcode.into(), data)
    }

    /// UPDATE Message Error (3/x).
    pub fn update(subcode: UpdateSubcode, data: Vec<u8>) -> Notification {
        Notification::new(ErrorCode::UpdateMessage.into(), subcode.into(), data)
    }

    /// Hold Timer Expired (4/0).
    pub fn hold_timer_expired() -> Notification {
        Notification::new(ErrorCode::HoldTimerExpired.into(), 0, Vec::new())
    }

    /// Finite State Machine Error (5/0).
    pub fn fsm() -> Notification {
        Notification::new(ErrorCode::Fsm.into(), 0, Vec::new())
    }

    /// Cease (6/x), RFC 4486; `subcode` as on the wire (see [`CeaseSubcode`]).
    pub fn cease(subcode: u8) -> Notification {
        Notification::new(ErrorCode::Cease.into(), subcode, Vec::new())
    }

    /// The error code, when it is one RFC 4271 or its updates assign.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::try_from(self.code).ok()
    }

    pub fn code_name(&self) -> &'static str {
        self.error_code().map_or("Unknown error", ErrorCode::name)
    }

    pub fn subcode_name(&self) -> &'static str {
        let s = self.subcode;
        let name = match self.error_code() {
            Some(ErrorCode::MessageHeader) => {
                HeaderSubcode::try_from(s).ok().map(HeaderSubcode::name)
            }
            Some(ErrorCode::OpenMessage) => OpenSubcode::try_from(s).ok().map(OpenSubcode::name),
            Some(ErrorCode::UpdateMessage) => {
                UpdateSubcode::try_from(s).ok().map(UpdateSubcode::name)
            }
            Some(ErrorCode::Cease) => CeaseSubcode::try_from(s).ok().map(CeaseSubcode::name),
            Some(ErrorCode::RouteRefresh) => RouteRefreshSubcode::try_from(s)
                .ok()
                .map(RouteRefreshSubcode::name),
            _ => None,
        };
        match name {
            Some(n) => n,
            None if s == 0 => "Unspecific",
            None => "Unknown subcode",
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} / {} ({}/{})",
            self.code_name(),
            self.subcode_name(),
            self.code,
            self.subcode
        )
    }
}

impl From<CeaseSubcode> for Notification {
    fn from(s: CeaseSubcode) -> Notification {
        Notification::cease(s.into())
    }
}

/// What is done about an error (RFC 7606 2 for UPDATEs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// The NOTIFICATION is sent and the session closed (RFC 4271 6; RFC
    /// 7606 keeps this for errors that leave the NLRI unlocatable).
    SessionReset,
    /// RFC 7606 2: the AFI/SAFI of a malformed MP_REACH/MP_UNREACH is
    /// disabled instead of resetting. Not chosen by this decoder (it resets,
    /// which RFC 7606 5.3 also allows); named so the choice is explicit.
    AfiSafiDisable,
    /// RFC 7606 2: every prefix the UPDATE announces is withdrawn instead.
    TreatAsWithdraw,
    /// RFC 7606 2: the attribute is dropped, the rest of the UPDATE stands.
    AttributeDiscard,
    /// Not an error worth a reset: the message is ignored (a ROUTE-REFRESH
    /// for an address family we never negotiated, RFC 2918 4).
    Ignore,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::SessionReset => "session-reset",
            Action::AfiSafiDisable => "afi-safi-disable",
            Action::TreatAsWithdraw => "treat-as-withdraw",
            Action::AttributeDiscard => "attribute-discard",
            Action::Ignore => "ignored",
        }
    }
}

/// An error that was handled without a NOTIFICATION: what was wrong (as the
/// NOTIFICATION RFC 4271 would have sent) and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Warning {
    pub action: Action,
    /// Type code of the attribute at fault, when one is.
    pub attr: Option<u8>,
    /// The code/subcode (and data) of the error in RFC 4271 terms.
    pub error: Notification,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = self.action.name();
        match self.attr {
            Some(c) => write!(f, "{what}: attribute {c}: {}", self.error),
            None => write!(f, "{what}: {}", self.error),
        }
    }
}
